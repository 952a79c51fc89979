// File locks held through an open file description, as its fdinfo lists them
// ("lock:\t1: POSIX  ADVISORY  WRITE 1234 fe:00:5678 10 14"): POSIX record
// locks of the process taken through this description, and flock/OFD locks
// of the description itself. Re-acquired at restore with the same type and
// range, without waiting: a lock someone else took meanwhile fails the restore.
// They are taken last of all, once the whole tree is built and the restore
// closes no more fds in the process (closing any fd of a file would drop the
// process's POSIX locks on it): files.ts restoreFileLocks.
import type { FdInfo } from '../../proc/index.js';
import type { ImageOf } from './types.js';
import { F_RDLCK, F_WRLCK, FCNTL, LOCK_EX, LOCK_NB, LOCK_SH, NR } from './abi.js';
import { call, type Injector } from './inject.js';
import { CrestError } from '../../sys/errors.js';

export type FileLock = NonNullable<ImageOf<'file'>['locks']>[number];

/** One parsed lock line, or the reason it cannot be restored. */
export function parseLockLine(line: string): FileLock | { why: string } | null {
  const f = line.trim().split(/\s+/);
  // f[0] "1:"; a waiter ("1: -> POSIX ...") is a blocked request, not a lock held.
  if (f[1] === '->') return null;
  const [, type, mode, access, , , start, end] = f;
  if (type === 'LEASE' || type === 'DELEG') return { why: `a ${type === 'LEASE' ? 'lease' : 'delegation'} (${line.trim()}) cannot be re-acquired` };
  if (mode !== 'ADVISORY') return { why: `a ${mode?.toLowerCase()} lock (${line.trim()}) is not supported` };
  const kind = type === 'POSIX' ? 'posix' : type === 'OFDLCK' ? 'ofd' : type === 'FLOCK' ? 'flock' : null;
  if (kind === null || (access !== 'READ' && access !== 'WRITE') || start === undefined || end === undefined) {
    return { why: `unrecognised lock line "${line.trim()}"` };
  }
  return { kind, write: access === 'WRITE', start: Number(start), end: end === 'EOF' ? null : Number(end) };
}

/** The locks an fdinfo lists; throws (via `refuse`) on one that cannot be restored. */
export function locksOf(info: FdInfo, refuse: (why: string) => Error): FileLock[] {
  const out: FileLock[] = [];
  for (const l of info.lines) {
    if (!l.startsWith('lock:')) continue;
    const r = parseLockLine(l.slice(5));
    if (r === null) continue;
    if ('why' in r) throw refuse(r.why);
    out.push(r);
  }
  return out;
}

/** Takes every lock again on husk fd `fd` (non-blocking). */
export function restoreLocks(locks: readonly FileLock[], fd: number, what: string, ctx: Injector): void {
  for (const l of locks) {
    ctx.mem.reset();
    const range = `${l.start}-${l.end ?? 'EOF'}`;
    try {
      if (l.kind === 'flock') {
        call(ctx, 'flock', `lock ${what} (${l.write ? 'exclusive' : 'shared'})`, NR.flock, fd, (l.write ? LOCK_EX : LOCK_SH) | LOCK_NB);
        continue;
      }
      // struct flock: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid.
      const b = Buffer.alloc(32);
      b.writeInt16LE(l.write ? F_WRLCK : F_RDLCK, 0);
      b.writeInt16LE(0, 2);
      b.writeBigInt64LE(BigInt(l.start), 8);
      b.writeBigInt64LE(l.end === null ? 0n : BigInt(l.end - l.start + 1), 16);
      const cmd = l.kind === 'ofd' ? FCNTL.OFD_SETLK : FCNTL.SETLK;
      call(ctx, 'fcntl', `lock ${what} bytes ${range} (${l.kind} ${l.write ? 'write' : 'read'})`, NR.fcntl, fd, cmd, ctx.mem.put(b));
    } catch (e) {
      throw new CrestError(
        'LOCK_TAKEN',
        `cannot take the ${l.kind} ${l.write ? 'write' : 'read'} lock on ${what} (bytes ${range}) again: ${(e as Error).message}; another process holds a conflicting lock`,
        { cause: e },
      );
    }
  }
}
