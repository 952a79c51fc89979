// Regular files and directories reachable by path: reopened by path at
// restore (checked to be the same file), offset and status flags kept, locks
// taken again.
import { statSync } from 'node:fs';
import { O } from '../../sys/constants.js';
import { CrestError } from '../../sys/errors.js';
import { fileIdentity, sameFile } from '../fileid.js';
import { locksOf } from './locks.js';
import { NR } from './abi.js';
import { call } from './inject.js';
import { refuseFd, type FdKind } from './types.js';

export const file: FdKind<'file'> = {
  name: 'file',
  match: (p) => (p.st.isFile() || p.st.isDirectory()) && !p.link.endsWith(' (deleted)'),
  check(p, ctx) {
    if (!p.link.startsWith('/')) throw refuseFd(ctx.hostPid, p.fd, 'file', `${p.link} is not reachable by path`);
  },
  dump(p, ctx, id) {
    const locks = locksOf(p.info, (why) => refuseFd(ctx.hostPid, p.fd, 'file', `${p.link}: ${why}`));
    return {
      kind: 'file',
      id,
      file: fileIdentity(p.link, `/proc/${ctx.hostPid}/fd/${p.fd}`),
      flags: p.info.flags & ~O.CLOEXEC,
      pos: p.info.pos,
      ...(locks.length > 0 ? { locks } : {}),
    };
  },
  preflight(f) {
    let st;
    try {
      st = statSync(f.file.path);
    } catch (e) {
      throw new CrestError('FILE_MISSING', `open file ${f.file.path} is missing: ${(e as Error).message}`, { cause: e });
    }
    if (!sameFile(f.file, st)) {
      throw new CrestError('FILE_CHANGED', `open file ${f.file.path} is not the file the process had (replaced since the checkpoint)`);
    }
  },
  restore(f, ctx) {
    const path = f.file.path;
    const flags = (f.flags & ~(O.CREAT | O.EXCL | O.TRUNC)) | O.NOCTTY | O.CLOEXEC;
    const fd = ctx.keep(call(ctx, 'openat', `open ${path}`, NR.openat, -100, ctx.mem.str(path), flags, 0), path);
    const st = statSync(`/proc/${ctx.huskHostPid}/fd/${fd}`);
    if (!sameFile(f.file, st)) throw new CrestError('FILE_CHANGED', `open file ${path} changed while restoring`);
    if (f.pos > 0) call(ctx, 'lseek', `seek ${path} to ${f.pos}`, NR.lseek, fd, f.pos, 0);
    return fd;
  },
};
