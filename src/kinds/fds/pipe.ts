// Pipes and FIFOs within the process tree (a shell pipeline: each end in
// another process). Each end (open file description) is an image entry, in
// the process that holds it (the first one, when several share it: the
// others have `shared` entries); one entry per pipe, tree-wide, carries the
// pipe's capacity and buffered bytes. What the kernel says, not assumptions:
//  - every end is held by the tree, or the missing end is closed: an
//    injected poll(2) shows POLLERR on a write end without readers and
//    POLLHUP on a read end without writers; an end held outside the tree
//    (outside the job) is refused, and so is a pipe that a process outside
//    the tree opened through /proc/PID/fd (found in the fd tables crest may
//    read: the kernel's poll cannot tell it from the tree's own ends);
//  - the buffered bytes are read without disturbing the tree: tee(2),
//    injected into the first process holding a read end, duplicates the
//    pipe's buffers into a pipe of crest's (sized like the original) without
//    consuming them, and the copy is read through the scratch area; the
//    processes keep exactly their data (with --leave-running too), and the
//    fds crest used are closed again;
//  - capacity from F_GETPIPE_SZ, the byte count from FIONREAD.
// Restore: the first process holding any end makes the pipe with pipe2,
// F_SETPIPE_SZ, writes the bytes into the write end (from the image's data
// file mapped into the husk), reopens extra descriptions through
// /proc/self/fd, and hands the ends it does not hold over to the processes
// that do (they take them before their fds are placed); ends nobody held
// are closed again. FIFOs are reopened by path in each process (O_RDWR
// first, so that no open blocks), and their bytes go back only if the FIFO
// is not in use.
// Packet-mode pipes (O_DIRECT) holding data are refused: tee loses the
// packet boundaries.
import { statSync } from 'node:fs';
import { O } from '../../sys/constants.js';
import { CrestError } from '../../sys/errors.js';
import { FCNTL, IOCTL, NR, PIPE_DEF_SIZE, POLLERR, POLLHUP, POLLIN, POLLOUT, SPLICE_F_NONBLOCK } from './abi.js';
import { call, chunkSize, ioctlInt, raw, type Injector } from './inject.js';
import { fileIdentity } from '../fileid.js';
import { refuseFd, type FdDumpContext, type FdKind, type FdProbe, type FdRestoreContext, type ImageOf, type TreeProcess } from './types.js';

const O_DIRECT = 0o40000;

const canRead = (flags: number): boolean => (flags & O.ACCMODE) !== O.WRONLY;
const canWrite = (flags: number): boolean => (flags & O.ACCMODE) !== O.RDONLY;

/** One description of a pipe or FIFO, in the process of the tree that dumps it. */
interface End {
  proc: TreeProcess;
  p: FdProbe;
}

/** The descriptions of the pipe `p` belongs to, across the tree (each once, at its owner), in image and fd order. */
function ends(p: FdProbe, ctx: FdDumpContext): End[] {
  const mine = (x: FdProbe): boolean => x.rep === x.fd && x.owner === null && x.stream === null && x.st.isFIFO() && x.st.dev === p.st.dev && x.st.ino === p.st.ino;
  return ctx.fdTree.procs.flatMap((proc) => proc.fds.filter(mine).map((x) => ({ proc, p: x })));
}

/**
 * Whether `p` is the description that looks at its pipe (in its process's
 * injection window) and carries the pipe's buffer in the image: the first
 * read end in the tree, else the first end.
 */
function inspects(p: FdProbe, all: readonly End[], ctx: FdDumpContext): boolean {
  const first = all.find((e) => canRead(e.p.info.flags)) ?? all[0]!;
  return first.proc.hostPid === ctx.hostPid && first.p.fd === p.fd;
}

/** What the injection window learnt about one pipe (on its first description). */
interface PipeState {
  size: number;
  data: Buffer | null;
}

/** poll(2) on one fd, no wait: the revents. */
function pollNow(ij: Injector, fd: number, events: number): number {
  const b = Buffer.alloc(8);
  b.writeInt32LE(fd, 0);
  b.writeInt16LE(events, 4);
  const at = ij.mem.put(b);
  call(ij, 'poll', `poll fd ${fd}`, NR.poll, at, 1, 0);
  return ij.thread.readMem(at + 6, 2).readInt16LE(0);
}

/**
 * Runs in the task holding `p`, the pipe's first read end in the tree (or
 * its first end when the tree holds no read end): checks the ends nobody in
 * the tree holds are closed, then copies the buffered bytes out with tee,
 * leaving the pipe as it was.
 */
function inspectPipe(p: FdProbe, ctx: FdDumpContext, all: readonly End[], what: string, kind: 'pipe' | 'fifo'): PipeState {
  const pid = ctx.hostPid;
  const reader = all.some((e) => canRead(e.p.info.flags));
  const writer = all.some((e) => canWrite(e.p.info.flags));
  if (!writer && (pollNow(ctx, p.fd, POLLIN) & POLLHUP) === 0) {
    throw refuseFd(
      pid,
      p.fd,
      kind,
      kind === 'pipe'
        ? `${what}: its write end is open outside the process tree (outside the job): the pipe cannot be recreated`
        : `${what} is open only for reading in the process tree, and a writer outside it may have it open (the kernel cannot tell crest otherwise): it cannot be recreated`,
    );
  }
  if (!reader && (pollNow(ctx, p.fd, POLLOUT) & POLLERR) === 0) {
    throw refuseFd(pid, p.fd, kind, `${what}: its read end is open outside the process tree (outside the job): it cannot be recreated`);
  }
  const outside = kind === 'pipe' ? ctx.fdTree.pipesOutside.get(p.st.ino) : undefined;
  if (outside !== undefined) {
    throw refuseFd(pid, p.fd, kind, `${what} is open in process ${outside} too, outside the process tree (opened through /proc/PID/fd?): the pipe cannot be recreated for it`);
  }
  ctx.mem.reset();
  const size = call(ctx, 'fcntl', `read the capacity of ${what}`, NR.fcntl, p.fd, FCNTL.GETPIPE_SZ, 0);
  const n = ioctlInt(ctx, p.fd, IOCTL.FIONREAD, `count the bytes in ${what}`);
  if (n === 0) return { size, data: null };
  if (!reader) throw refuseFd(pid, p.fd, kind, `${what} holds ${n} bytes but no process of the tree has a read end of it`);
  if (all.some((e) => (e.p.info.flags & O_DIRECT) !== 0)) {
    throw refuseFd(pid, p.fd, kind, `${what} is in packet mode (O_DIRECT) and holds ${n} bytes: their packet boundaries cannot be read without consuming them`);
  }
  return { size, data: teeOut(ctx, p.fd, n, size, pid, p.fd, what, kind) };
}

/** Copies the `n` buffered bytes of read end `rfd` without consuming them: tee into a pipe of our own, read that. */
function teeOut(ctx: FdDumpContext, rfd: number, n: number, size: number, pid: number, fd: number, what: string, kind: string): Buffer {
  ctx.mem.reset();
  const pair = ctx.mem.alloc(8);
  const r = raw(ctx, NR.pipe2, pair, O.CLOEXEC | O.NONBLOCK);
  if (r < 0) throw refuseFd(pid, fd, kind, `cannot make a pipe in the process to copy ${what} through (pipe2: errno ${-r}; at its fd limit?)`);
  const b = ctx.thread.readMem(pair, 8);
  const cr = b.readInt32LE(0);
  const cw = b.readInt32LE(4);
  try {
    if (size > PIPE_DEF_SIZE) {
      const s = raw(ctx, NR.fcntl, cw, FCNTL.SETPIPE_SZ, size);
      if (s < size) throw refuseFd(pid, fd, kind, `cannot make a pipe as large as ${what} (${size} bytes) to copy it through (errno ${-s})`);
    }
    const got = raw(ctx, NR.tee, rfd, cw, n, SPLICE_F_NONBLOCK);
    if (got !== n) throw refuseFd(pid, fd, kind, `tee copied ${got < 0 ? `nothing (errno ${-got})` : `${got} of the ${n} bytes`} of ${what}`);
    const out = Buffer.alloc(n);
    const chunk = chunkSize(ctx);
    for (let off = 0; off < n; ) {
      ctx.mem.reset();
      const at = ctx.mem.alloc(Math.min(chunk, n - off));
      const k = call(ctx, 'read', `read the copy of ${what}`, NR.read, cr, at, Math.min(chunk, n - off));
      if (k <= 0) throw new CrestError('INTERNAL', `the copy of ${what} ended after ${off} of ${n} bytes`);
      ctx.thread.readMem(at, k).copy(out, off);
      off += k;
    }
    return out;
  } finally {
    raw(ctx, NR.close, cr);
    raw(ctx, NR.close, cw);
  }
}

function bufferOf(st: PipeState | undefined, ctx: FdDumpContext): ImageOf<'pipe'>['buffer'] {
  if (!st) return undefined;
  return st.data ? { size: st.size, data: ctx.putData(st.data) } : { size: st.size };
}

/** The pipe object being rebuilt in the husk: its two ends (kept high) and which are taken. */
interface Built {
  r: number;
  w: number;
  usedR: boolean;
  usedW: boolean;
}

/** Sizes the pipe and writes its bytes back through write end `w` (nonblocking: it must all fit). */
function refill(ctx: FdRestoreContext, w: number, buffer: NonNullable<ImageOf<'pipe'>['buffer']>, what: string): void {
  if (buffer.size !== PIPE_DEF_SIZE) {
    const s = call(ctx, 'fcntl', `size ${what} to ${buffer.size} bytes`, NR.fcntl, w, FCNTL.SETPIPE_SZ, buffer.size);
    if (s < buffer.size) throw new CrestError('RESTORE_MISMATCH', `${what} could only be sized to ${s} bytes, not ${buffer.size}`);
  }
  if (!buffer.data) return;
  const at = ctx.dataAt(buffer.data);
  for (let off = 0; off < buffer.data.length; ) {
    const n = call(ctx, 'write', `refill ${what}`, NR.write, w, at + off, buffer.data.length - off);
    off += n;
  }
}

/** An end for description `flags` of a built pipe: one of the two made by pipe2, or a reopen of one through /proc. */
function takeEnd(ctx: FdRestoreContext, b: Built, flags: number, what: string): number {
  if (!canWrite(flags) && !b.usedR) {
    b.usedR = true;
    return b.r;
  }
  if (!canRead(flags) && !b.usedW) {
    b.usedW = true;
    return b.w;
  }
  const via = `/proc/self/fd/${canRead(flags) ? b.r : b.w}`;
  return call(ctx, 'openat', `open another end of ${what} through ${via}`, NR.openat, -100, ctx.mem.str(via), (flags & O.ACCMODE) | O.NONBLOCK | O.CLOEXEC, 0);
}

export const pipe: FdKind<'pipe'> = {
  name: 'pipe',
  match: (p) => p.st.isFIFO() && p.link.startsWith('pipe:['),
  inject(p, ctx) {
    // Once per pipe in the whole tree.
    const all = ends(p, ctx);
    return inspects(p, all, ctx) ? inspectPipe(p, ctx, all, p.link, 'pipe') : undefined;
  },
  dump(p, ctx, id, injected) {
    const buffer = bufferOf(injected as PipeState | undefined, ctx);
    return { kind: 'pipe', id, flags: p.info.flags & ~O.CLOEXEC, pipe: p.st.ino, ...(buffer ? { buffer } : {}) };
  },
  preflight(f, ctx) {
    const all = ctx.manifest.processes.flatMap((p) => p.files).filter((x) => x.kind === 'pipe' && x.pipe === f.pipe);
    if (all.filter((x) => (x as ImageOf<'pipe'>).buffer).length !== 1) {
      throw new CrestError('IMAGE_INVALID', `pipe [${f.pipe}] must have its buffer recorded on exactly one end in the whole image`);
    }
  },
  restore(f, ctx) {
    const key = `pipe:${f.pipe}`;
    const what = `pipe [${f.pipe}]`;
    let b = ctx.shared.get(key) as Built | undefined;
    if (!b) {
      // The first process of the tree holding an end makes the pipe, every end of it, and its contents.
      const all = ctx.tree.filter((x) => x.file.kind === 'pipe' && x.file.pipe === f.pipe);
      const image = (x: (typeof all)[number]): ImageOf<'pipe'> => x.file as ImageOf<'pipe'>;
      const direct = all.some((x) => (image(x).flags & O_DIRECT) !== 0) ? O_DIRECT : 0;
      const pair = ctx.mem.alloc(8);
      call(ctx, 'pipe2', `create ${what}`, NR.pipe2, pair, O.CLOEXEC | O.NONBLOCK | direct);
      const fds = ctx.thread.readMem(pair, 8);
      b = { r: ctx.keep(fds.readInt32LE(0), `${what} read end`), w: ctx.keep(fds.readInt32LE(4), `${what} write end`), usedR: false, usedW: false };
      ctx.shared.set(key, b);
      refill(ctx, b.w, all.map(image).find((x) => x.buffer)!.buffer!, what);
      for (const x of all) {
        if (x.pid === ctx.proc.pid) continue;
        ctx.mem.reset();
        ctx.handOver(x.pid, x.index, takeEnd(ctx, b, image(x).flags, what));
      }
      ctx.mem.reset();
    }
    return takeEnd(ctx, b, f.flags, what);
  },
};

/** A FIFO's key: its path (the same FIFO reopened by each description). */
export const fifo: FdKind<'fifo'> = {
  name: 'fifo',
  match: (p) => p.st.isFIFO() && p.link.startsWith('/'),
  check(p, ctx) {
    if (p.link.endsWith(' (deleted)')) throw refuseFd(ctx.hostPid, p.fd, 'fifo', `FIFO ${p.link} was deleted: it cannot be reopened`);
  },
  inject(p, ctx) {
    const all = ends(p, ctx);
    return inspects(p, all, ctx) ? inspectPipe(p, ctx, all, `FIFO ${p.link}`, 'fifo') : undefined;
  },
  dump(p, ctx, id, injected) {
    const buffer = bufferOf(injected as PipeState | undefined, ctx);
    const file = fileIdentity(p.link, `/proc/${ctx.hostPid}/fd/${p.fd}`);
    return { kind: 'fifo', id, flags: p.info.flags & ~O.CLOEXEC, file, ...(buffer ? { buffer } : {}) };
  },
  preflight(f) {
    let st;
    try {
      st = statSync(f.file.path);
    } catch (e) {
      throw new CrestError('FILE_MISSING', `FIFO ${f.file.path} is missing: ${(e as Error).message}`, { cause: e });
    }
    if (!st.isFIFO()) throw new CrestError('FILE_CHANGED', `${f.file.path} is no longer a FIFO`);
  },
  restore(f, ctx) {
    const path = f.file.path;
    const key = `fifo:${path}`;
    const what = `FIFO ${path}`;
    let rw = ctx.shared.get(key) as number | undefined;
    if (rw === undefined) {
      // O_RDWR never blocks on a FIFO, and makes the later opens of either end not block either.
      rw = ctx.keep(call(ctx, 'openat', `open ${what}`, NR.openat, -100, ctx.mem.str(path), O.RDWR | O.NONBLOCK | O.CLOEXEC, 0), what);
      ctx.shared.set(key, rw);
      const buffer = ctx.files.find((x): x is ImageOf<'fifo'> => x.kind === 'fifo' && x.file.path === path && x.buffer !== undefined)?.buffer;
      if (buffer) {
        ctx.mem.reset();
        const there = ioctlInt(ctx, rw, IOCTL.FIONREAD, `count the bytes in ${what}`);
        if (there > 0) {
          throw new CrestError('FIFO_IN_USE', `${what} is open elsewhere and already holds ${there} bytes: its contents cannot be put back`);
        }
        refill(ctx, rw, buffer, what);
      }
    }
    ctx.mem.reset();
    return call(ctx, 'openat', `open ${what}`, NR.openat, -100, ctx.mem.str(path), (f.flags & O.ACCMODE) | O.NONBLOCK | O.CLOEXEC, 0);
  },
};
