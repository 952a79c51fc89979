// The image schema: the single source of truth for what a checkpoint holds.
// Static types are inferred from it, the reader validates every manifest
// against it, and docs/image-format.md describes it field by field.
// FORMAT_VERSION moves independently of the package version: bump it for any
// change an older reader could misread, and keep readers refusing newer ones.
import * as v from 'valibot';

/** Version of the on-disk format this build writes and the newest it reads. */
export const FORMAT_VERSION = 1;
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
   * vdso / vvar / vvar_vclock: the kernel's special mappings (moved, never stored).
   */
  kind: v.picklist(['anon', 'shmem-anon', 'file', 'vdso', 'vvar', 'vvar_vclock']),
  /** Offset into the file in bytes (file mappings only; 0 otherwise). */
  pgoff: u,
  file: v.optional(FileIdentitySchema),
  /** maps' name column when it is a bracketed label ([heap], [stack]). */
  label: v.optional(v.string()),
  /** smaps VmFlags, two letters each (gd = grows down, dd = dont-dump, ...). */
  vmFlags: v.array(v.pipe(v.string(), v.regex(/^[a-z0-9]{2}$/))),
  /** Pages stored in the pages file for this mapping, in file order. */
  runs: v.array(PageRunSchema),
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

/**
 * One open file description, shared by every fd that refers to it (dup'd fds
 * share offset and status flags, so they are restored as one open + dups).
 * kind: file = a regular file or directory reopened by path;
 * chardev = a character device reopened by path (/dev/null, /dev/urandom ...);
 * stdio = the job's standard stream from outside (terminal or pipe): the
 * restored job gets the corresponding stream of `crest restore`.
 */
export const OpenFileSchema = v.variant('kind', [
  v.strictObject({
    kind: v.literal('file'),
    id: u,
    file: FileIdentitySchema,
    /** File status flags (O_APPEND, O_NONBLOCK, access mode ...), without O_CLOEXEC. */
    flags: u,
    pos: u,
  }),
  v.strictObject({
    kind: v.literal('chardev'),
    id: u,
    path: v.pipe(v.string(), v.startsWith('/dev/')),
    rdev: u,
    flags: u,
    pos: u,
  }),
  v.strictObject({
    kind: v.literal('stdio'),
    id: u,
    /** Which of crest restore's streams replaces it: 0, 1 or 2. */
    stream: v.picklist([0, 1, 2]),
    /** What it was, for `crest show`: "/dev/pts/3", "pipe:[1234]". */
    was: v.string(),
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
  mm: MmSchema,
  vmas: v.array(VmaSchema),
  /** Name of this process's pages file inside the image directory. */
  pagesFile: v.string(),
  files: v.array(OpenFileSchema),
  fds: v.array(FdSchema),
  sigactions: v.array(SigactionSchema),
  /** Signals pending for the whole process (shared queue). */
  sharedPending: v.array(SiginfoSchema),
  threads: v.pipe(v.array(ThreadSchema), v.minLength(1)),
});

export const ManifestSchema = v.strictObject({
  magic: v.literal(IMAGE_MAGIC),
  formatVersion: v.literal(FORMAT_VERSION),
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
  /** How the PIDs are given back: userns = the job's own pid namespace (crest run). */
  job: v.strictObject({
    name: v.nullable(v.string()),
    pidMode: v.literal('userns'),
    /** uid and gid that were mapped into the job's user namespace (the owner's). */
    uid: u,
    gid: u,
  }),
  /** Every data file of the image with its size and checksum. */
  files: v.record(v.pipe(v.string(), v.regex(/^[A-Za-z0-9._-]+$/)), FileEntrySchema),
  processes: v.pipe(v.array(ProcessSchema), v.minLength(1)),
  /**
   * CRC-32 of the canonical serialisation (src/image/canonical.ts) of this
   * manifest with `checksum` set to "00000000": a hand-edited manifest fails it.
   */
  checksum: crc32,
});

export type Manifest = v.InferOutput<typeof ManifestSchema>;
export type ProcessImage = v.InferOutput<typeof ProcessSchema>;
export type ThreadImage = v.InferOutput<typeof ThreadSchema>;
export type VmaImage = v.InferOutput<typeof VmaSchema>;
export type OpenFileImage = v.InferOutput<typeof OpenFileSchema>;
export type FdImage = v.InferOutput<typeof FdSchema>;
export type FileIdentity = v.InferOutput<typeof FileIdentitySchema>;
export type Regs = v.InferOutput<typeof RegsSchema>;
export type SigactionImage = v.InferOutput<typeof SigactionSchema>;
