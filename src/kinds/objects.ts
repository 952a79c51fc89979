// Objects that several processes of a restored tree share, or that a
// mapping and an open file share: a memfd, a file deleted while open or
// mapped, shared anonymous memory, an open file description several
// processes hold (inherited over fork: a pipe end, a log file and its
// offset, a socket). The first husk that needs one creates
// it; every other husk takes the very same object from that one with
// pidfd_getfd (the husks hold every capability in the job's user namespace,
// which lets one take another's fd; outside a job, same-user processes may
// too). Each husk keeps its copy at an fd above every fd the process will
// have, so the files stage neither reuses nor closes it, until the whole tree
// is built: then release() closes them all, before any process runs. An
// open file description the making process holds itself is lent from the fd
// it has it at (nothing extra held, nothing to close), and a taker places
// what it takes at its own fds.
import { CrestError } from '../sys/errors.js';
import { O, SYS } from '../sys/constants.js';
import type { RestoreContext } from './types.js';
import { NR } from './fds/abi.js';

const F_DUPFD_CLOEXEC = 1030;

/** The key of a memfd (all of them live in one kernel-internal file system: the inode says which). */
export const memfdKey = (ino: number): string => `memfd:${ino}`;
/** The key of shared anonymous memory (same internal file system as memfds). */
export const shmemKey = (ino: number): string => `shmem:${ino}`;
/** The key of a file deleted while open or mapped: its inode and the name it had. */
export const deletedKey = (ino: number, path: string): string => `deleted:${ino}:${path}`;
/** The key of open file description `index` (in `files`) of process `pid` of the image. */
export const descKey = (pid: number, index: number): string => `desc:${pid}:${index}`;

interface Made {
  /** The husk that made it, by its pid in the job (the image's). */
  pid: number;
  fd: number;
  /** Its whole contents were written by an fd kind (a mapping then need not write its pages). */
  filled: boolean;
}

/** The objects of one restore (one per restore, shared by every husk's context). */
export class SharedObjects {
  private readonly made = new Map<string, Made>();
  /** pid in the job -> key -> fd held there. */
  private readonly held = new Map<number, Map<string, number>>();

  /** The husk's fd of object `key`, taken from the husk that made it; undefined when none has. */
  get(ctx: RestoreContext, key: string): number | undefined {
    const mine = this.held.get(ctx.proc.pid)?.get(key);
    if (mine !== undefined) return mine;
    if (!this.made.has(key)) return undefined;
    return this.keep(ctx, key, this.grab(ctx, key));
  }

  /**
   * A new fd of object `key` in the husk, taken from the husk that made it,
   * for the caller to place or close (release() knows nothing of it): an
   * open file description the process holds at an fd of its own. Undefined
   * when no husk made it.
   */
  take(ctx: RestoreContext, key: string): number | undefined {
    return this.made.has(key) ? this.grab(ctx, key) : undefined;
  }

  /** Whether a husk made (or lent) object `key`. */
  has(key: string): boolean {
    return this.made.has(key);
  }

  /**
   * Records husk fd `fd` as object `key`, made here, where it stays open as
   * one of the process's own fds (release() leaves it alone): an open file
   * description the process holds at `fd`, which later husks take from there.
   */
  lend(ctx: RestoreContext, key: string, fd: number): void {
    if (this.made.has(key)) throw new CrestError('INTERNAL', `${key} was made twice`);
    this.made.set(key, { pid: ctx.proc.pid, fd, filled: false });
  }

  /** pidfd_getfd of object `key` from the husk that made it: a new fd in this husk. */
  private grab(ctx: RestoreContext, key: string): number {
    const from = this.made.get(key);
    if (!from) throw new CrestError('INTERNAL', `${key} was taken before any process made it`);
    const t = ctx.thread;
    const pidfd = Number(t.syscall('pidfd_open', `open a pidfd of pid ${from.pid} (which holds ${key})`, NR.pidfd_open, from.pid, 0));
    try {
      return Number(t.syscall('pidfd_getfd', `take ${key} from pid ${from.pid}`, NR.pidfd_getfd, pidfd, from.fd, 0));
    } catch (e) {
      throw new CrestError('RESTORE_SHARED', `process ${ctx.proc.pid} could not take ${key} from process ${from.pid} of the same job: ${(e as Error).message}`, { cause: e });
    } finally {
      t.syscallRaw(SYS.close, pidfd);
    }
  }

  /** Records husk fd `fd` as object `key`, made here; returns the fd it is kept at (`fd` is moved there). */
  put(ctx: RestoreContext, key: string, fd: number): number {
    if (this.made.has(key)) throw new CrestError('INTERNAL', `${key} was made twice`);
    const at = this.keep(ctx, key, fd);
    this.made.set(key, { pid: ctx.proc.pid, fd: at, filled: false });
    return at;
  }

  /** Whether an fd kind wrote the object's whole contents already. */
  filled(key: string): boolean {
    return this.made.get(key)?.filled ?? false;
  }

  markFilled(key: string): void {
    const m = this.made.get(key);
    if (m) m.filled = true;
  }

  /** Closes every object fd the husk holds: the tree is built, nobody will take them any more. */
  release(ctx: RestoreContext): void {
    const mine = this.held.get(ctx.proc.pid);
    if (!mine) return;
    for (const fd of mine.values()) ctx.thread.syscallRaw(SYS.close, fd);
    this.held.delete(ctx.proc.pid);
  }

  private keep(ctx: RestoreContext, key: string, fd: number): number {
    // Above every fd of the image: the files stage places fds below and never closes this one.
    const floor = Math.max(2, ...ctx.proc.fds.map((f) => f.fd)) + 1;
    let at = fd;
    if (fd < floor) {
      at = Number(ctx.thread.syscall('fcntl', `move ${key} out of the way`, SYS.fcntl, fd, F_DUPFD_CLOEXEC, floor));
      ctx.thread.syscallRaw(SYS.close, fd);
    }
    let mine = this.held.get(ctx.proc.pid);
    if (!mine) this.held.set(ctx.proc.pid, (mine = new Map()));
    mine.set(key, at);
    return at;
  }
}

/** open(2) flags for an unnamed file in a directory (O_TMPFILE | O_RDWR | O_CLOEXEC). */
export const TMPFILE_RDWR = 0o20200000 | O.RDWR | O.CLOEXEC;
