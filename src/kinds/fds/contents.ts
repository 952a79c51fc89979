// Files that exist only while open (memfds, files deleted while open): their
// bytes are copied into the image, read by crest through /proc/PID/fd/N (a
// new open of the same inode: the process's own offset is not touched), and
// rebuilt at restore as a new unnamed file whose descriptions are reopened
// through /proc/self/fd, each with its own flags and offset.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { O } from '../../sys/constants.js';
import { CrestError } from '../../sys/errors.js';
import type { DataRef } from '../../image/schema.js';
import { NR } from './abi.js';
import { call } from './inject.js';
import type { FdDumpContext, FdProbe, FdRestoreContext } from './types.js';

const CHUNK = 1 << 20;

/** Copies the whole file behind fd `p` into the image's data file; undefined when it is empty. */
export function saveContents(p: FdProbe, ctx: FdDumpContext, what: string): DataRef | undefined {
  const path = `/proc/${ctx.hostPid}/fd/${p.fd}`;
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new CrestError('FILE_READ', `cannot read ${what} through ${path} to save it: ${(e as Error).message}`, { cause: e });
  }
  try {
    const size = fstatSync(fd).size;
    if (size === 0) return undefined;
    const buf = Buffer.alloc(Math.min(CHUNK, size));
    let first: DataRef | undefined;
    for (let pos = 0; pos < size; ) {
      const n = readSync(fd, buf, 0, Math.min(buf.length, size - pos), pos);
      if (n === 0) throw new CrestError('FILE_READ', `${what} shrank while being saved (${pos} of ${size} bytes)`);
      const ref = ctx.putData(Buffer.from(buf.subarray(0, n)));
      first ??= ref;
      pos += n;
    }
    return { ...first!, length: size };
  } finally {
    closeSync(fd);
  }
}

/** Writes `data` (if any) into husk fd `fd` from offset 0 and sets the size to `size`. */
export function fillContents(ctx: FdRestoreContext, fd: number, data: DataRef | undefined, size: number, what: string): void {
  if (data) {
    const at = ctx.dataAt(data);
    for (let off = 0; off < data.length; ) {
      const n = call(ctx, 'pwrite64', `write the contents of ${what}`, NR.pwrite64, fd, at + off, data.length - off, off);
      if (n === 0) throw new CrestError('RESTORE_FILE', `writing ${what} made no progress at ${off} bytes`);
      off += n;
    }
  }
  call(ctx, 'ftruncate', `size ${what} to ${size} bytes`, NR.ftruncate, fd, size);
}

/** Opens another description of the file at husk fd `fd` through /proc/self/fd, with `flags`, at `pos`. */
export function reopen(ctx: FdRestoreContext, fd: number, flags: number, pos: number, what: string): number {
  const via = `/proc/self/fd/${fd}`;
  const open = (flags & ~(O.CREAT | O.EXCL | O.TRUNC)) | O.CLOEXEC;
  const h = call(ctx, 'openat', `open ${what} again through ${via}`, NR.openat, -100, ctx.mem.str(via), open, 0);
  if (pos > 0) call(ctx, 'lseek', `seek ${what} to ${pos}`, NR.lseek, h, pos, 0);
  return h;
}
