// inotify: its watches (fdinfo: wd, inode, device, mask). The kernel does
// not say which path a watch was made on, and the file handle it does show
// needs CAP_DAC_READ_SEARCH to open; so crest looks for the watched inode
// where a process usually finds its files: its working directory, the
// directories of its open and mapped files and of the absolute paths among its
// arguments, their parents and their entries. A watch whose inode is not found
// there is refused, saying so. Events already queued are refused too (they
// cannot be read without consuming them).
//
// Restore: inotify_init1, then each watch added in wd order on its path; wd
// numbers are handed out one after the other, so gaps (watches removed since)
// are recreated by adding and removing a watch on a spare path, and the
// IN_IGNORED events that leaves are read away before the process runs. Not
// kept: the next wd after a removed highest one (the restored instance
// continues right after the highest live wd).
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { O } from '../../sys/constants.js';
import { CrestError } from '../../sys/errors.js';
import { readMaps } from '../../proc/index.js';
import { IOCTL, NR } from './abi.js';
import { kdevToStatDev, parseInotify } from './fdinfo.js';
import { call, ioctlInt, raw } from './inject.js';
import { devMajor, devMinor, refuseFd, type FdCheckContext, type FdKind, type FdProbe, type ImageOf } from './types.js';

type Watch = ImageOf<'inotify'>['watches'][number];
const IN_DONT_FOLLOW = 0x02000000;
const IN_MASK_CREATE = 0x10000000;
const IN_ACCESS = 0x1;
const EAGAIN = 11;

/** Where to look for watched inodes: absolute directories the process has to do with. */
function seeds(ctx: FdCheckContext): string[] {
  const out = new Set<string>();
  const add = (p: string): void => {
    if (!p.startsWith('/')) return;
    const clean = p.replace(/ \(deleted\)$/, '');
    out.add(clean);
    out.add(dirname(clean));
  };
  try {
    add(readlinkSync(`/proc/${ctx.hostPid}/cwd`));
  } catch {
    /* gone */
  }
  for (const p of ctx.fds) add(p.link);
  try {
    for (const m of readMaps(ctx.hostPid)) if (m.path.startsWith('/')) add(m.path);
  } catch {
    /* gone */
  }
  try {
    for (const a of readFileSync(`/proc/${ctx.hostPid}/cmdline`, 'utf8').split('\0')) add(a);
  } catch {
    /* gone */
  }
  return [...out];
}

/** Paths (lstat'ed) of the given inodes among the seeds, their ancestors and their entries. */
export function findInodes(want: readonly { dev: number; ino: number }[], from: readonly string[]): Map<string, string> {
  const key = (dev: number, ino: number): string => `${dev}:${ino}`;
  const missing = new Set(want.map((w) => key(w.dev, w.ino)));
  const found = new Map<string, string>();
  const seen = new Set<string>();
  const look = (p: string): void => {
    if (seen.has(p) || missing.size === 0) return;
    seen.add(p);
    try {
      const st = lstatSync(p);
      const k = key(st.dev, st.ino);
      if (missing.has(k)) {
        found.set(k, p);
        missing.delete(k);
      }
    } catch {
      /* vanished or unreadable */
    }
  };
  const dirs = new Set<string>();
  for (const s of from) {
    for (let d = s; ; d = dirname(d)) {
      dirs.add(d);
      if (d === '/') break;
    }
  }
  for (const d of dirs) look(d);
  for (const d of from) {
    if (missing.size === 0) break;
    let names: string[] = [];
    try {
      names = readdirSync(d);
    } catch {
      continue;
    }
    for (const n of names.slice(0, 10000)) look(join(d, n));
  }
  return found;
}

/** The watches of `p` with the path of each, or the refusal naming the first one not found. */
function watchesOf(p: FdProbe, ctx: FdCheckContext): Watch[] {
  const ws = parseInotify(p.info).map((w) => ({ ...w, dev: kdevToStatDev(w.sdev) }));
  const found = findInodes(ws, seeds(ctx));
  return ws
    .map((w) => {
      const path = found.get(`${w.dev}:${w.ino}`);
      if (path === undefined) {
        throw refuseFd(
          ctx.hostPid,
          p.fd,
          'inotify',
          `watch ${w.wd} is on inode ${w.ino} of device ${devMajor(w.dev)}:${devMinor(w.dev)}, and the kernel does not say its path (crest looked in the working directory, the directories of the open and mapped files and of the arguments, without finding it)`,
        );
      }
      if (w.ignoredMask !== 0) throw refuseFd(ctx.hostPid, p.fd, 'inotify', `watch ${w.wd} has an ignored mask, which inotify does not set`);
      return { wd: w.wd, path, dev: w.dev, ino: w.ino, mask: w.mask };
    })
    .sort((a, b) => a.wd - b.wd);
}

export const inotify: FdKind<'inotify'> = {
  name: 'inotify',
  match: (p) => p.link === 'anon_inode:inotify',
  check(p, ctx) {
    watchesOf(p, ctx);
  },
  inject(p, ctx) {
    const queued = ioctlInt(ctx, p.fd, IOCTL.FIONREAD, 'count the queued inotify events');
    if (queued > 0) {
      throw refuseFd(ctx.hostPid, p.fd, 'inotify', `${queued} bytes of events are queued, and they cannot be read without taking them from the process`);
    }
    return watchesOf(p, ctx);
  },
  dump(p, _ctx, id, injected) {
    return { kind: 'inotify', id, flags: p.info.flags & ~O.CLOEXEC, watches: injected as Watch[] };
  },
  preflight(f) {
    for (const w of f.watches) {
      let st;
      try {
        st = lstatSync(w.path);
      } catch (e) {
        throw new CrestError('FILE_MISSING', `inotify watch ${w.wd}: ${w.path} is missing: ${(e as Error).message}`, { cause: e });
      }
      if (st.dev !== w.dev || st.ino !== w.ino) throw new CrestError('FILE_CHANGED', `inotify watch ${w.wd}: ${w.path} is not the file that was watched (replaced since)`);
    }
  },
  restore(f, ctx) {
    const fd = call(ctx, 'inotify_init1', 'create an inotify instance', NR.inotify_init1, O.CLOEXEC | O.NONBLOCK);
    const spares = ['/', '/dev', '/tmp', '/proc', '/sys', resolve(ctx.dir)];
    let next = 1;
    let burnt = false;
    for (const w of f.watches) {
      while (next < w.wd) {
        // Use up wd `next`: a watch on a spare path nobody here watches (IN_MASK_CREATE refuses one that is), removed at once.
        let got = -1;
        for (const s of spares) {
          ctx.mem.reset();
          got = raw(ctx, NR.inotify_add_watch, fd, ctx.mem.str(s), IN_ACCESS | IN_MASK_CREATE);
          if (got >= 0) break;
        }
        if (got !== next) throw new CrestError('RESTORE_MISMATCH', `inotify: could not use up watch descriptor ${next} (got ${got})`);
        call(ctx, 'inotify_rm_watch', `remove spare watch ${got}`, NR.inotify_rm_watch, fd, got);
        burnt = true;
        next++;
      }
      ctx.mem.reset();
      const symlink = lstatSync(w.path).isSymbolicLink();
      const wd = call(ctx, 'inotify_add_watch', `watch ${w.path}`, NR.inotify_add_watch, fd, ctx.mem.str(w.path), w.mask | (symlink ? IN_DONT_FOLLOW : 0));
      if (wd !== w.wd) throw new CrestError('RESTORE_MISMATCH', `inotify: the watch on ${w.path} came back as ${wd}, not ${w.wd}`);
      next = wd + 1;
    }
    if (burnt) {
      // The spare watches' IN_IGNORED events (and whatever the watched files saw meanwhile, as if before the watches existed).
      ctx.mem.reset();
      const buf = ctx.mem.alloc(4096);
      for (;;) {
        const n = raw(ctx, NR.read, fd, buf, 4096);
        if (n === -EAGAIN || n <= 0) break;
      }
    }
    return fd;
  },
};

