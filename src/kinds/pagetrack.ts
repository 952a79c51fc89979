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

/** What dump() is told to do about page tracking. */
export interface PageTrackingOptions {
  /** The image to be incremental on (its directory); absent: a full image, with hashes. */
  parentDir?: string;
}

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
}

/**
 * Loads what an incremental dump into `childDir` needs of the image in
 * `parentDir`: its page hashes (checked against their CRC-32). A parent
 * without hashes (a version 1 image, `crest dump`) cannot serve: null.
 */
export function openPageTracking(opts: PageTrackingOptions, childDir: string): PageTracking {
  if (!opts.parentDir) return { parent: null, inheritedAny: false };
  const dir = path.resolve(opts.parentDir);
  const m = readImage(dir, { verifyData: false });
  const byPid = new Map<number, ParentProcess>();
  for (const proc of m.processes) {
    if (!proc.hashesFile) return { parent: null, inheritedAny: false };
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
  return { parent: { dir, ref: { dir: path.relative(path.resolve(childDir), dir), checksum: m.checksum, createdAt: m.createdAt }, byPid }, inheritedAny: false };
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
        if (kept > 0) {
          await this.pending;
          this.pending = this.out.writeAsync(buf, 0, kept * PAGE_SIZE);
          this.which ^= 1;
          this.storedPages += kept;
        }
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

  drain(): Promise<void> {
    return this.pending;
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
