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
import { availableParallelism } from 'node:os';
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
import { openUffdTracking, type TrackedJob, type UffdTracking } from './uffdwp.js';

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
  /** Kernel write tracking (./uffdwp.ts), for a job's processes; null: page hashes only. */
  uffd: UffdTracking | null;
}

/**
 * Loads what an incremental dump into `childDir` needs of the image in
 * `parentDir`: its page hashes (checked against their CRC-32). A parent
 * without hashes (a version 1 image, `crest dump`) cannot serve: null.
 * A job's processes are tracked by the kernel too (./uffdwp.ts).
 */
export function openPageTracking(opts: PageTrackingOptions, childDir: string, job: TrackedJob | null = null): PageTracking {
  const compress = !!opts.compress;
  if (compress && native().zstdVersion() === null) {
    throw new CrestError('NO_ZSTD', "crest's native addon was built without libzstd, so it cannot compress; install libzstd-dev and rebuild crest (npm rebuild), or leave out --compress");
  }
  if (!opts.parentDir) return { parent: null, inheritedAny: false, compress, uffd: openUffdTracking(job) };
  const dir = path.resolve(opts.parentDir);
  const m = readImage(dir, { verifyData: false });
  const byPid = new Map<number, ParentProcess>();
  for (const proc of m.processes) {
    if (!proc.hashesFile) return { parent: null, inheritedAny: false, compress, uffd: openUffdTracking(job) };
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
  return { parent: { dir, ref: { dir: path.relative(path.resolve(childDir), dir), checksum: m.checksum, createdAt: m.createdAt }, byPid }, inheritedAny: false, compress, uffd: openUffdTracking(job) };
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

/** Walks sorted, disjoint [start, end) intervals of absolute pages, in ascending order. */
export class IntervalCursor {
  private i = 0;
  constructor(private readonly list: [number, number][]) {}
  /** From page p (never less than the last p asked), up to `limit`: whether the pages lie inside the intervals, and how many in a row. */
  span(p: number, limit: number): [boolean, number] {
    while (this.i < this.list.length && this.list[this.i]![1] <= p) this.i++;
    const iv = this.list[this.i];
    if (iv && iv[0] <= p) return [true, Math.min(limit, iv[1]) - p];
    return [false, Math.min(limit, iv ? iv[0] : limit) - p];
  }
}

/** Builds a list of [first, count] runs from ascending page indices. */
class RunList {
  readonly runs: [number, number][] = [];
  add(i: number): void {
    const last = this.runs[this.runs.length - 1];
    if (last && last[0] + last[1] === i) last[1]++;
    else this.runs.push([i, 1]);
  }
  /** Adds pages [i, i+n), n > 0. */
  addRun(i: number, n: number): void {
    const last = this.runs[this.runs.length - 1];
    if (last && last[0] + last[1] === i) last[1] += n;
    else this.runs.push([i, n]);
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
  /** Appends from[at, at+n). */
  pushRange(from: BigUint64Array, at: number, n: number): void {
    while (n > 0) {
      if (this.n === this.cur.length) {
        this.blocks.push(this.cur);
        this.cur = new BigUint64Array(65536);
        this.n = 0;
      }
      const k = Math.min(n, this.cur.length - this.n);
      this.cur.set(from.subarray(at, at + k), this.n);
      this.n += k;
      this.count += k;
      at += k;
      n -= k;
    }
  }
  writeTo(file: DataFile): void {
    for (const b of this.blocks) file.write(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
    file.write(Buffer.from(this.cur.buffer, this.cur.byteOffset, this.n * 8));
  }
}

/** Blocks being compressed at once, on the libuv pool: the cores the copy itself does not use. */
const COMPRESSORS = Math.max(1, Math.min(4, availableParallelism() - 1));
/** Once the copy has waited this share of its time for compressions, the rest of the checkpoint is stored raw. */
const MAX_WAIT_SHARE = 0.05;
/** CREST_COMPRESS=always: compress every block, waiting for a compressor when all are busy (tests, and where space matters more than time). */
const ALWAYS = (): boolean => process.env.CREST_COMPRESS === 'always';
const BLOCK_BYTES = COMPRESS_BLOCK_PAGES * PAGE_SIZE;
/** Output buffer of one compression: the worst case of zstd, in whole pages (O_DIRECT). */
const OUT_BYTES = Math.ceil((BLOCK_BYTES + (BLOCK_BYTES >> 8) + 65536) / PAGE_SIZE) * PAGE_SIZE;

const alignUp = (n: number): number => Math.ceil(n / PAGE_SIZE) * PAGE_SIZE;

/**
 * `len` bytes of `src` as a zstd frame of raw (stored) blocks (RFC 8878):
 * any zstd decoder reads it. Returns its size. (Tests use it to check the
 * decoder; crest stores incompressible blocks as plain pages.)
 */
export function rawFrame(src: Buffer, len: number, out: Buffer): number {
  out.writeUInt32LE(0xfd2fb528, 0); // magic
  out[4] = 0xa0; // single segment, 4-byte content size
  out.writeUInt32LE(len, 5);
  let o = 9;
  let done = 0;
  const MAX_BLOCK = 128 * 1024;
  do {
    const n = Math.min(MAX_BLOCK, len - done);
    const header = (done + n >= len ? 1 : 0) | (n << 3); // raw block
    out[o] = header & 0xff;
    out[o + 1] = (header >>> 8) & 0xff;
    out[o + 2] = (header >>> 16) & 0xff;
    src.copy(out, o + 3, done, done + n);
    o += 3 + n;
    done += n;
  } while (done < len);
  return o;
}

/**
 * Compressed pages: the stored pages of each chunk read, in blocks of up to
 * 256 pages, each either one zstd frame (padded to whole pages) or, where
 * compressing it would slow the checkpoint, the plain pages. A block is
 * compressed on the libuv pool, straight from the read buffer, when a
 * compressor is free; otherwise it is written plain at once, from the read
 * buffer, with O_DIRECT, exactly as an uncompressed checkpoint would. Blocks
 * are written in order, so plain ones queue behind one being compressed:
 * should the copy ever wait for compressions more than 5% of its time (a
 * machine without spare CPU), the rest goes plain. Compressing thus never
 * makes a checkpoint noticeably slower than writing it raw, and makes it
 * smaller and faster wherever writing is the bottleneck.
 */
class CompressedSink {
  private chain: Promise<void> = Promise.resolve();
  /** [pages, bytes of its zstd frame or 0 for plain pages], in file order. */
  readonly blocks: [number, number][] = [];
  private busy = 0;
  private readonly always = ALWAYS();
  private readonly free: Buffer[] = [];
  private readonly waiters: ((b: Buffer) => void)[] = [];
  /** CREST_COMPRESS=always: the writer waiting for a free compressor. */
  private readonly slotWaiters: (() => void)[] = [];
  private readonly t0 = performance.now();
  private waitedMs = 0;
  private giveUp = false;
  compressedBlocks = 0;
  plainBlocks = 0;

  constructor(private readonly out: DataFile) {
    for (let i = 0; i < COMPRESSORS + 2; i++) this.free.push(native().mmapBuffer(OUT_BYTES));
  }

  /** Counts time the writer sat idle waiting for a compression: the disk could have been writing then. */
  noteWait(ms: number): void {
    this.waitedMs += ms;
    const elapsed = performance.now() - this.t0;
    // Judged once the pipeline runs (the first frame always keeps the writer waiting a moment).
    if (this.blocks.length >= 32 && elapsed > 100 && this.waitedMs > MAX_WAIT_SHARE * elapsed) this.giveUp = true;
  }

  private async takeOut(): Promise<Buffer> {
    const b = this.free.pop();
    if (b) return b;
    return new Promise<Buffer>((resolve) => this.waiters.push(resolve));
  }

  private giveBack(b: Buffer): void {
    const w = this.waiters.shift();
    if (w) w(b);
    else this.free.push(b);
  }

  /**
   * Takes buf[0, len) (whole pages); resolves once its blocks are queued,
   * to a promise that settles when buf may be reused (all written).
   */
  async addChunk(buf: Buffer, len: number): Promise<{ written: Promise<void> }> {
    // Adjacent plain blocks go out in one write, as an uncompressed checkpoint's would.
    let plainOff = 0;
    let plainLen = 0;
    const flushPlain = (): void => {
      if (plainLen === 0) return;
      const [o, n] = [plainOff, plainLen];
      this.chain = this.chain.then(() => this.out.writeAsync(buf, o, n));
      plainLen = 0;
    };
    for (let off = 0; off < len; off += BLOCK_BYTES) {
      const n = Math.min(BLOCK_BYTES, len - off);
      const entry: [number, number] = [n / PAGE_SIZE, 0];
      this.blocks.push(entry);
      const compress = this.always || (this.busy < COMPRESSORS && !this.giveUp);
      if (!compress) {
        this.plainBlocks++;
        if (plainLen === 0) plainOff = off;
        plainLen += n;
      } else {
        flushPlain();
        // Waits for a compressor to finish (not polling: on a busy machine polling takes the very core the compressor needs).
        if (this.always) while (this.busy >= COMPRESSORS) await new Promise<void>((r) => this.slotWaiters.push(r));
        const outBuf = await this.takeOut();
        this.busy++;
        this.compressedBlocks++;
        const frame = native()
          .zstdCompressAsync(buf, off, n, outBuf, 0, outBuf.length, COMPRESS_LEVEL)
          .finally(() => {
            this.busy--;
            this.slotWaiters.shift()?.();
          });
        frame.catch(() => undefined); // reported through the chain
        this.chain = this.chain.then(async () => {
          const t = performance.now();
          const size = await frame;
          this.noteWait(performance.now() - t);
          entry[1] = size;
          const padded = alignUp(size);
          outBuf.fill(0, size, padded);
          await this.out.writeAsync(outBuf, 0, padded);
          this.giveBack(outBuf);
        });
      }
    }
    flushPlain();
    const written = this.chain;
    written.catch(() => undefined); // awaited by the copier and by finish()
    return { written };
  }

  /** Waits for every block to be written. */
  finish(): Promise<void> {
    return this.chain;
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
  /** Read buffers in turn; each may be reused once its pages are written (and compressed). */
  private readonly ring: Buffer[];
  private readonly released: Promise<void>[];
  private readonly views: Buffer[][];
  private readonly hashes = new HashList();
  private parent: ParentProcess | null;
  private cursor = 0;
  /** Pages gathered in the current buffer, not yet written. */
  private fill = 0;
  private readonly sink: CompressedSink | null;
  storedPages = 0;
  inheritedPages = 0;
  zeroPages = 0;
  /** Pages read (and hashed) from the process. */
  readPages = 0;
  /** Pages kernel write tracking vouched were unchanged (not read). */
  trackedPages = 0;

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
    // Compressing reads from the read buffers while the next chunks are read: more of them.
    this.ring = this.sink ? [...bufs, ...Array.from({ length: 2 }, () => native().mmapBuffer(bufs[0].length))] : [...bufs];
    this.released = this.ring.map(() => Promise.resolve());
    this.views = this.ring.map((b) => Array.from({ length: b.length / PAGE_SIZE }, (_, i) => b.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE)));
  }

  /** The parent's hash of absolute page `p`, or undefined when the parent does not have it. */
  private parentHash(p: number): bigint | undefined {
    const par = this.parent;
    if (!par) return undefined;
    while (this.cursor < par.pages.length && par.pages[this.cursor]! < p) this.cursor++;
    return par.pages[this.cursor] === p ? par.hashes[this.cursor] : undefined;
  }

  /**
   * Copies one mapping's candidate pages; returns its stored and inherited
   * runs. `unchanged` (kernel write tracking, ./uffdwp.ts): absolute pages
   * not written since the parent; those are not read: inherited where the
   * parent has them, else still the zero page they were (left out).
   */
  async copy(
    start: number,
    candidates: [number, number][],
    anonymous: boolean,
    unchanged?: IntervalCursor,
  ): Promise<{ runs: [number, number][]; inherited: [number, number][] }> {
    const runs = new RunList();
    const inherited = new RunList();
    const base = start / PAGE_SIZE;
    const tracked = unchanged && this.parent ? unchanged : null;
    for (const [first, count] of candidates) {
      let page = first;
      const end = first + count;
      while (page < end) {
        const [vouched, n] = tracked ? tracked.span(base + page, base + end) : [false, end - page];
        if (vouched) this.keepUnchanged(base, page, n, inherited);
        else await this.readRun(start, page, n, anonymous, runs, inherited);
        page += n;
      }
    }
    if (inherited.runs.length > 0) this.tracker.inheritedAny = true;
    return { runs: runs.runs, inherited: inherited.runs };
  }

  /**
   * Pages the kernel vouches were not written: the parent's hashes copied in
   * runs, no read; a page the parent lacks was zero then and is zero now.
   */
  private keepUnchanged(base: number, page: number, n: number, inherited: RunList): void {
    const par = this.parent!;
    const len = par.pages.length;
    let p = base + page;
    const end = p + n;
    while (this.cursor < len && par.pages[this.cursor]! < p) this.cursor++;
    while (p < end) {
      const c = this.cursor;
      if (c < len && par.pages[c] === p) {
        // A run the parent has page for page.
        let k = c + 1;
        while (k < len && par.pages[k] === p + (k - c) && p + (k - c) < end) k++;
        const cnt = k - c;
        this.hashes.pushRange(par.hashes, c, cnt);
        inherited.addRun(p - base, cnt);
        this.inheritedPages += cnt;
        this.cursor = k;
        p += cnt;
      } else {
        const next = c < len ? Math.min(end, par.pages[c]!) : end;
        this.zeroPages += next - p;
        p = next;
      }
    }
    this.trackedPages += n;
    progressSink()?.add(n * PAGE_SIZE);
  }

  /**
   * Reads and hashes pages [page, page+count) of the mapping at `start`:
   * zero ones dropped, ones equal to the parent's inherited, the rest
   * appended to the current buffer, written once it is full (scattered
   * written pages, as kernel tracking finds them, go out in 8 MiB writes,
   * not one write each).
   */
  private async readRun(start: number, page: number, count: number, anonymous: boolean, runs: RunList, inherited: RunList): Promise<void> {
    const base = start / PAGE_SIZE;
    let left = count;
    while (left > 0) {
      const buf = this.ring[this.which]!;
      const views = this.views[this.which]!;
      // This buffer's pages from the last round must be written (and compressed) first.
      if (this.fill === 0) await this.released[this.which];
      const at = this.fill;
      const n = Math.min(left, views.length - at);
      this.read(start + page * PAGE_SIZE, buf, n * PAGE_SIZE, at * PAGE_SIZE);
      this.readPages += n;
      let kept = at;
      for (let i = at; i < at + n; i++) {
        const v = views[i]!;
        const h = xxh64(v);
        if (anonymous && h === ZERO_HASH && v.equals(ZERO_PAGE)) {
          this.zeroPages++;
          continue;
        }
        const idx = page + i - at;
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
      this.storedPages += kept - at;
      this.fill = kept;
      if (this.fill === views.length) await this.flush();
      progressSink()?.add(n * PAGE_SIZE);
      page += n;
      left -= n;
    }
  }

  /** Writes the pages gathered in the current buffer (compressed, when compressing) and moves to the next buffer. */
  private async flush(): Promise<void> {
    if (this.fill === 0) return;
    const buf = this.ring[this.which]!;
    const len = this.fill * PAGE_SIZE;
    if (this.sink) {
      this.released[this.which] = (await this.sink.addChunk(buf, len)).written;
    } else {
      await this.pending;
      this.pending = this.out.writeAsync(buf, 0, len);
      this.released[this.which] = this.pending;
    }
    this.which = (this.which + 1) % this.ring.length;
    this.fill = 0;
  }

  private read(addr: number, buf: Buffer, len: number, at = 0): void {
    let got = 0;
    while (got < len) {
      // process_vm_readv is the cheaper copy; it refuses pages the process
      // itself could not read (PROT_NONE), which /proc/PID/mem still reads.
      let r = 0;
      try {
        r = native().processVmReadv(this.pid, addr + got, buf, at + got, len - got);
      } catch {
        r = 0;
      }
      if (r <= 0) r = readSync(this.memFd, buf, at + got, len - got, addr + got);
      if (r <= 0) throw new CrestError('MEM_READ', `could not read memory at 0x${(addr + got).toString(16)}`);
      got += r;
    }
  }

  /** Waits for every write (after compressing what is left, when compressing). */
  async drain(): Promise<void> {
    await this.flush();
    await this.sink?.finish();
    await this.pending;
  }

  /** Blocks of the compressed pages file, for the manifest; undefined when not compressing. */
  compression(): { codec: 'zstd'; blocks: [number, number][] } | undefined {
    return this.sink ? { codec: 'zstd', blocks: this.sink.blocks } : undefined;
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
