// The image schema: the single source of truth for what a checkpoint holds.
// Static types are inferred from it, the reader validates every manifest
// against it, and docs/image-format.md describes it field by field.
// FORMAT_VERSION moves independently of the package version: bump it for any
// change an older reader could misread, and keep readers refusing newer ones.
import * as v from 'valibot';

/**
 * Version of the on-disk format this build writes and the newest it reads.
 * 2 added incremental images (`parent`, Vma `inherited`, `hashesFile`).
 */
export const FORMAT_VERSION = 2;
/** Every version this build reads (1: images without the additions of 2). */
export const READABLE_VERSIONS: readonly number[] = [1, 2];
/** First bytes of every image's identity: the manifest's `magic` field. */
export const IMAGE_MAGIC = 'crest-image';
/** Name of the manifest: written last, checked first. */
export const MANIFEST_NAME = 'manifest.json';

const u = v.pipe(v.number(), v.integer(), v.minValue(0));
const int = v.pipe(v.number(), v.integer());
/** A 64-bit unsigned value as 0x-prefixed lower-case hex (registers, masks, rlimits). */
const hex64 = v.pipe(v.string(), v.regex(/^0x[0-9a-f]{1,16}$/));
/** Page-aligned user-space address (JS numbers are exact below 2^53; user space ends at 2^47). */
const addr = v.pipe(u, v.maxValue(2 ** 57));
const base64 = v.pipe(v.string(), v.regex(/^[A-Za-z0-9+/]*={0,2}$/));
const crc32 = v.pipe(v.string(), v.regex(/^[0-9a-f]{8}$/));

/** One data file of the image: its size and CRC-32 (zlib polynomial) of all its bytes. */
export const FileEntrySchema = v.strictObject({
  size: u,
  crc32,
});

/** The identity of a file on the dumping machine, used to check it is the same file at restore. */
export const FileIdentitySchema = v.strictObject({
  path: v.pipe(v.string(), v.startsWith('/')),
  dev: u,
  ino: u,
  size: u,
  mtimeMs: v.number(),
});

/** What identifies a shared object across the processes of an image, and how to make it again. */
export const SharedObjectSchema = v.strictObject({
  /** Inode at the checkpoint: the object's identity within the image. */
  ino: u,
  /** Bytes the object has at least (it is made this big at restore). */
  size: u,
  /** memfd: its name (without "memfd:"). */
  name: v.optional(v.string()),
  /** deleted: the absolute path it had. */
  path: v.optional(v.pipe(v.string(), v.startsWith('/'))),
});

/** Runs of stored pages of one mapping: [first page index within the mapping, page count]. */
const PageRunSchema = v.tuple([u, v.pipe(u, v.minValue(1))]);

/** One memory mapping, as /proc/PID/maps and smaps show it. */
export const VmaSchema = v.strictObject({
  start: addr,
  end: addr,
  /** Protection as in maps: "r", "w", "x" or "-" in three places. */
  prot: v.pipe(v.string(), v.regex(/^[r-][w-][x-]$/)),
  shared: v.boolean(),
  /**
   * What backs the mapping:
   * anon: private anonymous (heap, stack, arenas, guard pages);
   * shmem-anon: MAP_SHARED|MAP_ANONYMOUS;
   * file: a file (private or shared, see `shared`);
   * memfd: a memfd (private or shared);
   * deleted: a file deleted while mapped (a shared mapping comes back on an
   * unnamed file in its directory, a private one as anonymous memory);
   * vdso / vvar / vvar_vclock: the kernel's special mappings (moved, never stored).
   */
  kind: v.picklist(['anon', 'shmem-anon', 'file', 'memfd', 'deleted', 'vdso', 'vvar', 'vvar_vclock']),
  /** Offset into the file or object in bytes (file, memfd, deleted, shmem-anon with `object`; 0 otherwise). */
  pgoff: u,
  file: v.optional(FileIdentitySchema),
  /**
   * The object behind a mapping that shares its pages beyond itself: a memfd,
   * a file deleted while mapped (shared), shared anonymous memory that other
   * processes of the image map too. Mappings (and memfd/deleted open files)
   * with the same object are one object again at restore; each page of it is
   * stored once, by the first process of the image that maps it.
   */
  object: v.optional(SharedObjectSchema),
  /** maps' name column when it is a bracketed label ([heap], [stack]). */
  label: v.optional(v.string()),
  /** smaps VmFlags, two letters each (gd = grows down, dd = dont-dump, ...). */
  vmFlags: v.array(v.pipe(v.string(), v.regex(/^[a-z0-9]{2}$/))),
  /** Pages stored in the pages file for this mapping, in file order. */
  runs: v.array(PageRunSchema),
  /**
   * (version 2, incremental images) Pages whose content is the parent
   * image's page at the same address: present in the process, unchanged
   * since the parent, not stored here. Disjoint from `runs`.
   */
  inherited: v.optional(v.array(PageRunSchema)),
});

/** General registers of x86-64 (struct user_regs_struct), by name. */
export const REG_NAMES = [
  'r15', 'r14', 'r13', 'r12', 'rbp', 'rbx', 'r11', 'r10', 'r9', 'r8', 'rax', 'rcx', 'rdx',
  'rsi', 'rdi', 'orig_rax', 'rip', 'cs', 'eflags', 'rsp', 'ss', 'fs_base', 'gs_base', 'ds',
  'es', 'fs', 'gs',
] as const;
export type RegName = (typeof REG_NAMES)[number];
export const RegsSchema = v.strictObject(
  Object.fromEntries(REG_NAMES.map((n) => [n, hex64])) as Record<RegName, typeof hex64>,
);

/** struct sigaction as the kernel keeps it (rt_sigaction), for signals 1..64 that are not default. */
export const SigactionSchema = v.strictObject({
  sig: v.pipe(int, v.minValue(1), v.maxValue(64)),
  handler: hex64,
  flags: hex64,
  restorer: hex64,
  mask: hex64,
});

/** A queued signal: the raw 128-byte siginfo, base64. */
const SiginfoSchema = base64;

export const ThreadSchema = v.strictObject({
  /** Thread ID in the job's pid namespace (as the thread itself sees it). */
  tid: v.pipe(int, v.minValue(1)),
  regs: RegsSchema,
  /** PTRACE_GETREGSET NT_X86_XSTATE bytes (FPU, SSE, AVX, AVX-512 ...), base64. */
  xstate: base64,
  /** XCR0 feature mask found in the xstate header: restore refuses a CPU that lacks one. */
  xfeatures: hex64,
  sigmask: hex64,
  pending: v.array(SiginfoSchema),
  sigaltstack: v.strictObject({ sp: hex64, flags: int, size: u }),
  rseq: v.nullable(
    v.strictObject({ ptr: hex64, size: u, flags: u, signature: hex64 }),
  ),
  robustList: v.strictObject({ head: hex64, len: u }),
  clearChildTid: hex64,
  /** The thread's name (/proc/PID/task/TID/comm). */
  comm: v.optional(v.string()),
  /** Per-thread scheduling attributes (kinds/sched.ts); absent in images of older crests. */
  sched: v.optional(
    v.strictObject({
      nice: v.pipe(int, v.minValue(-20), v.maxValue(19)),
      /** SCHED_OTHER 0, FIFO 1, RR 2, BATCH 3, IDLE 5 (DEADLINE is refused at dump). */
      policy: v.picklist([0, 1, 2, 3, 5]),
      rtPriority: v.pipe(int, v.minValue(0), v.maxValue(99)),
      timerSlackNs: u,
      /** CPU affinity as a CPU list ("0-3,8"). */
      cpus: v.pipe(v.string(), v.regex(/^\d+(-\d+)?(,\d+(-\d+)?)*$/)),
    }),
  ),
});

/** What PR_SET_MM_MAP restores, plus brk, read from /proc/PID/stat and auxv. */
export const MmSchema = v.strictObject({
  startCode: addr,
  endCode: addr,
  startData: addr,
  endData: addr,
  startBrk: addr,
  brk: addr,
  startStack: addr,
  argStart: addr,
  argEnd: addr,
  envStart: addr,
  envEnd: addr,
  /** /proc/PID/auxv bytes, base64. */
  auxv: base64,
});

/** Bytes of an fd kind (pipe or socket buffer, memfd contents) in a data file of the image. */
export const DataRefSchema = v.strictObject({
  /** Name of the data file (listed in the manifest's `files`). */
  file: v.pipe(v.string(), v.regex(/^[A-Za-z0-9._-]+$/)),
  offset: u,
  length: u,
});

/** A lock held on an open file: POSIX record locks belong to the process, flock and OFD locks to the description. */
const FileLockSchema = v.strictObject({
  kind: v.picklist(['posix', 'ofd', 'flock']),
  write: v.boolean(),
  /** First byte locked. */
  start: u,
  /** Last byte locked (inclusive), null: to the end of the file, however long it grows. */
  end: v.nullable(u),
});

/** Contents of a pipe or FIFO: its capacity (F_GETPIPE_SZ) and the bytes buffered in it. */
const PipeBufferSchema = v.strictObject({
  size: v.pipe(u, v.minValue(4096)),
  /** Absent when the pipe was empty. */
  data: v.optional(DataRefSchema),
});

const TimespecSchema = v.strictObject({ sec: u, nsec: v.pipe(u, v.maxValue(999_999_999)) });

/** A terminal as the job saw it: its line settings (struct termios) and whether the job was in its foreground. */
export const TerminalSchema = v.strictObject({
  /** c_iflag, c_oflag, c_cflag, c_lflag as TCGETS gives them. */
  iflag: u,
  oflag: u,
  cflag: u,
  lflag: u,
  /** c_cc: the NCCS (19) control characters, as hex. */
  cc: v.pipe(v.string(), v.regex(/^([0-9a-f]{2}){19}$/)),
  /** The job's process group was the terminal's foreground group (the terminal was its controlling one). */
  foreground: v.boolean(),
});

/**
 * One open file description, shared by every fd that refers to it (dup'd fds
 * share offset and status flags, so they are restored as one open + dups).
 * Every variant has `id` and, but for stdio and shared, `flags` (file status flags without O_CLOEXEC).
 * See docs/image-format.md for what each kind holds and how it comes back.
 */
export const OpenFileSchema = v.variant('kind', [
  /** A regular file or directory reopened by path. */
  v.strictObject({
    kind: v.literal('file'),
    id: u,
    file: FileIdentitySchema,
    /** File status flags (O_APPEND, O_NONBLOCK, access mode ...), without O_CLOEXEC. */
    flags: u,
    pos: u,
    /** Locks held on the file (re-acquired at restore). */
    locks: v.optional(v.array(FileLockSchema)),
  }),
  /** A character device reopened by path (/dev/null, /dev/urandom ...). */
  v.strictObject({
    kind: v.literal('chardev'),
    id: u,
    path: v.pipe(v.string(), v.startsWith('/dev/')),
    rdev: u,
    flags: u,
    pos: u,
  }),
  /**
   * The job's standard stream from outside (terminal or pipe): the restored
   * job gets the corresponding stream of `crest restore`.
   */
  v.strictObject({
    kind: v.literal('stdio'),
    id: u,
    /** Which of crest restore's streams replaces it: 0, 1 or 2. */
    stream: v.picklist([0, 1, 2]),
    /** What it was, for `crest show`: "/dev/pts/3", "pipe:[1234]". */
    was: v.string(),
    /** When the stream was a terminal: its line settings, given to crest restore's terminal. */
    terminal: v.optional(TerminalSchema),
  }),
  /**
   * The job's controlling terminal opened again by the process (/dev/tty, or
   * its /dev/pts path): reopened as /dev/tty, crest restore's terminal.
   */
  v.strictObject({
    kind: v.literal('tty'),
    id: u,
    flags: u,
    /** The path it was opened by, for `crest show`. */
    was: v.pipe(v.string(), v.startsWith('/dev/')),
    terminal: TerminalSchema,
  }),
  /** eventfd: its counter and EFD_SEMAPHORE. */
  v.strictObject({
    kind: v.literal('eventfd'),
    id: u,
    flags: u,
    count: hex64,
    semaphore: v.boolean(),
  }),
  /** timerfd: clock, settime flags, time to the next expiry (relative), interval, expirations not yet read. */
  v.strictObject({
    kind: v.literal('timerfd'),
    id: u,
    flags: u,
    clockid: u,
    /** TFD_TIMER_ABSTIME (1), TFD_TIMER_CANCEL_ON_SET (2) as last given to timerfd_settime. */
    settimeFlags: u,
    ticks: u,
    /** Time left to the next expiry at the checkpoint (0 0: disarmed). */
    value: TimespecSchema,
    interval: TimespecSchema,
  }),
  /** signalfd: the signals it reports. */
  v.strictObject({
    kind: v.literal('signalfd'),
    id: u,
    flags: u,
    sigmask: hex64,
  }),
  /** epoll: its registrations (re-added once every fd is in place). */
  v.strictObject({
    kind: v.literal('epoll'),
    id: u,
    flags: u,
    targets: v.array(
      v.strictObject({
        /** The fd number the registration was made with (its key, with the file). */
        tfd: u,
        /** Index into `files` of the description registered (usually the one at fd `tfd`). */
        file: u,
        /** EPOLLIN, EPOLLET ... as the kernel holds them (a fired EPOLLONESHOT keeps only the flag bits). */
        events: u,
        data: hex64,
      }),
    ),
  }),
  /** inotify: its watches, each with the path found for the watched inode. */
  v.strictObject({
    kind: v.literal('inotify'),
    id: u,
    flags: u,
    watches: v.array(
      v.strictObject({
        wd: v.pipe(int, v.minValue(1)),
        path: v.pipe(v.string(), v.startsWith('/')),
        dev: u,
        ino: u,
        mask: u,
      }),
    ),
  }),
  /** One end of a pipe (both ends of every pipe are in the process, or the missing end was closed). */
  v.strictObject({
    kind: v.literal('pipe'),
    id: u,
    flags: u,
    /** The pipe's inode at the checkpoint: the ends of one pipe share it. */
    pipe: u,
    /** Capacity and buffered bytes: on exactly one end of each pipe. */
    buffer: v.optional(PipeBufferSchema),
  }),
  /** A FIFO (named pipe) reopened by path. */
  v.strictObject({
    kind: v.literal('fifo'),
    id: u,
    flags: u,
    file: FileIdentitySchema,
    /** Capacity and buffered bytes: on exactly one description of each FIFO. */
    buffer: v.optional(PipeBufferSchema),
  }),
  /** A unix socket: one end of a connected pair held by this process, or a listening socket. */
  v.strictObject({
    kind: v.literal('unix'),
    id: u,
    flags: u,
    type: v.picklist(['stream', 'dgram', 'seqpacket']),
    /** The socket's inode at the checkpoint. */
    ino: u,
    /**
     * pair: made by socketpair, connected to `peer` (the inode of another unix entry); listen: accepting
     * connections; connected: connected by name (connect/accept; a datagram socket connected to `peer`'s
     * name; a connection not accepted yet has the listener as `peer`); unconnected: neither (bound or not).
     */
    state: v.picklist(['pair', 'listen', 'connected', 'unconnected']),
    peer: v.optional(u),
    /** listen: the backlog given to listen(2). */
    backlog: v.optional(u),
    /** listen: the inodes of the clients whose connections wait to be accepted, in the order accept(2) takes them. */
    pending: v.optional(v.array(u)),
    /** connected (stream, seqpacket): this end is the one accept(2) returned; its `address` is the listener's name. */
    accepted: v.optional(v.literal(true)),
    /** The bound address (sun_path bytes, base64; an abstract name starts with a NUL byte). */
    address: v.optional(base64),
    /**
     * For a name in the file system: the socket file's device, inode and permission bits at the checkpoint
     * (for an accepted end, its listener's file); absent when the name no longer had its file.
     */
    node: v.optional(v.strictObject({ dev: u, ino: u, mode: v.pipe(u, v.maxValue(0o7777)) })),
    /**
     * The receive queue: its bytes and, for dgram/seqpacket, each message's length in order; for dgram,
     * `from` has each message's sender name (base64 as `address`, "" from an unnamed socket).
     */
    queue: v.optional(v.strictObject({ data: DataRefSchema, messages: v.optional(v.array(u)), from: v.optional(v.array(base64)) })),
    /** SO_PEEK_OFF (-1: off). */
    peekOff: int,
    /** SO_RCVBUF and SO_SNDBUF as getsockopt reports them. */
    rcvbuf: u,
    sndbuf: u,
  }),
  /** A TCP socket that is bound (maybe listening), not connected; a UDP socket, bound or connected. */
  v.strictObject({
    kind: v.literal('inet'),
    id: u,
    flags: u,
    family: v.picklist([4, 6]),
    protocol: v.picklist(['tcp', 'udp']),
    /** connected: a UDP socket connected to `peer`. */
    state: v.picklist(['listen', 'bound', 'connected']),
    /** Bound address: dotted quad or IPv6 text. */
    address: v.string(),
    port: v.pipe(u, v.maxValue(65535)),
    /** (connected) The peer's address and port. */
    peer: v.optional(v.strictObject({ address: v.string(), port: v.pipe(u, v.maxValue(65535)) })),
    /** listen: the backlog (the kernel's sk_max_ack_backlog, from TCP_INFO). */
    backlog: v.optional(u),
    reuseaddr: v.boolean(),
    reuseport: v.boolean(),
    /** IPv6 only. */
    v6only: v.optional(v.boolean()),
    /** TCP only. */
    nodelay: v.optional(v.boolean()),
    rcvbuf: u,
    sndbuf: u,
  }),
  /**
   * A TCP connection. repair: recreated exactly (TCP_REPAIR; only in a job
   * with its own network namespace, `crest run --net`): sequence numbers,
   * options, window and both queues. closed: it comes back as a connection
   * reset by its peer (dumped or restored with --tcp-close).
   */
  v.strictObject({
    kind: v.literal('tcp'),
    id: u,
    flags: u,
    family: v.picklist([4, 6]),
    /** The TCP state at the checkpoint (ESTABLISHED, CLOSE_WAIT ...). */
    state: v.string(),
    local: v.strictObject({ address: v.string(), port: v.pipe(u, v.maxValue(65535)) }),
    remote: v.strictObject({ address: v.string(), port: v.pipe(u, v.maxValue(65535)) }),
    mode: v.picklist(['repair', 'closed']),
    repair: v.optional(
      v.strictObject({
        /** First byte of the send queue (snd_una) and of the receive queue (the next byte the process reads). */
        sendSeq: v.pipe(u, v.maxValue(2 ** 32 - 1)),
        recvSeq: v.pipe(u, v.maxValue(2 ** 32 - 1)),
        /** Bytes in the send queue (sent and not acknowledged, then not sent yet), of which not sent yet; bytes in the receive queue. */
        sendLen: u,
        unsentLen: u,
        recvLen: u,
        /** Negotiated options: MSS, window scales (absent: no scaling), SACK, timestamps. */
        mss: u,
        sndWscale: v.optional(v.pipe(u, v.maxValue(14))),
        rcvWscale: v.optional(v.pipe(u, v.maxValue(14))),
        sack: v.boolean(),
        timestamps: v.boolean(),
        /** TCP_TIMESTAMP: the connection's timestamp clock. */
        tsval: v.pipe(u, v.maxValue(2 ** 32 - 1)),
        /** TCP_REPAIR_WINDOW. */
        window: v.strictObject({ sndWl1: u, sndWnd: u, maxWindow: u, rcvWnd: u, rcvWup: u }),
      }),
    ),
    /** repair: the receive queue's bytes, then the send queue's. */
    data: v.optional(DataRefSchema),
    reuseaddr: v.boolean(),
    nodelay: v.boolean(),
    /** SO_KEEPALIVE with TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT. */
    keepalive: v.optional(v.strictObject({ idle: u, intvl: u, cnt: u })),
    rcvbuf: u,
    sndbuf: u,
  }),
  /** A memfd (memfd_create): name, contents, seals, offset. */
  v.strictObject({
    kind: v.literal('memfd'),
    id: u,
    flags: u,
    pos: u,
    /** The name given to memfd_create (without the "memfd:" prefix). */
    name: v.string(),
    /** The inode at the checkpoint: descriptions of one memfd share it. */
    inode: u,
    size: u,
    /** F_GET_SEALS. */
    seals: u,
    mode: u,
    /** Contents (absent when empty); on one description of each memfd. */
    data: v.optional(DataRefSchema),
  }),
  /** A regular file deleted while open: recreated as an unlinked file (O_TMPFILE) in the same directory. */
  v.strictObject({
    kind: v.literal('deleted'),
    id: u,
    flags: u,
    pos: u,
    /** The path it had (without " (deleted)"). */
    path: v.pipe(v.string(), v.startsWith('/')),
    inode: u,
    size: u,
    mode: u,
    data: v.optional(DataRefSchema),
    locks: v.optional(v.array(FileLockSchema)),
  }),
  /**
   * A description an earlier process of the image holds too (inherited over
   * fork, passed over a socket): that process restores it, this one takes the
   * very same description from it (shared offset, status flags, pipe, socket).
   */
  v.strictObject({
    kind: v.literal('shared'),
    id: u,
    /** The earlier process that restores it (its `pid`) and the index of the description in its `files`. */
    pid: v.pipe(int, v.minValue(1)),
    file: u,
    /** This process's own POSIX record locks taken through it (flock and OFD locks belong to the description: on the other entry). */
    locks: v.optional(v.array(FileLockSchema)),
  }),
]);

export const FdSchema = v.strictObject({
  fd: u,
  /** Index into the process's `files`. */
  file: u,
  cloexec: v.boolean(),
});

const TimevalPair = v.strictObject({
  intervalUs: u,
  valueUs: u,
});

/**
 * (version 2, optional) A POSIX timer (timer_create): its ID, clock, how it
 * notifies (SIGEV_SIGNAL, SIGEV_NONE or SIGEV_THREAD, with `tid` for
 * SIGEV_THREAD_ID), signal number and sigev_value, interval and time left
 * (0 0: disarmed).
 */
export const PosixTimerSchema = v.strictObject({
  id: u,
  /** clockid_t as the kernel keeps it: a CPU-time clock is (~pid << 3) | per-thread 4 | type (CLOCK_PROCESS_CPUTIME_ID: -6). */
  clock: int,
  notify: v.picklist(['signal', 'none', 'thread']),
  /** Thread (in the job's pid namespace) it signals (SIGEV_THREAD_ID). */
  tid: v.optional(v.pipe(int, v.minValue(1))),
  signo: v.pipe(u, v.maxValue(64)),
  value: hex64,
  interval: TimespecSchema,
  left: TimespecSchema,
});

/**
 * (version 2, optional) Signal-driven I/O of an open file: who gets its
 * SIGIO/SIGURG (F_SETOWN_EX: a thread, a process or a process group, in
 * the job's pid namespace; 0: nobody) and the signal sent (F_SETSIG; 0:
 * SIGIO). O_ASYNC itself is among the file's flags.
 */
export const FileOwnerSchema = v.strictObject({
  /** Index into the process's `files`. */
  file: u,
  type: v.picklist(['tid', 'pid', 'pgrp']),
  pid: u,
  signal: v.pipe(u, v.maxValue(64)),
});

export const ProcessSchema = v.strictObject({
  /** PID in the job's pid namespace. */
  pid: v.pipe(int, v.minValue(1)),
  /** Parent PID in the job's pid namespace (1 = the job's init). */
  ppid: v.pipe(int, v.minValue(0)),
  pgid: v.pipe(int, v.minValue(0)),
  sid: v.pipe(int, v.minValue(0)),
  comm: v.string(),
  /** The executable (/proc/PID/exe) with its identity. */
  exe: FileIdentitySchema,
  cwd: v.pipe(v.string(), v.startsWith('/')),
  umask: v.pipe(u, v.maxValue(0o777)),
  personality: u,
  nice: v.pipe(int, v.minValue(-20), v.maxValue(19)),
  creds: v.strictObject({
    uid: v.tuple([u, u, u, u]),
    gid: v.tuple([u, u, u, u]),
    groups: v.array(u),
    capInh: hex64,
    capPrm: hex64,
    capEff: hex64,
    capBnd: hex64,
    capAmb: hex64,
    noNewPrivs: v.boolean(),
  }),
  /** [resource number, soft, hard] for every RLIMIT_*. */
  rlimits: v.array(v.tuple([u, hex64, hex64])),
  itimers: v.strictObject({ real: TimevalPair, virtual: TimevalPair, prof: TimevalPair }),
  /** (version 2) Owners and signals of open files with signal-driven I/O; absent: none. */
  fileOwners: v.optional(v.array(FileOwnerSchema)),
  /** (version 2) POSIX timers, in ID order; absent: none. */
  posixTimers: v.optional(v.array(PosixTimerSchema)),
  /** Per-process prctl settings: parent-death signal, child subreaper, timer slack (ns), THP disabled. */
  prctl: v.optional(
    v.strictObject({ pdeathsig: v.pipe(int, v.minValue(0), v.maxValue(64)), childSubreaper: v.boolean(), timerslackNs: u, thpDisable: v.boolean() }),
  ),
  mm: MmSchema,
  vmas: v.array(VmaSchema),
  /** Name of this process's pages file inside the image directory. */
  pagesFile: v.string(),
  /**
   * (version 2) Name of the data file with the xxh64 (seed 0, 8 bytes
   * little-endian) of every page of `runs` and `inherited`, in address
   * order: what the next incremental checkpoint compares memory with.
   */
  hashesFile: v.optional(v.string()),
  /**
   * (version 2) The pages file is in blocks, in order: each holds `pages`
   * stored pages (in pages-file order, section 9) as one zstd frame of
   * `bytes` bytes padded with zeros to a multiple of 4096, or, when `bytes`
   * is 0, as the plain pages. Absent: plain pages throughout.
   */
  compression: v.optional(
    v.strictObject({
      codec: v.literal('zstd'),
      blocks: v.array(v.tuple([v.pipe(u, v.minValue(1), v.maxValue(65536)), u])),
    }),
  ),
  /**
   * (version 2, incremental images) How the pages changed since the parent
   * were found: `uffd-wp`, the kernel's write tracking (userfaultfd async
   * write-protect read with PAGEMAP_SCAN) vouched for `trackedPages` pages,
   * which were not read; the rest (memory it does not cover: new or moved
   * mappings, file mappings) were read and compared by hash, `readPages`.
   * `page-hash`: every page was read and hashed; `why` says why the
   * tracker could not be used.
   */
  tracking: v.optional(
    v.strictObject({
      method: v.picklist(['uffd-wp', 'page-hash']),
      why: v.optional(v.string()),
      trackedPages: u,
      readPages: u,
    }),
  ),
  files: v.array(OpenFileSchema),
  fds: v.array(FdSchema),
  sigactions: v.array(SigactionSchema),
  /** Signals pending for the whole process (shared queue). */
  sharedPending: v.array(SiginfoSchema),
  threads: v.pipe(v.array(ThreadSchema), v.minLength(1)),
  /** Signal the parent gets when it exits (clone's exit_signal; absent: 17, SIGCHLD; 0: none). */
  exitSignal: v.optional(v.pipe(int, v.minValue(0), v.maxValue(64))),
  /**
   * Stopped by a signal (SIGSTOP, SIGTSTP ...; state T): it comes back
   * stopped until a SIGCONT. `reported`: its parent already collected the
   * stop (waitpid with WUNTRACED); otherwise the parent's next such wait reports it.
   */
  stopped: v.optional(v.strictObject({ signal: v.pipe(int, v.minValue(1), v.maxValue(64)), reported: v.boolean() })),
});

/** A child that exited and that its parent (a process of the image) has not reaped yet. */
export const ZombieSchema = v.strictObject({
  pid: v.pipe(int, v.minValue(2)),
  ppid: v.pipe(int, v.minValue(2)),
  pgid: v.pipe(int, v.minValue(0)),
  sid: v.pipe(int, v.minValue(0)),
  exitSignal: v.pipe(int, v.minValue(0), v.maxValue(64)),
  /** Its wait status: exit code << 8, or the terminating signal (| 0x80 when it dumped core). */
  status: v.pipe(u, v.maxValue(0xffff)),
});

export const ManifestSchema = v.strictObject({
  magic: v.literal(IMAGE_MAGIC),
  formatVersion: v.picklist([1, 2]),
  crestVersion: v.string(),
  createdAt: v.pipe(v.string(), v.isoTimestamp()),
  /** Where the dump was taken: restore refuses a mismatching kernel ABI where it matters. */
  source: v.strictObject({
    kernel: v.string(),
    arch: v.literal('x86_64'),
    pageSize: v.literal(4096),
    hostname: v.string(),
    /** The vDSO set's sizes on the dumping kernel: restore needs the same. */
    vdso: v.array(v.strictObject({ kind: v.picklist(['vdso', 'vvar', 'vvar_vclock']), size: u })),
  }),
  /**
   * How the PIDs are given back: userns = the job's own pid namespace (crest
   * run); host = a process that ran outside any job, whose PIDs and TIDs are
   * the host's (restored by crest-pidhelper: the cap or cycle mode).
   */
  job: v.strictObject({
    name: v.nullable(v.string()),
    pidMode: v.picklist(['userns', 'host']),
    /** uid and gid that were mapped into the job's user namespace (the owner's); host: the process's. */
    uid: u,
    gid: u,
    /** The job has its own network namespace (`crest run --net`): restore makes a new one. */
    net: v.optional(v.boolean()),
  }),
  /** Every data file of the image with its size and checksum. */
  files: v.record(v.pipe(v.string(), v.regex(/^[A-Za-z0-9._-]+$/)), FileEntrySchema),
  /**
   * (version 2) The image this one is incremental on: its directory relative
   * to this one's (crest writes "../ckpt-0003"), and its manifest checksum,
   * so that a parent replaced since is refused. Absent: a full image.
   */
  parent: v.optional(
    v.strictObject({
      dir: v.pipe(v.string(), v.minLength(1)),
      checksum: crc32,
      createdAt: v.pipe(v.string(), v.isoTimestamp()),
    }),
  ),
  processes: v.pipe(v.array(ProcessSchema), v.minLength(1)),
  /** Exited children not yet reaped by their parents (absent: none). */
  zombies: v.optional(v.array(ZombieSchema)),
  /**
   * CRC-32 of the canonical serialisation (src/image/canonical.ts) of this
   * manifest with `checksum` set to "00000000": a hand-edited manifest fails it.
   */
  checksum: crc32,
});

export type Manifest = v.InferOutput<typeof ManifestSchema>;
export type ProcessImage = v.InferOutput<typeof ProcessSchema>;
export type ThreadImage = v.InferOutput<typeof ThreadSchema>;
export type PosixTimer = v.InferOutput<typeof PosixTimerSchema>;
export type FileOwnerImage = v.InferOutput<typeof FileOwnerSchema>;
export type ZombieImage = v.InferOutput<typeof ZombieSchema>;
export type VmaImage = v.InferOutput<typeof VmaSchema>;
export type SharedObjectImage = v.InferOutput<typeof SharedObjectSchema>;
export type OpenFileImage = v.InferOutput<typeof OpenFileSchema>;
export type FdImage = v.InferOutput<typeof FdSchema>;
export type TerminalImage = v.InferOutput<typeof TerminalSchema>;
export type FileIdentity = v.InferOutput<typeof FileIdentitySchema>;
export type DataRef = v.InferOutput<typeof DataRefSchema>;
export type Regs = v.InferOutput<typeof RegsSchema>;
export type SigactionImage = v.InferOutput<typeof SigactionSchema>;
