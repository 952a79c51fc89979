// File descriptors: the driver over the fd kinds of ./fds/ (one module per
// kind of open file, listed in ./fds/registry.ts). What every fd shares lives
// here: listing the fd table, grouping the fds that share one open file
// description (dup, fork: found with kcmp, restored as one open plus dups so
// they keep sharing offset and status flags), the order of the kinds' hooks,
// the placement of every description at its fd number, and close-on-exec.
// An fd no kind matches is refused with the pid, the fd and what it is.
//
// Across the processes of a tree (./fds/tree.ts): a description several
// processes hold is dumped and restored by the first of them in image order
// (its owner); the others record a `shared` entry and, at restore, take the
// very same description from the owner's husk (SharedObjects, pidfd_getfd)
// before their fds are placed. A pipe or a socketpair is made whole by the
// first process holding any end of it, which hands the ends it does not hold
// itself over to the processes that do.
import { readdirSync, readlinkSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { native } from '../sys/native.js';
import { readFdinfo } from '../proc/index.js';
import { KCMP_FILE, MAP, O, PROT } from '../sys/constants.js';
import { crestTrackerFds } from './uffdwp.js';
import { CrestError } from '../sys/errors.js';
import type { DataRef, FdImage, FileOwnerImage, Manifest, OpenFileImage, ProcessImage } from '../image/schema.js';
import type { DataFile, ImageWriter } from '../image/writer.js';
import { FD_KINDS, fdKind } from './fds/registry.js';
import { FCNTL, NR } from './fds/abi.js';
import { lookupSockets } from './fds/procnet.js';
import { restoreLocks } from './fds/locks.js';
import { call, raw } from './fds/inject.js';
import { linkTree } from './fds/tree.js';
import { descKey } from './objects.js';
import {
  refuseFd, type FdCheckContext, type FdDumpContext, type AnyFdKind, type FdProbe, type FdRestoreContext, type TreeFds, type TreeFile,
} from './fds/types.js';
import type { DumpContext, Kind, RestoreContext } from './types.js';

const O_ASYNC = 0o20000;

/** What kind of object an fd's /proc link names, for refusals: "socket", "eventpoll", "userfaultfd" ... */
function objectKind(link: string): string {
  const m = /^(?:anon_inode:\[?([a-z_]+)\]?|([a-z]+):\[\d+\])$/.exec(link);
  if (m) return m[1] ?? m[2] ?? link;
  return link;
}

/**
 * The init's standard stream that `fd` of the process shares, if any.
 * Outside a job (initPid null) there is no init to compare with: a pipe,
 * socket or terminal at fd 0-2 is taken to be the stream whoever started
 * the process gave it, and becomes crest restore's.
 */
function outsideStream(pid: number, initPid: number | null, fd: number, link: string): 0 | 1 | 2 | null {
  if (initPid === null) return fd <= 2 && /^(?:pipe:\[|socket:\[|\/dev\/pts\/|\/dev\/tty)/.test(link) ? (fd as 0 | 1 | 2) : null;
  const n = native();
  for (const s of [0, 1, 2] as const) {
    try {
      if (n.kcmp(pid, initPid, KCMP_FILE, fd, s) === 0) return s;
    } catch {
      /* init has no such fd */
    }
  }
  return null;
}

/**
 * The fd table of `pid`, in fd order, each fd with the lowest fd sharing its
 * description. An fd that closes while we look (the process still runs
 * during the check) is left out.
 */
function probeFds(pid: number, initPid: number | null): FdProbe[] {
  const n = native();
  // crest's own page trackers (kinds/uffdwp.ts) are not the process's: left out of the image.
  const trackers = crestTrackerFds(pid);
  const nums = readdirSync(`/proc/${pid}/fd`)
    .map(Number)
    .filter((fd) => !trackers.has(fd))
    .sort((a, b) => a - b);
  const out: FdProbe[] = [];
  const reps: FdProbe[] = [];
  for (const fd of nums) {
    let p: FdProbe;
    try {
      const link = readlinkSync(`/proc/${pid}/fd/${fd}`);
      const st = statSync(`/proc/${pid}/fd/${fd}`);
      const info = readFdinfo(pid, fd);
      // A regular file the job's stdout was redirected to stays a file (reopened by path, offset kept).
      const stream = st.isFile() || st.isDirectory() ? null : outsideStream(pid, initPid, fd, link);
      p = { fd, link, st, info, stream, rep: fd, sock: null, owner: null };
    } catch (e) {
      // Closed while we looked (fdinfo reads report that as PROC_GONE).
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'PROC_GONE') continue;
      throw e;
    }
    const same = reps.find((r) => r.st.dev === p.st.dev && r.st.ino === p.st.ino && n.kcmp(pid, pid, KCMP_FILE, r.fd, p.fd) === 0);
    if (same) p.rep = same.fd;
    else reps.push(p);
    out.push(p);
  }
  const socks = out.filter((p) => p.st.isSocket());
  const tables = lookupSockets(pid, socks.map((p) => p.st.ino));
  for (const p of socks) p.sock = tables.get(p.st.ino) ?? { table: null };
  return out;
}

/** The kind that handles `p`, or the refusal naming pid, fd and what it is. */
function kindOf(p: FdProbe, pid: number): AnyFdKind {
  const k = FD_KINDS.find((x) => x.match(p));
  if (k) return k;
  const what = objectKind(p.link);
  throw refuseFd(pid, p.fd, what, `${what} (${p.link}) is not supported yet`);
}

/** Runs every kind's check over the table: the refusals that need only /proc. */
function checkAll(cctx: FdCheckContext): Map<number, AnyFdKind> {
  const kinds = new Map<number, AnyFdKind>();
  for (const p of cctx.fds) {
    if (p.rep !== p.fd) continue;
    const k = kindOf(p, cctx.hostPid);
    k.check?.(p, cctx);
    kinds.set(p.fd, k);
  }
  return kinds;
}

/** What the injection window found, kept for the collect stage. */
interface DumpState {
  tree: TreeFds;
  fds: readonly FdProbe[];
  kinds: Map<number, AnyFdKind>;
  /** Description id by representative fd. */
  ids: ReadonlyMap<number, number>;
  injected: Map<number, unknown>;
  /** Signal-driven I/O of a description (by representative fd): its owner and signal, when it has one. */
  owners: Map<number, FileOwner>;
  data: { file: DataFile | null; name: string };
}

type FileOwner = Omit<FileOwnerImage, 'file'>;
const OWNER_TYPES = ['tid', 'pid', 'pgrp'] as const;

/**
 * Who gets a description's SIGIO/SIGURG (F_GETOWN_EX) and which signal
 * (F_GETSIG), read for every description with O_ASYNC and every socket
 * (whose owner gets SIGURG without it); null when it has neither. An owner
 * outside the process's pid namespace reads as 0, none.
 */
function readOwner(ctx: FdDumpContext, p: FdProbe): FileOwner | null {
  const async = (p.info.flags & O_ASYNC) !== 0;
  if (!async && !p.st.isSocket()) return null;
  const ex = ctx.mem.alloc(8);
  call(ctx, 'fcntl', `read the owner of fd ${p.fd}`, NR.fcntl, p.fd, FCNTL.GETOWN_EX, ex);
  const b = ctx.thread.readMem(ex, 8);
  const type = OWNER_TYPES[b.readInt32LE(0)];
  const pid = b.readInt32LE(4);
  const signal = async ? call(ctx, 'fcntl', `read the I/O signal of fd ${p.fd}`, NR.fcntl, p.fd, FCNTL.GETSIG, 0) : 0;
  if ((pid === 0 || type === undefined) && signal === 0) return null;
  return { type: type ?? 'pid', pid: type === undefined ? 0 : pid, signal };
}
const dumpStates = new WeakMap<DumpContext, DumpState>();

function fdContext(ctx: DumpContext, st: DumpState): FdDumpContext {
  const fctx = Object.create(ctx) as FdDumpContext;
  const idOf = (fd: number): number | undefined => {
    const p = st.fds.find((x) => x.fd === fd);
    return p === undefined ? undefined : st.ids.get(p.rep);
  };
  Object.assign(fctx, {
    fds: st.fds,
    fdTree: st.tree,
    idOf,
    sharedWith: (fd: number) => {
      const id = idOf(fd);
      return st.tree.procs.filter((q) => q.fds.some((x) => x.owner?.pid === ctx.nsPid && x.owner.id === id)).map((q) => q.nsPid);
    },
    putData: (bytes: Buffer): DataRef => {
      st.data.file ??= ctx.writer.openData(st.data.name);
      const offset = st.data.file.size;
      st.data.file.write(bytes);
      return { file: st.data.name, offset, length: bytes.length };
    },
  });
  return fctx;
}

/** The tree's fd tables of one dump, looked at when the first process is dumped (every process is frozen by then). */
const trees = new WeakMap<ImageWriter, TreeFds>();

function prepareDump(ctx: DumpContext): DumpState {
  let tree = trees.get(ctx.writer);
  if (!tree) {
    tree = linkTree(ctx.members, (pid) => probeFds(pid, ctx.initHostPid));
    trees.set(ctx.writer, tree);
  }
  const me = tree.procs.find((x) => x.hostPid === ctx.hostPid);
  if (!me) throw new CrestError('INTERNAL', `pid ${ctx.hostPid} is not among the tree's processes`);
  // Frozen now: the table cannot change any more; check again what the running process had.
  const kinds = checkAll({ hostPid: ctx.hostPid, nsPid: ctx.nsPid, initHostPid: ctx.initHostPid, tcp: ctx.tcp, fds: me.fds });
  const st: DumpState = { tree, fds: me.fds, kinds, ids: me.ids, injected: new Map(), owners: new Map(), data: { file: null, name: `fds-${ctx.nsPid}.img` } };
  dumpStates.set(ctx, st);
  return st;
}

export const files: Kind = {
  name: 'files',
  check(ctx) {
    checkAll({ hostPid: ctx.hostPid, nsPid: ctx.nsPid, initHostPid: ctx.initHostPid, tcp: ctx.tcp, fds: probeFds(ctx.hostPid, ctx.initHostPid) });
  },
  dumpInjected(ctx) {
    const st = prepareDump(ctx);
    const fctx = fdContext(ctx, st);
    for (const p of st.fds) {
      const k = st.kinds.get(p.fd);
      if (!k?.inject) continue;
      ctx.mem.reset();
      st.injected.set(p.fd, k.inject(p, fctx));
    }
    for (const p of st.fds) {
      if (p.rep !== p.fd || st.kinds.get(p.fd)?.name === 'stdio') continue;
      ctx.mem.reset();
      const o = readOwner(fctx, p);
      if (o) st.owners.set(p.fd, o);
    }
  },
  dump(ctx) {
    const st = dumpStates.get(ctx) ?? prepareDump(ctx);
    const fctx = fdContext(ctx, st);
    const openFiles: OpenFileImage[] = [];
    const fds: FdImage[] = [];
    const owners: FileOwnerImage[] = [];
    for (const p of st.fds) {
      const cloexec = (p.info.flags & O.CLOEXEC) !== 0;
      const id = st.ids.get(p.rep)!;
      if (p.rep === p.fd) {
        const k = st.kinds.get(p.fd)!;
        if (k.inject && !st.injected.has(p.fd)) throw new CrestError('INTERNAL', `fd ${p.fd} (${k.name}) was not seen in the injection window`);
        const o = st.owners.get(p.fd);
        if (o) owners.push({ file: openFiles.length, ...o });
        openFiles.push(k.dump(p, fctx, id, st.injected.get(p.fd)));
      }
      fds.push({ fd: p.fd, file: id, cloexec });
    }
    st.data.file?.close();
    ctx.proc.files = openFiles;
    ctx.proc.fds = fds;
    if (owners.length > 0) ctx.proc.fileOwners = owners;
  },
  restore(ctx) {
    restoreFds(ctx);
  },
};

/** The status flags F_SETFL changes (fs/fcntl.c SETFL_MASK). */
const SETFL_MASK = O.APPEND | O.NONBLOCK | O_ASYNC | 0o40000 /* O_DIRECT */ | 0o1000000; /* O_NOATIME */

/** Gives a rebuilt description exactly the recorded status flags (access mode checked, the changeable ones set). */
function matchFlags(ctx: FdRestoreContext, fd: number, want: number, what: string): void {
  const cur = call(ctx, 'fcntl', `read the status flags of ${what}`, NR.fcntl, fd, FCNTL.GETFL, 0);
  if ((cur & O.ACCMODE) !== (want & O.ACCMODE)) {
    throw new CrestError('RESTORE_MISMATCH', `${what} came back with access mode ${cur & O.ACCMODE}, not ${want & O.ACCMODE}`);
  }
  if ((cur & SETFL_MASK) !== (want & SETFL_MASK)) {
    call(ctx, 'fcntl', `set the status flags of ${what}`, NR.fcntl, fd, FCNTL.SETFL, (cur & ~SETFL_MASK) | (want & SETFL_MASK));
  }
}

/** Checks before any process exists that every open file can be rebuilt here (files unchanged, data present ...). */
export function preflightFiles(proc: ProcessImage, manifest: Manifest): void {
  for (const f of proc.files) {
    for (const ref of dataRefs(f)) checkDataRef(ref, manifest, f);
    fdKind(f.kind).preflight?.(f as never, { manifest, proc });
  }
}

/** The data refs an open file image holds. */
function dataRefs(f: OpenFileImage): DataRef[] {
  const out: DataRef[] = [];
  if ('buffer' in f && f.buffer?.data) out.push(f.buffer.data);
  if ('data' in f && f.data) out.push(f.data);
  if ('queue' in f && f.queue) out.push(f.queue.data);
  return out;
}

function checkDataRef(ref: DataRef, m: Manifest, f: OpenFileImage): void {
  const entry = m.files[ref.file];
  if (!entry || ref.offset + ref.length > entry.size) {
    throw new CrestError(
      'IMAGE_INVALID',
      `open file ${f.id} (${f.kind}) refers to bytes ${ref.offset}+${ref.length} of ${ref.file}, ${entry ? `which has ${entry.size}` : 'which the image does not list'}`,
    );
  }
}

/** Every description of an image's tree, and the keys of those that `shared` entries refer to. */
interface TreeIndex {
  files: TreeFile[];
  referenced: Set<string>;
}
const treeIndexes = new WeakMap<Manifest, TreeIndex>();

function treeIndex(m: Manifest): TreeIndex {
  let t = treeIndexes.get(m);
  if (t) return t;
  t = { files: [], referenced: new Set() };
  for (const p of m.processes) {
    p.files.forEach((file, index) => {
      if (file.kind === 'shared') t!.referenced.add(descKey(file.pid, file.file));
      else t!.files.push({ pid: p.pid, index, file });
    });
  }
  treeIndexes.set(m, t);
  return t;
}

/**
 * Rebuilds every open file in the husk at a high fd, then dups each into
 * its place. Going through high fds first means no target number is taken
 * before its turn, whatever the order; the husk's own stdio (from `crest
 * restore`) is parked the same way before fds 0-2 are reused. A description
 * an earlier process of the tree made already (it holds it too, or it made
 * the whole pipe or socketpair) is taken from there instead of made. Kinds whose
 * state refers to other fds (epoll registrations, locks) finish once every
 * fd is in place; the high fds and the mapped data file go last.
 */
function restoreFds(ctx: RestoreContext): void {
  const proc = ctx.proc;
  const maxFd = Math.max(2, ...proc.fds.map((f) => f.fd));
  const base = maxFd + 1;
  const high = new Set<number>();
  const keep = (fd: number, what: string): number => {
    if (fd >= base) {
      high.add(fd);
      return fd;
    }
    const h = call(ctx, 'fcntl', `move ${what} out of the way`, NR.fcntl, fd, FCNTL.DUPFD_CLOEXEC, base);
    raw(ctx, NR.close, fd);
    high.add(h);
    return h;
  };
  const shared = new Map<string, unknown>();
  const needStream = new Set(proc.files.flatMap((f) => (f.kind === 'stdio' ? [f.stream] : [])));
  for (const s of [0, 1, 2] as const) {
    const r = raw(ctx, NR.fcntl, s, FCNTL.DUPFD_CLOEXEC, base);
    if (r >= 0) {
      high.add(r);
      shared.set(`stdio:${s}`, r);
    } else if (needStream.has(s)) {
      ctx.mem.reset();
      const tmp = call(ctx, 'openat', 'open /dev/null for a closed stream', NR.openat, -100, ctx.mem.str('/dev/null'), O.RDWR | O.CLOEXEC, 0);
      shared.set(`stdio:${s}`, keep(tmp, '/dev/null'));
    }
  }
  const mapped = new Map<string, number>();
  const tree = treeIndex(ctx.manifest);
  const fctx = Object.create(ctx) as FdRestoreContext;
  Object.assign(fctx, {
    files: proc.files,
    tree: tree.files,
    handOver: (pid: number, index: number, fd: number): void => {
      const what = `open file ${index} of pid ${pid}`;
      const h = keep(fd, what);
      ctx.objects.put(ctx, descKey(pid, index), call(ctx, 'fcntl', `hold ${what} for it`, NR.fcntl, h, FCNTL.DUPFD_CLOEXEC, base));
    },
    takeDescription: (pid: number, index: number): number | undefined => {
      const fd = ctx.objects.take(ctx, descKey(pid, index));
      return fd === undefined ? undefined : keep(fd, `open file ${index} of pid ${pid}`);
    },
    fdsOf: (id: number) => proc.fds.filter((f) => f.file === id),
    keep,
    shared,
    dataAt: (ref: DataRef): number => {
      checkDataRef(ref, ctx.manifest, { kind: 'stdio', id: 0, stream: 0, was: '(restore)' });
      let at = mapped.get(ref.file);
      if (at === undefined) {
        const size = ctx.manifest.files[ref.file]!.size;
        if (size === 0) return 0; // only empty things (a zero-length datagram) refer to it
        const path = resolve(ctx.dir, ref.file);
        const fd = call(ctx, 'openat', `open ${path}`, NR.openat, -100, ctx.mem.str(path), O.RDONLY | O.CLOEXEC, 0);
        try {
          at = call(ctx, 'mmap', `map ${path}`, NR.mmap, 0, size, PROT.READ, MAP.PRIVATE, fd, 0);
        } finally {
          raw(ctx, NR.close, fd);
        }
        mapped.set(ref.file, at);
      }
      return at + ref.offset;
    },
  });
  const opened: number[] = [];
  proc.files.forEach((f, index) => {
    ctx.mem.reset();
    const what = `${f.kind} ${index}`;
    if (f.kind === 'stdio' || f.kind === 'shared') {
      opened[index] = keep(fdKind(f.kind).restore(f as never, fctx), what);
      return;
    }
    // An end of a pipe or socketpair an earlier process made whole is taken from there.
    const h = fctx.takeDescription(proc.pid, index) ?? keep(fdKind(f.kind).restore(f as never, fctx), what);
    // O_ASYNC once the fd is in its place: the kernel tells a signal handler the fd it was set through (si_fd).
    matchFlags(fctx, h, f.flags & ~O_ASYNC, what);
    opened[index] = h;
  });
  const targets = new Set(proc.fds.map((f) => f.fd));
  for (const s of [0, 1, 2]) if (!targets.has(s)) raw(ctx, NR.close, s);
  for (const f of proc.fds) {
    call(ctx, 'dup3', `place fd ${f.fd}`, NR.dup3, opened[f.file]!, f.fd, f.cloexec ? O.CLOEXEC : 0);
  }
  const fdOf = (index: number): number => proc.fds.find((f) => f.file === index)?.fd ?? opened[index]!;
  proc.files.forEach((f, index) => {
    if (f.kind === 'stdio' || f.kind === 'shared' || (f.flags & O_ASYNC) === 0) return;
    ctx.mem.reset();
    matchFlags(fctx, fdOf(index), f.flags, `${f.kind} ${index}`);
  });
  proc.files.forEach((f) => {
    ctx.mem.reset();
    fdKind(f.kind).afterPlaced?.(f as never, fctx, fdOf);
  });
  // Later processes take the descriptions they share with this one from their places here.
  proc.files.forEach((_f, index) => {
    const key = descKey(proc.pid, index);
    if (tree.referenced.has(key) && !ctx.objects.has(key)) ctx.objects.lend(ctx, key, fdOf(index));
  });
  for (const h of high) raw(ctx, NR.close, h);
  for (const [name, at] of mapped) if (at !== 0) raw(ctx, NR.munmap, at, ctx.manifest.files[name]!.size);
}

/**
 * Gives descriptions with signal-driven I/O their owner and signal again.
 * Late, once every process and thread of the tree exists (an owner may be
 * any of them) and the process's credentials are its own (the kernel
 * checks them when it sends the signal).
 */
export function restoreFileOwners(ctx: RestoreContext): void {
  for (const o of ctx.proc.fileOwners ?? []) {
    const fd = ctx.proc.fds.find((x) => x.file === o.file)?.fd;
    if (fd === undefined) continue;
    ctx.mem.reset();
    if (o.pid !== 0) {
      const ex = Buffer.alloc(8);
      ex.writeInt32LE(OWNER_TYPES.indexOf(o.type), 0);
      ex.writeInt32LE(o.pid, 4);
      ctx.thread.syscall('fcntl', `give fd ${fd} its owner (${o.type} ${o.pid})`, NR.fcntl, fd, FCNTL.SETOWN_EX, ctx.mem.put(ex));
    }
    if (o.signal !== 0) ctx.thread.syscall('fcntl', `give fd ${fd} its I/O signal ${o.signal}`, NR.fcntl, fd, FCNTL.SETSIG, o.signal);
  }
}

/**
 * Takes the process's file locks again. Last of all, once the whole tree is
 * built and the husk has closed the shared objects it held for the others
 * (SharedObjects.release): closing any fd of a file drops every POSIX lock
 * the process holds on it, so they are taken only once no fd will be closed
 * or replaced any more.
 */
export function restoreFileLocks(ctx: RestoreContext): void {
  ctx.proc.files.forEach((f, index) => {
    if ((f.kind === 'file' || f.kind === 'deleted' || f.kind === 'shared') && f.locks) {
      ctx.mem.reset();
      const what = f.kind === 'file' ? f.file.path : f.kind === 'deleted' ? f.path : `open file ${f.file} of pid ${f.pid}`;
      restoreLocks(f.locks, ctx.proc.fds.find((x) => x.file === index)!.fd, what, ctx);
    }
  });
}
