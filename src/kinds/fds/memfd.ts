// memfd (memfd_create): name, contents, size, seals, mode, and each
// description's flags and offset. The contents go into the image's data
// file; restore makes a new memfd of that name, writes them back, and adds
// the seals once every description is open (F_SEAL_WRITE would forbid opening
// a writable one). A memfd is one object for the whole restored tree and for
// its mappings (the memory kind maps the same one: kinds/objects.ts), made
// and filled once; hugetlb memfds are refused.
import { O } from '../../sys/constants.js';
import { CrestError } from '../../sys/errors.js';
import { FCNTL, MFD_ALLOW_SEALING, MFD_CLOEXEC, NR } from './abi.js';
import { call } from './inject.js';
import { fillContents, reopen, saveContents } from './contents.js';
import { refuseFd, type FdKind, type FdProbe, type ImageOf } from './types.js';
import { memfdKey } from '../objects.js';

type MemfdImage = ImageOf<'memfd'>;
const PREFIX = '/memfd:';
const SUFFIX = ' (deleted)';

/** The descriptions of the memfd `p` belongs to, in fd order. */
function sameInode(p: FdProbe, fds: readonly FdProbe[]): FdProbe[] {
  return fds.filter((x) => x.rep === x.fd && x.st.isFile() && x.st.dev === p.st.dev && x.st.ino === p.st.ino);
}

export const memfd: FdKind<'memfd'> = {
  name: 'memfd',
  match: (p) => p.st.isFile() && p.st.nlink === 0 && p.link.startsWith(PREFIX) && p.link.endsWith(SUFFIX),
  check(p, ctx) {
    if (p.st.blksize > 4096) throw refuseFd(ctx.hostPid, p.fd, 'memfd', `${p.link} lives in huge pages (MFD_HUGETLB), which is not supported yet`);
  },
  inject(p, ctx) {
    return call(ctx, 'fcntl', `read the seals of ${p.link}`, NR.fcntl, p.fd, FCNTL.GET_SEALS, 0);
  },
  dump(p, ctx, id, injected) {
    const first = sameInode(p, ctx.fds)[0]!.fd === p.fd;
    const name = p.link.slice(PREFIX.length, -SUFFIX.length);
    const img: MemfdImage = {
      kind: 'memfd',
      id,
      flags: p.info.flags & ~O.CLOEXEC,
      pos: p.info.pos,
      name,
      inode: p.st.ino,
      size: p.st.size,
      seals: injected as number,
      mode: p.st.mode & 0o7777,
    };
    if (first) {
      const data = saveContents(p, ctx, `memfd ${name}`);
      if (data) img.data = data;
    }
    return img;
  },
  preflight(f) {
    if (Buffer.byteLength(f.name) > 249) throw new CrestError('IMAGE_INVALID', `memfd name ${JSON.stringify(f.name)} is longer than memfd_create allows`);
  },
  restore(f, ctx) {
    const key = `memfd:${f.inode}`;
    const what = `memfd ${f.name}`;
    let base = ctx.shared.get(key) as number | undefined;
    if (base === undefined) {
      // Made already by a mapping of it, or by another process of the tree: the same object.
      const okey = memfdKey(f.inode);
      base = ctx.objects.get(ctx, okey);
      if (base === undefined) {
        base = ctx.objects.put(ctx, okey, call(ctx, 'memfd_create', `create ${what}`, NR.memfd_create, ctx.mem.str(f.name), MFD_CLOEXEC | MFD_ALLOW_SEALING));
      }
      ctx.shared.set(key, base);
      if (!ctx.objects.filled(okey)) {
        const withData = ctx.files.find((x): x is MemfdImage => x.kind === 'memfd' && x.inode === f.inode && x.data !== undefined);
        fillContents(ctx, base, withData?.data, f.size, what);
        if ((f.mode & 0o7777) !== 0o777) call(ctx, 'fchmod', `give ${what} mode ${f.mode.toString(8)}`, NR.fchmod, base, f.mode);
        ctx.objects.markFilled(okey);
      }
    }
    ctx.mem.reset();
    return reopen(ctx, base, f.flags, f.pos, what);
  },
  afterPlaced(f, ctx, fdOf) {
    // Seals last, once, on the first description of the memfd.
    const first = ctx.files.find((x) => x.kind === 'memfd' && x.inode === f.inode);
    if (first !== f || f.seals === 0) return;
    // Another process of the tree may have sealed the same memfd already (and F_SEAL_SEAL forbids adding any more).
    const fd = fdOf(ctx.files.indexOf(f));
    const have = call(ctx, 'fcntl', `read the seals of memfd ${f.name}`, NR.fcntl, fd, FCNTL.GET_SEALS, 0);
    if ((have & f.seals) === f.seals) return;
    call(ctx, 'fcntl', `seal memfd ${f.name} (0x${f.seals.toString(16)})`, NR.fcntl, fd, FCNTL.ADD_SEALS, f.seals & ~have);
  },
};
