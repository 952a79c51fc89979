// Where crest's own files are: the package root, the helper binary, and the
// per-user runtime directory that records running jobs.
import { mkdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CrestError } from './sys/errors.js';

/** The package root (dist/src/paths.js -> ../..). */
export const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The helper executable built by `npm ci` (CREST_HELPER overrides, for tests). */
export function helperPath(): string {
  return process.env.CREST_HELPER ?? join(PACKAGE_ROOT, 'helper', 'crest-helper');
}

/**
 * The user's runtime directory for crest (job records): $XDG_RUNTIME_DIR/crest,
 * else /tmp/crest-<uid>. Created 0700 and checked to be ours, so another user
 * cannot plant job records.
 */
export function runtimeDir(): string {
  const uid = process.getuid!();
  const base = process.env.XDG_RUNTIME_DIR ? join(process.env.XDG_RUNTIME_DIR, 'crest') : join(tmpdir(), `crest-${uid}`);
  mkdirSync(join(base, 'jobs'), { recursive: true, mode: 0o700 });
  const st = statSync(base);
  if (st.uid !== uid || (st.mode & 0o077) !== 0) {
    throw new CrestError('RUNTIME_DIR_UNSAFE', `${base} is not owned by you with mode 0700; remove it or set XDG_RUNTIME_DIR`);
  }
  return base;
}
