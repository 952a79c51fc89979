// Regular files deleted while open (the fd is all that is left of them):
// contents, size, mode, and each description's flags, offset and locks.
// Restore makes an unnamed file (O_TMPFILE) in the directory the file was
// in, when that directory still exists and is writable (checked at the
// checkpoint already), and reopens each description through /proc/self/fd.
// It is a new inode with the same bytes; /proc/self/fd shows it as
// "/dir/#<inode> (deleted)" rather than under its old name. It is one object
// for the whole restored tree and for its shared mappings (kinds/objects.ts).
// Refused: a file that still has other links (its other names are unknown),
// a directory deleted while open.
import { accessSync, constants, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { O } from '../../sys/constants.js';
import { CrestError } from '../../sys/errors.js';
import { NR, O_TMPFILE } from './abi.js';
import { call, raw } from './inject.js';
import { fillContents, reopen, saveContents } from './contents.js';
import { locksOf } from './locks.js';
import { refuseFd, type FdKind, type FdProbe, type ImageOf } from './types.js';
import { deletedKey } from '../objects.js';

type DeletedImage = ImageOf<'deleted'>;
const SUFFIX = ' (deleted)';

function sameInode(p: FdProbe, fds: readonly FdProbe[]): FdProbe[] {
  return fds.filter((x) => x.rep === x.fd && x.st.isFile() && x.st.dev === p.st.dev && x.st.ino === p.st.ino);
}

export const deleted: FdKind<'deleted'> = {
  name: 'deleted',
  match: (p) => p.st.isFile() && p.link.endsWith(SUFFIX) && p.link.startsWith('/'),
  check(p, ctx) {
    const path = p.link.slice(0, -SUFFIX.length);
    const refuse = (why: string): Error => refuseFd(ctx.hostPid, p.fd, 'deleted file', `${path} was deleted while open, and ${why}`);
    if (p.st.nlink > 0) throw refuse(`it still has ${p.st.nlink} other link${p.st.nlink > 1 ? 's' : ''} whose names crest cannot find`);
    const dir = dirname(path);
    try {
      if (!statSync(dir).isDirectory()) throw new Error('not a directory');
      accessSync(dir, constants.W_OK);
    } catch {
      throw refuse(`its directory ${dir} is gone or not writable, so it could not be recreated there at restore`);
    }
  },
  dump(p, ctx, id) {
    const path = p.link.slice(0, -SUFFIX.length);
    const locks = locksOf(p.info, (why) => refuseFd(ctx.hostPid, p.fd, 'deleted file', `${path}: ${why}`));
    const img: DeletedImage = {
      kind: 'deleted',
      id,
      flags: p.info.flags & ~O.CLOEXEC,
      pos: p.info.pos,
      path,
      inode: p.st.ino,
      size: p.st.size,
      mode: p.st.mode & 0o7777,
      ...(locks.length > 0 ? { locks } : {}),
    };
    if (sameInode(p, ctx.fds)[0]!.fd === p.fd) {
      const data = saveContents(p, ctx, `deleted file ${path}`);
      if (data) img.data = data;
    }
    return img;
  },
  preflight(f) {
    const dir = dirname(f.path);
    let ok = false;
    try {
      ok = statSync(dir).isDirectory();
    } catch {
      /* missing */
    }
    if (!ok) throw new CrestError('FILE_MISSING', `the directory ${dir} of deleted file ${f.path} is missing: it cannot be recreated there`);
  },
  restore(f, ctx) {
    const key = `deleted:${f.inode}`;
    const what = `deleted file ${f.path}`;
    let base = ctx.shared.get(key) as number | undefined;
    if (base === undefined) {
      // Made already by a shared mapping of it, or by another process of the tree: the same object.
      const okey = deletedKey(f.inode, f.path);
      base = ctx.objects.get(ctx, okey);
      if (base === undefined) {
        const dir = dirname(f.path);
        const r = raw(ctx, NR.openat, -100, ctx.mem.str(dir), O_TMPFILE | O.RDWR | O.CLOEXEC, f.mode);
        if (r < 0) throw new CrestError('RESTORE_FILE', `cannot recreate ${what} as an unnamed file in ${dir} (O_TMPFILE: errno ${-r})`);
        base = ctx.objects.put(ctx, okey, r);
      }
      ctx.shared.set(key, base);
      if (!ctx.objects.filled(okey)) {
        const withData = ctx.files.find((x): x is DeletedImage => x.kind === 'deleted' && x.inode === f.inode && x.data !== undefined);
        fillContents(ctx, base, withData?.data, f.size, what);
        // open(2) applied the umask: put the exact mode.
        call(ctx, 'fchmod', `give ${what} mode ${f.mode.toString(8)}`, NR.fchmod, base, f.mode);
        ctx.objects.markFilled(okey);
      }
    }
    ctx.mem.reset();
    return reopen(ctx, base, f.flags, f.pos, what);
  },
};
