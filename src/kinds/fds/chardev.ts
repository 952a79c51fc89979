// Character devices reopened by path (/dev/null, /dev/urandom ...).
// Terminals are not: they are the job's streams from outside (stdio.ts) or
// its controlling terminal opened again (tty.ts), matched before this kind.
import { statSync } from 'node:fs';
import { O } from '../../sys/constants.js';
import { CrestError } from '../../sys/errors.js';
import { NR } from './abi.js';
import { call } from './inject.js';
import { refuseFd, type FdKind } from './types.js';

export const chardev: FdKind<'chardev'> = {
  name: 'chardev',
  match: (p) => p.st.isCharacterDevice(),
  check(p, ctx) {
    if (!p.link.startsWith('/dev/')) throw refuseFd(ctx.hostPid, p.fd, 'chardev', `${p.link} is not a device under /dev`);
  },
  dump(p, _ctx, id) {
    return { kind: 'chardev', id, path: p.link, rdev: p.st.rdev, flags: p.info.flags & ~O.CLOEXEC, pos: p.info.pos };
  },
  preflight(f) {
    let st;
    try {
      st = statSync(f.path);
    } catch (e) {
      throw new CrestError('FILE_MISSING', `device ${f.path} is missing: ${(e as Error).message}`, { cause: e });
    }
    if (!st.isCharacterDevice() || st.rdev !== f.rdev) {
      throw new CrestError('FILE_CHANGED', `${f.path} is not the same device it was at checkpoint time`);
    }
  },
  restore(f, ctx) {
    const flags = (f.flags & ~(O.CREAT | O.EXCL | O.TRUNC)) | O.NOCTTY | O.CLOEXEC;
    // No seek: most devices have no offset to speak of (and some refuse lseek).
    return ctx.keep(call(ctx, 'openat', `open ${f.path}`, NR.openat, -100, ctx.mem.str(f.path), flags, 0), f.path);
  },
};
