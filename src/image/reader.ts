// Loads an image defensively, cheapest and most telling checks first: the
// directory, the manifest's presence (the commit marker), its size, JSON,
// identity and version, checksum, schema, semantics, and last the data
// files' sizes and checksums. Every refusal is a CrestError with a stable
// code and a message that names the file and says what to do.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { crc32 } from 'node:zlib';
import { CrestError } from '../sys/errors.js';
import { CanonicalError, crc32Hex, manifestChecksum } from './canonical.js';
import { FORMAT_VERSION, IMAGE_MAGIC, MANIFEST_NAME, READABLE_VERSIONS, type Manifest, type ProcessImage, type VmaImage } from './schema.js';
import { checkSchema, checkSemantics, isLeftoverName, PAGE_SIZE } from './validate.js';

/** The largest manifest the reader will read (checked before reading it). */
export const MAX_MANIFEST_SIZE = 256 * 1024 * 1024;
/** Data files are checksummed in chunks of this size through one reused buffer. */
const CHUNK_SIZE = 8 * 1024 * 1024;

/** Every code readImage can throw, for callers that map them (the CLI's exit codes). */
export const IMAGE_ERROR_CODES = [
  'IMAGE_NOT_FOUND',
  'IMAGE_DIR_INVALID',
  'IMAGE_READ',
  'IMAGE_INCOMPLETE',
  'IMAGE_NOT_AN_IMAGE',
  'IMAGE_CORRUPT',
  'IMAGE_TOO_NEW',
  'IMAGE_UNSUPPORTED_VERSION',
  'IMAGE_CHECKSUM',
  'IMAGE_INVALID',
  'IMAGE_TRUNCATED',
] as const;
export type ImageErrorCode = (typeof IMAGE_ERROR_CODES)[number];

function fail(code: ImageErrorCode, message: string, cause?: unknown): never {
  throw new CrestError(code, message, cause === undefined ? undefined : { cause });
}

function errCode(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | null)?.code;
}

function readError(e: unknown, file: string): never {
  fail('IMAGE_READ', `cannot read ${file}: ${e instanceof Error ? e.message : String(e)}`, e);
}

/** Options of readImage. */
export interface ReadImageOptions {
  /** Check every data file's CRC-32 (reads all of them); default true. Sizes are always checked. */
  verifyData?: boolean;
  /**
   * Data files whose checksum the caller verifies itself while it streams
   * them (restore checks the pages files as it loads them, so the file is
   * read once); every other file is still verified here.
   */
  verifiedByCaller?: (name: string) => boolean;
}

/**
 * Reads and checks the image in `dir`; returns its manifest only if the
 * image is complete and consistent. Throws CrestError with one of
 * IMAGE_ERROR_CODES otherwise (see docs/image-format.md for the order).
 */
export function readImage(dir: string, opts: ReadImageOptions = {}): Manifest {
  const verifyData = opts.verifyData ?? true;

  // 1. The directory.
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (e) {
    if (errCode(e) === 'ENOENT' || errCode(e) === 'ENOTDIR') {
      fail('IMAGE_NOT_FOUND', `${dir} does not exist; give the directory a checkpoint was written to`, e);
    }
    readError(e, dir);
  }
  if (!st.isDirectory()) fail('IMAGE_DIR_INVALID', `${dir} is not a directory; an image is a directory holding ${MANIFEST_NAME}`);

  // 2. The commit marker.
  const manifestPath = path.join(dir, MANIFEST_NAME);
  let fd: number;
  try {
    fd = fs.openSync(manifestPath, fs.constants.O_RDONLY);
  } catch (e) {
    if (errCode(e) !== 'ENOENT') readError(e, manifestPath);
    let entries: string[] = [];
    try {
      entries = fs.readdirSync(dir);
    } catch (e2) {
      readError(e2, dir);
    }
    const leftovers = entries.filter(isLeftoverName);
    if (leftovers.length > 0) {
      fail(
        'IMAGE_INCOMPLETE',
        `${dir} holds no complete image: a checkpoint was started here but never completed ` +
          `(crest was interrupted or the disk filled; found ${leftovers.slice(0, 3).join(', ')}${leftovers.length > 3 ? ', ...' : ''} ` +
          `but no ${MANIFEST_NAME}); take the checkpoint again`,
      );
    }
    fail('IMAGE_NOT_AN_IMAGE', `${dir} is not a checkpoint image (it has no ${MANIFEST_NAME}); check the directory name`);
  }

  // 3. Size cap, then JSON.
  let text: string;
  try {
    const mst = fs.fstatSync(fd);
    if (!mst.isFile()) fail('IMAGE_INVALID', `${manifestPath} is not a regular file`);
    if (mst.size > MAX_MANIFEST_SIZE) {
      fail('IMAGE_INVALID', `${manifestPath} is ${mst.size} bytes, more than the ${MAX_MANIFEST_SIZE} a manifest may have; it is not a manifest crest wrote`);
    }
    const buf = Buffer.allocUnsafe(mst.size);
    let got = 0;
    while (got < buf.length) {
      const n = fs.readSync(fd, buf, got, buf.length - got, got);
      if (n === 0) break;
      got += n;
    }
    text = new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(0, got));
  } catch (e) {
    if (e instanceof CrestError) throw e;
    if (e instanceof TypeError) fail('IMAGE_CORRUPT', `${manifestPath} is not valid UTF-8: the image is damaged; take a new checkpoint`, e);
    readError(e, manifestPath);
  } finally {
    fs.closeSync(fd);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    fail('IMAGE_CORRUPT', `${manifestPath} is not valid JSON (${(e as Error).message}): the image is damaged; take a new checkpoint`, e);
  }

  // 4. Identity and version, before anything that depends on the format.
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed) || (parsed as { magic?: unknown }).magic !== IMAGE_MAGIC) {
    fail('IMAGE_NOT_AN_IMAGE', `${manifestPath} is not a crest manifest (its "magic" is not "${IMAGE_MAGIC}")`);
  }
  const obj = parsed as Record<string, unknown>;
  const version = obj.formatVersion;
  if (typeof version === 'number' && version > FORMAT_VERSION) {
    fail('IMAGE_TOO_NEW', `${dir}: image format version ${version} is newer than this crest understands (${FORMAT_VERSION}); upgrade crest`);
  }
  if (typeof version !== 'number' || !READABLE_VERSIONS.includes(version)) {
    fail('IMAGE_UNSUPPORTED_VERSION', `${dir}: image format version ${JSON.stringify(version)} is not supported by this crest (it reads versions ${READABLE_VERSIONS.join(' and ')})`);
  }

  // 5. Checksum over the canonical form, then the schema.
  const recorded = obj.checksum;
  if (typeof recorded !== 'string' || !/^[0-9a-f]{8}$/.test(recorded)) {
    fail('IMAGE_INVALID', `${manifestPath} is invalid: checksum: missing or not 8 lower-case hex digits`);
  }
  let computed: string;
  try {
    computed = manifestChecksum(obj);
  } catch (e) {
    if (!(e instanceof CanonicalError)) throw e;
    fail('IMAGE_INVALID', `${manifestPath} is invalid: ${e.message}`, e);
  }
  if (computed !== recorded) {
    fail(
      'IMAGE_CHECKSUM',
      `${manifestPath} fails its checksum (recorded ${recorded}, computed ${computed}): ` +
        'it was modified or damaged after crest wrote it; take a new checkpoint',
    );
  }
  const schema = checkSchema(obj);
  if (!schema.ok) {
    const more = schema.total > schema.problems.length ? ` (and ${schema.total - schema.problems.length} more)` : '';
    fail('IMAGE_INVALID', `${manifestPath} is invalid: ${schema.problems.join('; ')}${more}`);
  }
  const manifest = schema.manifest;

  // 6. Semantics.
  const problems = checkSemantics(manifest);
  if (problems.length > 0) fail('IMAGE_INVALID', `${manifestPath} is inconsistent: ${problems.join('; ')}`);

  // 7. Data files: all sizes first (cheap), then every byte if asked.
  const names = Object.keys(manifest.files).sort();
  for (const name of names) {
    const expected = manifest.files[name]!.size;
    const p = path.join(dir, name);
    let actual: fs.Stats;
    try {
      actual = fs.statSync(p);
    } catch (e) {
      if (errCode(e) === 'ENOENT') {
        fail('IMAGE_TRUNCATED', `${p} is missing (the manifest records ${expected} bytes): the image was copied or moved incompletely`, e);
      }
      readError(e, p);
    }
    if (!actual.isFile()) fail('IMAGE_TRUNCATED', `${p} is not a regular file (the manifest records a file of ${expected} bytes)`);
    if (actual.size !== expected) {
      fail('IMAGE_TRUNCATED', `${p} has ${actual.size} bytes, but the manifest records ${expected}: the image is damaged or was copied incompletely`);
    }
  }
  if (verifyData) {
    let chunk: Buffer | undefined;
    for (const name of names) {
      if (opts.verifiedByCaller?.(name)) continue;
      const entry = manifest.files[name]!;
      const p = path.join(dir, name);
      chunk ??= Buffer.allocUnsafe(CHUNK_SIZE);
      const got = fileCrc32(p, entry.size, chunk);
      if (got !== entry.crc32) {
        fail('IMAGE_CHECKSUM', `${p} fails its checksum (recorded ${entry.crc32}, computed ${got}): the data was damaged; take a new checkpoint`);
      }
    }
  }
  return manifest;
}

/** CRC-32 of the first `size` bytes of a file, read through `chunk`. */
function fileCrc32(p: string, size: number, chunk: Buffer): string {
  let fd: number;
  try {
    fd = fs.openSync(p, fs.constants.O_RDONLY);
  } catch (e) {
    readError(e, p);
  }
  try {
    let crc = 0;
    let pos = 0;
    while (pos < size) {
      const n = fs.readSync(fd, chunk, 0, Math.min(chunk.length, size - pos), pos);
      if (n === 0) fail('IMAGE_TRUNCATED', `${p} ended at ${pos} bytes while being read, but the manifest records ${size}`);
      crc = crc32(chunk.subarray(0, n), crc);
      pos += n;
    }
    return crc32Hex(crc);
  } catch (e) {
    if (e instanceof CrestError) throw e;
    readError(e, p);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Calls `cb` for every run of stored pages of `proc`, in pages-file order:
 * the mapping, the run's first page index within it, its page count, and the
 * byte offset of that first page in the pages file. The run's address is
 * vma.start + pageIndex * 4096, its length count * 4096, so restore can pread
 * it straight into place.
 */
export function forEachRun(
  proc: ProcessImage,
  cb: (vma: VmaImage, pageIndex: number, count: number, fileOffset: number) => void,
): void {
  let offset = 0;
  for (const vma of proc.vmas) {
    for (const [pageIndex, count] of vma.runs) {
      cb(vma, pageIndex, count, offset);
      offset += count * PAGE_SIZE;
    }
  }
}

/** Where the page at `addr` is stored in `proc`'s pages file, or null when it is not stored. */
export function pageOffset(proc: ProcessImage, addr: number): number | null {
  let offset = 0;
  const page = Math.floor(addr / PAGE_SIZE);
  for (const vma of proc.vmas) {
    const inside = addr >= vma.start && addr < vma.end;
    for (const [first, count] of vma.runs) {
      const rel = page - vma.start / PAGE_SIZE - first;
      if (inside && rel >= 0 && rel < count) return offset + rel * PAGE_SIZE;
      offset += count * PAGE_SIZE;
    }
    if (inside) return null;
  }
  return null;
}
