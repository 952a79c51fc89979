// Writes an image directory: data files first, each fsync'd, then the
// manifest as the commit marker (temp file, fsync, rename, directory fsync).
// Synchronous throughout: a dump runs while the job is frozen, and a frozen
// job gains nothing from an event loop. Until commit() returns, the directory
// is never a complete image, whatever happens to crest or the machine.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { crc32 } from 'node:zlib';
import { CrestError } from '../sys/errors.js';
import { faultArg, stall } from '../fault.js';
import { canonicalJson, crc32Hex, manifestChecksum, CHECKSUM_PLACEHOLDER } from './canonical.js';
import { MANIFEST_NAME, type Manifest } from './schema.js';
import { checkSchema, checkSemantics, isDataFileName, isLeftoverName, MANIFEST_TMP_NAME } from './validate.js';

/** What commit() is given: everything but what the writer computes itself. */
export type ManifestDraft = Omit<Manifest, 'files' | 'checksum'>;

/** Images hold process memory (keys, passwords): owner-only, whatever the umask. */
const FILE_MODE = 0o600;
const DIR_MODE = 0o700;

/**
 * Maps a failed file system call of the writer to IMAGE_WRITE: names the
 * file, the errno and, for ENOSPC/EDQUOT, says the disk is full. Exported so
 * that the mapping can be tested with a synthetic error object.
 */
export function imageWriteError(err: unknown, file: string, op: string): CrestError {
  if (err instanceof CrestError) return err;
  const code = (err as NodeJS.ErrnoException | null)?.code;
  const message = err instanceof Error ? err.message : String(err);
  let reason: string;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    const what = code === 'ENOSPC' ? 'no space left on device' : 'disk quota exceeded';
    reason = `disk full (${code}: ${what}); free some space or choose another directory, then dump again`;
  } else if (typeof code === 'string') {
    reason = message.startsWith(code) ? message : `${code}: ${message}`;
  } else {
    reason = message;
  }
  return new CrestError('IMAGE_WRITE', `cannot ${op} ${file}: ${reason}`, { cause: err });
}

function fsyncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    fs.fsyncSync(fd);
  } catch (e) {
    throw imageWriteError(e, dir, 'sync directory');
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/**
 * Fault point `enospc-after:N`: data-file writes of this process fail with
 * ENOSPC once N bytes in all were written (a disk that fills mid-checkpoint).
 */
let faultWritten = 0;
function faultEnospc(len: number): void {
  const arg = faultArg('enospc-after');
  if (arg === null) return;
  faultWritten += len;
  if (faultWritten > Number(arg)) throw Object.assign(new Error('ENOSPC: no space left on device (fault point enospc-after)'), { code: 'ENOSPC' });
}

/** Size and CRC-32 of one closed data file, as the manifest records them. */
export interface DataFileResult {
  size: number;
  crc32: string;
}

/** One data file being written: bytes appended in order, size and CRC-32 kept as they go. */
export class DataFile {
  readonly name: string;
  readonly path: string;
  #fd: number | undefined;
  #size = 0;
  #crc = 0;
  #result: DataFileResult | undefined;
  #failed: CrestError | undefined;

  /** Opened with O_DIRECT: writes must come from page-aligned buffers in multiples of 4096 bytes. */
  readonly direct: boolean;
  #inFlight = false;

  /** @internal Use ImageWriter.openData(). */
  constructor(name: string, filePath: string, fd: number, direct = false) {
    this.name = name;
    this.path = filePath;
    this.#fd = fd;
    this.direct = direct;
  }

  /**
   * Appends buf[off, off+len) like write(), but the write itself runs on the
   * libuv pool so the caller can fill its next buffer meanwhile (one write in
   * flight at a time; the buffer must not change until the promise settles).
   */
  async writeAsync(buf: Buffer, off: number, len: number): Promise<void> {
    if (this.#failed) throw this.#failed;
    const fd = this.#fd;
    if (fd === undefined) throw new CrestError('IMAGE_WRITE', `${this.path} is already closed`);
    if (this.#inFlight) throw new Error('writeAsync: a write is already in flight');
    const pos = this.#size;
    this.#crc = crc32(buf.subarray(off, off + len), this.#crc);
    this.#size += len;
    this.#inFlight = true;
    try {
      faultEnospc(len);
      let done = 0;
      while (done < len) {
        const n = await new Promise<number>((resolve, reject) => {
          fs.write(fd, buf, off + done, len - done, pos + done, (err, written) => (err ? reject(err) : resolve(written)));
        });
        if (n <= 0) throw Object.assign(new Error('write returned 0'), { code: 'EIO' });
        done += n;
      }
    } catch (e) {
      this.#failed = imageWriteError(e, this.path, 'write');
      throw this.#failed;
    } finally {
      this.#inFlight = false;
    }
  }

  /** Bytes written so far. */
  get size(): number {
    return this.#size;
  }

  /** True once close() succeeded. */
  get closed(): boolean {
    return this.#result !== undefined;
  }

  /** Appends buf[off, off+len) (all of buf by default); throws IMAGE_WRITE (disk full and the like). */
  write(buf: Buffer, off = 0, len = buf.length - off): void {
    if (this.#failed) throw this.#failed;
    if (this.#fd === undefined) throw new CrestError('IMAGE_WRITE', `${this.path} is already closed`);
    if (!Number.isInteger(off) || !Number.isInteger(len) || off < 0 || len < 0 || off + len > buf.length) {
      throw new RangeError(`write(${off}, ${len}) is outside a buffer of ${buf.length} bytes`);
    }
    let done = 0;
    try {
      faultEnospc(len);
      while (done < len) {
        const n = fs.writeSync(this.#fd, buf, off + done, len - done);
        if (n <= 0) throw Object.assign(new Error('write returned 0'), { code: 'EIO' });
        done += n;
      }
    } catch (e) {
      this.#failed = imageWriteError(e, this.path, 'write');
      throw this.#failed;
    } finally {
      // Whatever reached the file counts, so size and CRC describe the file as it is.
      if (done > 0) {
        this.#crc = crc32(buf.subarray(off, off + done), this.#crc);
        this.#size += done;
      }
    }
  }

  /** fsync and close; returns what the manifest records. Calling it again returns the same. */
  close(): DataFileResult {
    if (this.#result) return this.#result;
    if (this.#failed) throw this.#failed;
    if (this.#fd === undefined) throw new CrestError('IMAGE_WRITE', `${this.path} was abandoned`);
    const fd = this.#fd;
    this.#fd = undefined;
    try {
      fs.fsyncSync(fd);
    } catch (e) {
      this.#failed = imageWriteError(e, this.path, 'sync');
      throw this.#failed;
    } finally {
      try {
        fs.closeSync(fd);
      } catch {
        // fsync already reported what close could.
      }
    }
    this.#result = { size: this.#size, crc32: crc32Hex(this.#crc) };
    return this.#result;
  }

  /** @internal Closes without syncing, ignoring errors (abort). */
  discard(): void {
    if (this.#fd !== undefined) {
      try {
        fs.closeSync(this.#fd);
      } catch {
        // best effort
      }
      this.#fd = undefined;
    }
  }
}

/** Options of ImageWriter.create. */
export interface ImageWriterOptions {
  /** Replace an existing image, or write into a non-empty directory that holds none. */
  force: boolean;
}

/**
 * Writes one image into a directory. Use: create, openData/write/close for
 * every data file, commit with the manifest; on any failure call abort()
 * (commit does not abort by itself, so the caller's cleanup path is one).
 */
export class ImageWriter {
  readonly dir: string;
  #files = new Map<string, DataFile>();
  #state: 'open' | 'committed' | 'aborted' = 'open';

  private constructor(dir: string) {
    this.dir = dir;
  }

  /**
   * Prepares `dir` for a new image: creates it if missing; refuses an
   * existing image (IMAGE_EXISTS) or an unrelated non-empty directory
   * (IMAGE_DIR_NOT_EMPTY) unless opts.force. With force, the old manifest
   * goes first (and the directory is synced), so from then on the old image
   * is incomplete; then the data files that manifest listed, nothing else.
   */
  static create(dir: string, opts: ImageWriterOptions): ImageWriter {
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(dir);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOTDIR') {
        throw new CrestError('IMAGE_DIR_INVALID', `${dir}: a component of the path is not a directory; choose a directory for the image`, { cause: e });
      }
      if (code !== 'ENOENT') throw imageWriteError(e, dir, 'inspect');
    }
    if (st === undefined) {
      try {
        fs.mkdirSync(dir, { recursive: true, mode: DIR_MODE });
      } catch (e) {
        throw imageWriteError(e, dir, 'create directory');
      }
      // The new directory's own entry must survive a crash as well.
      fsyncDir(path.dirname(path.resolve(dir)));
      return new ImageWriter(dir);
    }
    if (!st.isDirectory()) {
      throw new CrestError('IMAGE_DIR_INVALID', `${dir} exists and is not a directory; choose a directory for the image`);
    }
    let entries: string[];
    try {
      entries = fs.readdirSync(dir);
    } catch (e) {
      throw imageWriteError(e, dir, 'list');
    }
    const manifestPath = path.join(dir, MANIFEST_NAME);
    if (entries.includes(MANIFEST_NAME)) {
      if (!opts.force) {
        throw new CrestError('IMAGE_EXISTS', `${dir} already holds a checkpoint image; pass --force to overwrite it`);
      }
      const oldFiles = listedDataFiles(manifestPath);
      try {
        fs.unlinkSync(manifestPath);
      } catch (e) {
        throw imageWriteError(e, manifestPath, 'remove the old manifest');
      }
      // From this sync on, the old image is incomplete even after a crash.
      fsyncDir(dir);
      for (const name of oldFiles) removeIfFile(path.join(dir, name));
      removeIfFile(path.join(dir, MANIFEST_TMP_NAME));
    } else {
      const unrelated = entries.filter((e) => !isLeftoverName(e));
      if (unrelated.length > 0 && !opts.force) {
        const shown = unrelated.slice(0, 3).map((e) => `"${e}"`).join(', ') + (unrelated.length > 3 ? ', ...' : '');
        throw new CrestError(
          'IMAGE_DIR_NOT_EMPTY',
          `${dir} is not empty and holds no checkpoint image (it has ${shown}); ` +
            'choose a new or empty directory, or pass --force to write into it anyway',
        );
      }
      // An interrupted dump's temp manifest is ours and stale; its *.img are overwritten as they come.
      removeIfFile(path.join(dir, MANIFEST_TMP_NAME));
    }
    return new ImageWriter(dir);
  }

  /** Starts data file `name` (created or truncated); throws on a bad or repeated name. */
  openData(name: string, opts: { direct?: boolean } = {}): DataFile {
    this.#checkOpen('openData');
    if (!isDataFileName(name)) {
      throw new CrestError('IMAGE_WRITE', `invalid data file name ${JSON.stringify(name)}: use letters, digits, ".", "_" and "-", and not ${MANIFEST_NAME}`);
    }
    if (this.#files.has(name)) throw new CrestError('IMAGE_WRITE', `data file ${name} was already opened in this image`);
    const filePath = path.join(this.dir, name);
    let fd: number;
    const flags = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC | fs.constants.O_NOFOLLOW;
    let direct = false;
    try {
      if (opts.direct) {
        // O_DIRECT skips the page cache, whose page-by-page allocation makes
        // buffered writes of large images several times slower; file systems
        // without it (tmpfs) say EINVAL, and we write through the cache.
        try {
          fd = fs.openSync(filePath, flags | fs.constants.O_DIRECT, FILE_MODE);
          direct = true;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
          fd = fs.openSync(filePath, flags, FILE_MODE);
        }
      } else {
        fd = fs.openSync(filePath, flags, FILE_MODE);
      }
    } catch (e) {
      throw imageWriteError(e, filePath, 'create');
    }
    const file = new DataFile(name, filePath, fd, direct);
    this.#files.set(name, file);
    return file;
  }

  /**
   * Completes the image: records every data file (all must be closed),
   * computes the checksum, checks the result as the reader would, then
   * writes manifest.json.tmp, fsyncs it, renames it to manifest.json and
   * fsyncs the directory. Returns the manifest as written.
   */
  commit(draft: ManifestDraft): Manifest {
    this.#checkOpen('commit');
    // Fault point: every data file written, no manifest yet (tests kill crest here).
    if (faultArg('stall-before-manifest') !== null) stall(Number(faultArg('stall-before-manifest')) || 120_000);
    const files: Record<string, DataFileResult> = {};
    for (const [name, file] of [...this.#files].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
      if (!file.closed) throw new CrestError('IMAGE_WRITE', `cannot commit ${this.dir}: data file ${name} is still open`);
      files[name] = file.close();
    }
    // Validate first (with the placeholder, which the schema accepts), then
    // sign exactly the object that is serialised.
    const draftFull: Record<string, unknown> = { ...draft, files, checksum: CHECKSUM_PLACEHOLDER };
    const schema = checkSchema(draftFull);
    const problems = schema.ok ? checkSemantics(schema.manifest) : schema.problems;
    if (!schema.ok || problems.length > 0) {
      throw new CrestError(
        'IMAGE_INVALID',
        `refusing to write an image that crest could not read back (a bug in crest): ${problems.join('; ')}`,
      );
    }
    const manifest = schema.manifest;
    manifest.checksum = manifestChecksum(manifest);
    const bytes = Buffer.from(canonicalJson(manifest), 'utf8');

    const tmpPath = path.join(this.dir, MANIFEST_TMP_NAME);
    const finalPath = path.join(this.dir, MANIFEST_NAME);
    let fd: number | undefined;
    try {
      fd = fs.openSync(tmpPath, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC | fs.constants.O_NOFOLLOW, FILE_MODE);
      for (let done = 0; done < bytes.length; ) {
        const n = fs.writeSync(fd, bytes, done, bytes.length - done);
        if (n <= 0) throw Object.assign(new Error('write returned 0'), { code: 'EIO' });
        done += n;
      }
      fs.fsyncSync(fd);
    } catch (e) {
      throw imageWriteError(e, tmpPath, 'write');
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
    }
    try {
      fs.renameSync(tmpPath, finalPath);
    } catch (e) {
      throw imageWriteError(e, finalPath, 'rename the manifest into place as');
    }
    fsyncDir(this.dir);
    this.#state = 'committed';
    return manifest;
  }

  /**
   * Undoes an unfinished image: closes and removes every data file this
   * writer created and the temp manifest. Best effort, never throws; a
   * no-op after commit() or a previous abort().
   */
  abort(): void {
    if (this.#state !== 'open') return;
    this.#state = 'aborted';
    for (const file of this.#files.values()) {
      file.discard();
      removeIfFile(file.path);
    }
    removeIfFile(path.join(this.dir, MANIFEST_TMP_NAME));
  }

  #checkOpen(op: string): void {
    if (this.#state !== 'open') throw new CrestError('IMAGE_WRITE', `cannot ${op}: the image in ${this.dir} was already ${this.#state}`);
  }
}

/** The data file names an old manifest lists, if it parses at all (best effort). */
function listedDataFiles(manifestPath: string): string[] {
  try {
    if (fs.statSync(manifestPath).size > 256 * 1024 * 1024) return [];
    const parsed: unknown = JSON.parse(fs.readFileSync(manifestPath, 'utf8'));
    const files = (parsed as { files?: unknown } | null)?.files;
    if (typeof files !== 'object' || files === null || Array.isArray(files)) return [];
    return Object.keys(files).filter(isDataFileName);
  } catch {
    return [];
  }
}

/** Unlinks a regular file if it is there; never throws, never touches anything else. */
function removeIfFile(p: string): void {
  try {
    if (fs.lstatSync(p).isFile()) fs.unlinkSync(p);
  } catch {
    // best effort
  }
}
