// Page tracking for incremental checkpoints, by page hashes: this kernel has
// no soft-dirty bit, so what changed since the parent image is found by
// comparing the xxh64 of every page with the one the parent recorded. It
// costs a full read of memory (which a checkpoint makes anyway) and one hash
// per page, and it works on every kernel. Unchanged pages are `inherited`
// (the parent has them), changed ones stored; anonymous pages that are all
// zero are left out altogether (a fresh anonymous mapping reads as zero).
// Every image made this way records all its page hashes (hashes-PID.img), so
// the next checkpoint can be incremental on it.
import { closeSync, openSync, readSync } from 'node:fs';
import * as path from 'node:path';
import { crc32 } from 'node:zlib';
import { xxh64 } from '@node-rs/xxhash';
import { readImage } from '../image/reader.js';
import type { Manifest } from '../image/schema.js';
import type { DataFile, ImageWriter } from '../image/writer.js';
import { CrestError } from '../sys/errors.js';
import { native } from '../sys/native.js';
import { PAGE_SIZE } from '../sys/constants.js';
import { progressSink } from '../progress.js';

/** What dump() is told to do about page tracking. */
export interface PageTrackingOptions {
  /** The image to be incremental on (its directory); absent: a full image, with hashes. */
  parentDir?: string;
  /** Compress the stored pages (zstd frames of COMPRESS_BLOCK_PAGES pages). */
  compress?: boolean;
}

/** Pages per compressed frame: 1 MiB, the unit a restore decompresses to reach one page. */
export const COMPRESS_BLOCK_PAGES = 256;
/** zstd level: a fast negative level, several GB/s on one core, so compressing never slows a checkpoint down. */
export const COMPRESS_LEVEL = -3;

/** The parent's pages of one process: absolute page numbers (ascending) and their hashes. */
interface ParentProcess {
  pages: Float64Array;
  hashes: BigUint64Array;
}

/** A loaded parent image, as dump() and the memory kind use it. */
export interface PageTracking {
  parent: {
    dir: string;
    /** What the child's manifest records as its `parent`. */
    ref: { dir: string; checksum: string; createdAt: string };
    byPid: Map<number, ParentProcess>;
  } | null;
  /** Set once any page was inherited: only then does the image depend on its parent. */
  inheritedAny: boolean;
  compress: boolean;
}

/**
 * Loads what an incremental dump into `childDir` needs of the image in
 * `parentDir`: its page hashes (checked against their CRC-32). A parent
 * without hashes (a version 1 image, `crest dump`) cannot serve: null.
 */
export function openPageTracking(opts: PageTrackingOptions, childDir: string): PageTracking {
  const compress = !!opts.compress;
  if (compress && native().zstdVersion() === null) {
    throw new CrestError('NO_ZSTD', "crest's native addon was built without libzstd, so it cannot compress; install libzstd-dev and rebuild crest (npm rebuild), or leave out --compress");
  }
  if (!opts.parentDir) return { parent: null, inheritedAny: false, compress };
  const dir = path.resolve(opts.parentDir);
  const m = readImage(dir, { verifyData: false });
  const byPid = new Map<number, ParentProcess>();
  for (const proc of m.processes) {
    if (!proc.hashesFile) return { parent: null, inheritedAny: false, compress };
    const entry = m.files[proc.hashesFile]!;
    const bytes = readWhole(path.join(dir, proc.hashesFile), entry.size);
    const got = (crc32(bytes) >>> 0).toString(16).padStart(8, '0');
    if (got !== entry.crc32) {
      throw new CrestError('IMAGE_CHECKSUM', `${path.join(dir, proc.hashesFile)} fails its checksum (recorded ${entry.crc32}, computed ${got}): the parent image is damaged`);
    }
    const hashes = new BigUint64Array(bytes.buffer, bytes.byteOffset, bytes.length / 8);
    const pages = new Float64Array(hashes.length);
    let n = 0;
    for (const v of proc.vmas) {
      const base = v.start / PAGE_SIZE;
      const runs = [...v.runs, ...(v.inherited ?? [])].sort((a, b) => a[0] - b[0]);
      for (const [first, count] of runs) for (let i = 0; i < count; i++) pages[n++] = base + first + i;
    }
    byPid.set(proc.pid, { pages, hashes });
  }
  return { parent: { dir, ref: { dir: path.relative(path.resolve(childDir), dir), checksum: m.checksum, createdAt: m.createdAt }, byPid }, inheritedAny: false, compress };
}

/** The parent reference to put in the manifest, when the image depends on its parent. */
export function parentRef(t: PageTracking | null): Manifest['parent'] {
  return t?.parent && t.inheritedAny ? t.parent.ref : undefined;
}

function readWhole(p: string, size: number): Buffer {
  // 8-aligned for the BigUint64Array view.
  const buf = Buffer.from(new ArrayBuffer(size));
  const fd = openSync(p, 'r');
  try {
    let got = 0;
    while (got < size) {
      const n = readSync(fd, buf, got, size - got, got);
      if (n <= 0) throw new CrestError('IMAGE_TRUNCATED', `${p} ended at ${got} bytes, the manifest records ${size}`);
      got += n;
    }
  } finally {
    closeSync(fd);
  }
  return buf;
}

const ZERO_PAGE = Buffer.alloc(PAGE_SIZE);
const ZERO_HASH = xxh64(ZERO_PAGE);

/** Builds a list of [first, count] runs from ascending page indices. */
class RunList {
  readonly runs: [number, number][] = [];
  add(i: number): void {
    const last = this.runs[this.runs.length - 1];
    if (last && last[0] + last[1] === i) last[1]++;
    else this.runs.push([i, 1]);
  }
}

/** Hashes of every page of the image, in manifest order, grown in blocks. */
class HashList {
  private blocks: BigUint64Array[] = [];
  private cur = new BigUint64Array(65536);
  private n = 0;
  count = 0;
  push(h: bigint): void {
    if (this.n === this.cur.length) {
      this.blocks.push(this.cur);
      this.cur = new BigUint64Array(65536);
      this.n = 0;
    }
    this.cur[this.n++] = h;
    this.count++;
  }
  writeTo(file: DataFile): void {
    for (const b of this.blocks) file.write(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
    file.write(Buffer.from(this.cur.buffer, this.cur.byteOffset, this.n * 8));
  }
}

/** Size of the buffers compressed frames are gathered in before they are written. */
const OUT_CAP = 8 * 1024 * 1024;

/**
 * Compressed pages: stored pages gathered into 1 MiB blocks, each compressed
 * into one zstd frame; frames gathered into 8 MiB buffers written in the
 * background (double-buffered, like the raw path).
 */
class CompressedSink {
  private readonly stage = Buffer.allocUnsafe(COMPRESS_BLOCK_PAGES * PAGE_SIZE);
  private stageLen = 0;
  private readonly outs = [Buffer.allocUnsafe(OUT_CAP), Buffer.allocUnsafe(OUT_CAP)];
  private which = 0;
  private outLen = 0;
  private pending: Promise<void> = Promise.resolve();
  readonly blocks: number[] = [];

  constructor(private readonly out: DataFile) {}

  async add(buf: Buffer, len: number): Promise<void> {
    let off = 0;
    while (off < len) {
      const n = Math.min(len - off, this.stage.length - this.stageLen);
      buf.copy(this.stage, this.stageLen, off, off + n);
      this.stageLen += n;
      off += n;
      if (this.stageLen === this.stage.length) await this.compressBlock();
    }
  }

  private async compressBlock(): Promise<void> {
    // Worst case of zstd: a little more than the input (ZSTD_COMPRESSBOUND).
    const bound = this.stageLen + (this.stageLen >> 8) + 65536;
    if (this.outLen + bound > OUT_CAP) await this.flush();
    const outBuf = this.outs[this.which]!;
    const n = native().zstdCompress(this.stage, 0, this.stageLen, outBuf, this.outLen, OUT_CAP - this.outLen, COMPRESS_LEVEL);
    this.blocks.push(n);
    this.outLen += n;
    this.stageLen = 0;
  }

  private async flush(): Promise<void> {
    if (this.outLen === 0) return;
    await this.pending;
    this.pending = this.out.writeAsync(this.outs[this.which]!, 0, this.outLen);
    this.which ^= 1;
    this.outLen = 0;
  }

  /** Compresses what is left, writes everything, waits for the writes. */
  async finish(): Promise<void> {
    if (this.stageLen > 0) await this.compressBlock();
    await this.flush();
    await this.pending;
  }

  drain(): Promise<void> {
    return this.pending;
  }
}

/**
 * Copies the candidate pages of one process (present ones, from pagemap)
 * to its pages file, hashing each: zero anonymous pages are dropped, pages
 * whose hash equals the parent's at the same address become `inherited`,
 * the rest are compacted to the front of the buffer and written (O_DIRECT,
 * double-buffered: the write runs on the libuv pool while the next chunk is
 * read and hashed).
 */
export class HashingCopier {
  private pending: Promise<void> = Promise.resolve();
  private which = 0;
  private readonly views: Buffer[][];
  private readonly hashes = new HashList();
  private parent: ParentProcess | null;
  private cursor = 0;
  private readonly sink: CompressedSink | null;
  storedPages = 0;
  inheritedPages = 0;
  zeroPages = 0;

  constructor(
    private readonly pid: number,
    private readonly memFd: number,
    private readonly out: DataFile,
    private readonly bufs: [Buffer, Buffer],
    private readonly tracker: PageTracking,
    nsPid: number,
  ) {
    this.parent = tracker.parent?.byPid.get(nsPid) ?? null;
    this.sink = tracker.compress ? new CompressedSink(out) : null;
    this.views = bufs.map((b) => Array.from({ length: b.length / PAGE_SIZE }, (_, i) => b.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE)));
  }

  /** The parent's hash of absolute page `p`, or undefined when the parent does not have it. */
  private parentHash(p: number): bigint | undefined {
    const par = this.parent;
    if (!par) return undefined;
    while (this.cursor < par.pages.length && par.pages[this.cursor]! < p) this.cursor++;
    return par.pages[this.cursor] === p ? par.hashes[this.cursor] : undefined;
  }

  /** Copies one mapping's candidate pages; returns its stored and inherited runs. */
  async copy(start: number, candidates: [number, number][], anonymous: boolean): Promise<{ runs: [number, number][]; inherited: [number, number][] }> {
    const runs = new RunList();
    const inherited = new RunList();
    const base = start / PAGE_SIZE;
    for (const [first, count] of candidates) {
      let page = first;
      let left = count;
      while (left > 0) {
        const buf = this.bufs[this.which]!;
        const views = this.views[this.which]!;
        const n = Math.min(left, views.length);
        this.read(start + page * PAGE_SIZE, buf, n * PAGE_SIZE);
        let kept = 0;
        for (let i = 0; i < n; i++) {
          const v = views[i]!;
          const h = xxh64(v);
          if (anonymous && h === ZERO_HASH && v.equals(ZERO_PAGE)) {
            this.zeroPages++;
            continue;
          }
          const idx = page + i;
          this.hashes.push(h);
          if (this.parentHash(base + idx) === h) {
            inherited.add(idx);
            this.inheritedPages++;
            continue;
          }
          if (kept !== i) buf.copyWithin(kept * PAGE_SIZE, i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
          kept++;
          runs.add(idx);
        }
        if (kept > 0 && this.sink) {
          await this.sink.add(buf, kept * PAGE_SIZE);
          this.storedPages += kept;
        } else if (kept > 0) {
          await this.pending;
          this.pending = this.out.writeAsync(buf, 0, kept * PAGE_SIZE);
          this.which ^= 1;
          this.storedPages += kept;
        }
        progressSink()?.add(n * PAGE_SIZE);
        page += n;
        left -= n;
      }
    }
    if (inherited.runs.length > 0) this.tracker.inheritedAny = true;
    return { runs: runs.runs, inherited: inherited.runs };
  }

  private read(addr: number, buf: Buffer, len: number): void {
    let got = 0;
    while (got < len) {
      // process_vm_readv is the cheaper copy; it refuses pages the process
      // itself could not read (PROT_NONE), which /proc/PID/mem still reads.
      let r = 0;
      try {
        r = native().processVmReadv(this.pid, addr + got, buf, got, len - got);
      } catch {
        r = 0;
      }
      if (r <= 0) r = readSync(this.memFd, buf, got, len - got, addr + got);
      if (r <= 0) throw new CrestError('MEM_READ', `could not read memory at 0x${(addr + got).toString(16)}`);
      got += r;
    }
  }

  /** Waits for every write (after compressing what is left, when compressing). */
  async drain(): Promise<void> {
    await this.sink?.finish();
    await this.pending;
  }

  /** Frames of the compressed pages file, for the manifest; undefined when not compressing. */
  compression(): { codec: 'zstd'; blockPages: number; blocks: number[] } | undefined {
    return this.sink ? { codec: 'zstd', blockPages: COMPRESS_BLOCK_PAGES, blocks: this.sink.blocks } : undefined;
  }

  /** Writes hashes-PID.img; returns its name. */
  writeHashes(writer: ImageWriter, nsPid: number): string {
    const name = `hashes-${nsPid}.img`;
    const f = writer.openData(name);
    this.hashes.writeTo(f);
    f.close();
    return name;
  }
}
