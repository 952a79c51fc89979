// The identity of a file: enough to tell at restore that a path still names
// the file the process had (same inode on the same device), or a faithful copy
// of it (same size and modification time, e.g. after rsync -t to another host).
import { statSync } from 'node:fs';
import type { FileIdentity } from '../image/schema.js';
import { CrestError } from '../sys/errors.js';

/** Identity of the file `path` as seen through `statPath` (a /proc magic link, or the path itself). */
export function fileIdentity(path: string, statPath = path): FileIdentity {
  const st = statSync(statPath);
  return { path, dev: st.dev, ino: st.ino, size: st.size, mtimeMs: st.mtimeMs };
}

/** How a file found at restore relates to the recorded one. */
export function sameFile(rec: FileIdentity, st: { dev: number; ino: number; size: number; mtimeMs: number }): boolean {
  if (st.dev === rec.dev && st.ino === rec.ino) return true;
  return st.size === rec.size && st.mtimeMs === rec.mtimeMs;
}

/** Checks that `rec.path` still names the recorded file; throws FILE_CHANGED/FILE_MISSING naming it. */
export function verifyFile(rec: FileIdentity, what: string): void {
  let st;
  try {
    st = statSync(rec.path);
  } catch (e) {
    throw new CrestError('FILE_MISSING', `${what} ${rec.path} is missing: ${(e as Error).message}`, { cause: e });
  }
  if (!sameFile(rec, st)) {
    throw new CrestError(
      'FILE_CHANGED',
      `${what} ${rec.path} is not the file the process had (it was replaced, or changed without keeping its size and time)`,
    );
  }
}
