// File descriptors. Fds that share one open file description (dup, fork)
// are found with kcmp and restored as one open plus dups, so they keep sharing
// offset and status flags. Kinds handled here: regular files and directories
// (reopened by path, checked to be the same file, offset restored), character
// devices reopened by path, and the job's standard streams from outside
// (terminal or pipe), which become the corresponding streams of `crest restore`.
import { readdirSync, readlinkSync, statSync, type Stats } from 'node:fs';
import { native } from '../sys/native.js';
import { readFdinfo } from '../proc/index.js';
import { F, KCMP_FILE, O, SYS } from '../sys/constants.js';
import { CrestError } from '../sys/errors.js';
import type { FdImage, OpenFileImage } from '../image/schema.js';
import { fileIdentity, sameFile } from './fileid.js';
import { unsupported, type DumpContext, type Kind, type RestoreContext } from './types.js';

/** What kind of object an fd's /proc link names, for refusals. */
function objectKind(link: string): string {
  const m = /^(?:anon_inode:\[?([a-z_]+)\]?|([a-z]+):\[\d+\])$/.exec(link);
  if (m) return m[1] ?? m[2] ?? link;
  return link;
}

const TTY_MAJORS = new Set([4, 5, 136, 137, 138, 139, 140, 141, 142, 143]);
const major = (rdev: number): number => (Math.floor(rdev / 256) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);

interface FdProbe {
  fd: number;
  link: string;
  st: Stats;
}

function listFds(pid: number): FdProbe[] {
  const fds = readdirSync(`/proc/${pid}/fd`).map(Number).sort((a, b) => a - b);
  return fds.map((fd) => {
    const link = readlinkSync(`/proc/${pid}/fd/${fd}`);
    return { fd, link, st: statSync(`/proc/${pid}/fd/${fd}`) };
  });
}

/** The init's standard stream that `fd` of the process shares, if any. */
function outsideStream(ctx: Pick<DumpContext, 'hostPid' | 'initHostPid'>, fd: number): 0 | 1 | 2 | null {
  if (ctx.initHostPid === null) return null;
  const n = native();
  for (const s of [0, 1, 2] as const) {
    try {
      if (n.kcmp(ctx.hostPid, ctx.initHostPid, KCMP_FILE, fd, s) === 0) return s;
    } catch {
      /* init has no such fd */
    }
  }
  return null;
}

/** Refuses an fd this kind cannot restore. */
function checkFd(ctx: Pick<DumpContext, 'hostPid' | 'initHostPid'>, p: FdProbe): void {
  const { st, link, fd } = p;
  if (st.isFile() || st.isDirectory()) {
    if (link.endsWith(' (deleted)')) throw unsupported(ctx.hostPid, `fd ${fd}`, `file ${link} was deleted (not supported yet)`);
    if (!link.startsWith('/')) throw unsupported(ctx.hostPid, `fd ${fd}`, `${link} is not reachable by path`);
    return;
  }
  if (outsideStream(ctx, fd) !== null) return;
  if (st.isCharacterDevice() && link.startsWith('/dev/') && !TTY_MAJORS.has(major(st.rdev))) return;
  const what = st.isCharacterDevice() ? 'terminal' : objectKind(link);
  throw unsupported(ctx.hostPid, `fd ${fd}`, `${what} (${link}) is not supported yet`);
}

export const files: Kind = {
  name: 'files',
  check(ctx) {
    for (const p of listFds(ctx.hostPid)) checkFd(ctx, p);
  },
  dump(ctx) {
    const pid = ctx.hostPid;
    const n = native();
    const openFiles: OpenFileImage[] = [];
    const fds: FdImage[] = [];
    // Representative fd of each open file found so far, to group dups.
    const reps: { fd: number; dev: number; ino: number; index: number }[] = [];
    for (const p of listFds(pid)) {
      checkFd(ctx, p);
      const info = readFdinfo(pid, p.fd);
      const cloexec = (info.flags & O.CLOEXEC) !== 0;
      const same = reps.find((r) => r.dev === p.st.dev && r.ino === p.st.ino && n.kcmp(pid, pid, KCMP_FILE, r.fd, p.fd) === 0);
      if (same) {
        fds.push({ fd: p.fd, file: same.index, cloexec });
        continue;
      }
      const id = openFiles.length;
      const flags = info.flags & ~O.CLOEXEC;
      let of: OpenFileImage;
      const stream = p.st.isFile() || p.st.isDirectory() ? null : outsideStream(ctx, p.fd);
      if (stream !== null) {
        of = { kind: 'stdio', id, stream, was: p.link };
      } else if (p.st.isFile() || p.st.isDirectory()) {
        of = { kind: 'file', id, file: fileIdentity(p.link, `/proc/${pid}/fd/${p.fd}`), flags, pos: info.pos };
      } else {
        of = { kind: 'chardev', id, path: p.link, rdev: p.st.rdev, flags, pos: info.pos };
      }
      openFiles.push(of);
      reps.push({ fd: p.fd, dev: p.st.dev, ino: p.st.ino, index: id });
      fds.push({ fd: p.fd, file: id, cloexec });
    }
    ctx.proc.files = openFiles;
    ctx.proc.fds = fds;
  },
  restore(ctx) {
    restoreFds(ctx);
  },
};

/** Checks before any process exists that every file to reopen is still the one the process had. */
export function preflightFiles(proc: RestoreContext['proc']): void {
  for (const f of proc.files) {
    if (f.kind === 'file') {
      let st;
      try {
        st = statSync(f.file.path);
      } catch (e) {
        throw new CrestError('FILE_MISSING', `open file ${f.file.path} is missing: ${(e as Error).message}`, { cause: e });
      }
      if (!sameFile(f.file, st)) {
        throw new CrestError('FILE_CHANGED', `open file ${f.file.path} is not the file the process had (replaced since the checkpoint)`);
      }
    } else if (f.kind === 'chardev') {
      const st = statSync(f.path);
      if (!st.isCharacterDevice() || st.rdev !== f.rdev) {
        throw new CrestError('FILE_CHANGED', `${f.path} is not the same device it was at checkpoint time`);
      }
    }
  }
}

/**
 * Opens every file in the husk at a high fd, then dups each into its place.
 * Going through high fds first means no target number is taken before its
 * turn, whatever the order; the husk's own stdio (from `crest restore`) is
 * parked the same way before fds 0-2 are reused.
 */
function restoreFds(ctx: RestoreContext): void {
  const t = ctx.thread;
  const maxFd = Math.max(2, ...ctx.proc.fds.map((f) => f.fd));
  const base = maxFd + 1;
  const high: number[] = [];
  const dupHigh = (fd: number, what: string): number => {
    const h = Number(t.syscall('fcntl', `move ${what} out of the way`, SYS.fcntl, fd, F.DUPFD_CLOEXEC, base));
    high.push(h);
    return h;
  };
  const std: (number | null)[] = [0, 1, 2].map((s) => {
    const r = t.syscallRaw(SYS.fcntl, s, F.DUPFD_CLOEXEC, base);
    if (r < 0n) return null;
    high.push(Number(r));
    return Number(r);
  });
  const opened = new Map<number, number>();
  for (const f of ctx.proc.files) {
    ctx.mem.reset();
    if (f.kind === 'stdio') {
      let h = std[f.stream] ?? null;
      if (h === null) {
        const tmp = Number(t.syscall('openat', 'open /dev/null for a closed stream', SYS.openat, -100, ctx.mem.str('/dev/null'), O.RDWR, 0));
        h = dupHigh(tmp, '/dev/null');
        t.syscall('close', 'close temporary fd', SYS.close, tmp);
      }
      opened.set(f.id, h);
      continue;
    }
    const path = f.kind === 'file' ? f.file.path : f.path;
    const flags = (f.flags & ~(O.CREAT | O.EXCL | O.TRUNC)) | O.NOCTTY;
    const tmp = Number(t.syscall('openat', `open ${path}`, SYS.openat, -100, ctx.mem.str(path), flags, 0));
    const h = dupHigh(tmp, path);
    t.syscall('close', 'close temporary fd', SYS.close, tmp);
    if (f.kind === 'file') {
      const st = statSync(`/proc/${ctx.huskHostPid}/fd/${h}`);
      if (!sameFile(f.file, st)) {
        throw new CrestError('FILE_CHANGED', `open file ${path} changed while restoring`);
      }
      if (f.pos > 0) t.syscall('lseek', `seek ${path} to ${f.pos}`, SYS.lseek, h, f.pos, 0);
    }
    opened.set(f.id, h);
  }
  const targets = new Set(ctx.proc.fds.map((f) => f.fd));
  for (const s of [0, 1, 2]) if (!targets.has(s)) t.syscallRaw(SYS.close, s);
  for (const f of ctx.proc.fds) {
    const src = opened.get(f.file)!;
    t.syscall('dup3', `place fd ${f.fd}`, SYS.dup3, src, f.fd, f.cloexec ? O.CLOEXEC : 0);
  }
  for (const h of high) t.syscallRaw(SYS.close, h);
}
