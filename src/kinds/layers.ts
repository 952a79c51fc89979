// Restoring an incremental image: its memory comes from a chain of images
// (the leaf and its parents, image/chain.ts), each page from the one image
// that holds its newest copy. Every image's pages file of the process is
// read once, front to back, in large reads (the next on the libuv pool while
// this one is placed; O_DIRECT where the filesystem allows), its CRC-32 kept
// over every byte; the pages the leaf takes from it are written straight
// from the read buffer into the husk. No page is written twice, no file is
// read twice (the parents' pages files are not checked whole beforehand:
// each is checked as it streams, and a mismatch ends the restore before any
// restored code runs). A compressed file is read the same way, in runs of
// whole blocks; only frames holding needed pages are decompressed. A single
// compressed image is restored this way too (a chain of one).
import { closeSync, constants as fsConstants, openSync, read as fsRead } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import type { ChainLink, PagePiece } from '../image/chain.js';
import type { ProcessImage } from '../image/schema.js';
import { native } from '../sys/native.js';
import { PAGE_SIZE } from '../sys/constants.js';
import { CrestError } from '../sys/errors.js';

const hexa = (n: number): string => '0x' + n.toString(16);

/** Writes buf[at, at+n) into the husk's memory at addr. */
export function writeHusk(pid: number, addr: number, buf: Buffer, at: number, n: number): void {
  let w = 0;
  while (w < n) {
    const k = native().processVmWritev(pid, addr + w, buf, at + w, n - w);
    if (k <= 0) throw new CrestError('RESTORE_MEMORY', `could not write the husk's memory at ${hexa(addr + w)}`);
    w += k;
  }
}

/** Where each block of a compressed pages file is: its first stored page, file offset, size on disk. */
interface BlockIndex {
  firstPage: number[];
  fileOff: number[];
  /** [pages, frame bytes or 0 for plain pages] as the manifest has them. */
  blocks: [number, number][];
}

function blockIndex(blocks: [number, number][]): BlockIndex {
  const firstPage: number[] = [];
  const fileOff: number[] = [];
  let p = 0;
  let o = 0;
  for (const [pages, bytes] of blocks) {
    firstPage.push(p);
    fileOff.push(o);
    p += pages;
    o += bytes === 0 ? pages * PAGE_SIZE : Math.ceil(bytes / PAGE_SIZE) * PAGE_SIZE;
  }
  return { firstPage, fileOff, blocks };
}

/** The plain pages of block b, given its bytes on disk (decompressed into `into` when it is a frame). */
function plainBlock(ix: BlockIndex, b: number, onDisk: Buffer, into: Buffer, what: string): Buffer {
  const [pages, bytes] = ix.blocks[b]!;
  if (bytes === 0) return onDisk;
  let n: number;
  try {
    n = native().zstdDecompress(onDisk, 0, bytes, into, 0, into.length);
  } catch (e) {
    throw new CrestError('IMAGE_CHECKSUM', `${what}: block ${b} does not decompress (${(e as Error).message}); the image is damaged`, { cause: e });
  }
  if (n !== pages * PAGE_SIZE) throw new CrestError('IMAGE_CHECKSUM', `${what}: block ${b} holds ${n} bytes, not ${pages} pages; the image is damaged`);
  return into;
}

/**
 * Writes the parts of `pieces` (sorted by offset) that fall in stored bytes
 * [from, from+n), held in buf[at...]; returns the index of the first piece
 * not finished.
 */
function scatter(pid: number, pieces: PagePiece[], i: number, from: number, n: number, buf: Buffer, at: number, written: { bytes: number }): number {
  const to = from + n;
  while (i < pieces.length) {
    const p = pieces[i]!;
    const pEnd = p.offset + p.pages * PAGE_SIZE;
    if (p.offset >= to) break;
    const a = Math.max(p.offset, from);
    const b = Math.min(pEnd, to);
    if (b > a) {
      writeHusk(pid, p.addr + (a - p.offset), buf, at + (a - from), b - a);
      written.bytes += b - a;
    }
    if (pEnd > to) break;
    i++;
  }
  return i;
}

/** Opens a pages file for streaming: O_DIRECT where the filesystem allows (its blocks are whole pages). */
function openStream(path: string): number {
  try {
    return openSync(path, fsConstants.O_RDONLY | fsConstants.O_DIRECT);
  } catch {
    return openSync(path, 'r');
  }
}

/** Reads file bytes [off, off+len) into buf on the libuv pool; resolves to the count read (short at the end of the file). */
function readAt(fd: number, buf: Buffer, off: number, len: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const step = (done: number): void => {
      if (done >= len) return resolve(done);
      fsRead(fd, buf, done, len - done, off + done, (err, n) => {
        if (err) return reject(err);
        if (n === 0) return resolve(done);
        step(done + n);
      });
    };
    step(0);
  });
}

/**
 * Streams a file in chunks of up to one buffer, the next read running while
 * `each` handles this one; `cut(off)` says where the chunk starting at off
 * may end (whole blocks of a compressed file). Returns the CRC-32 of it all.
 */
async function streamChunks(path: string, size: number, bufs: [Buffer, Buffer], cut: (off: number) => number, each: (buf: Buffer, off: number, n: number) => void): Promise<string> {
  const fd = openStream(path);
  try {
    let crc = 0;
    let which = 0;
    let off = 0;
    let n = size > 0 ? cut(0) : 0;
    let ahead: Promise<number> | null = size > 0 ? readAt(fd, bufs[0], 0, n) : null;
    while (off < size) {
      const got = await ahead!;
      if (got !== n) throw new CrestError('IMAGE_TRUNCATED', `pages file ${path} ended early at offset ${off + got}`);
      const buf = bufs[which]!;
      const next = off + n;
      const nextN = next < size ? cut(next) : 0;
      ahead = next < size ? readAt(fd, bufs[which ^ 1]!, next, nextN) : null;
      ahead?.catch(() => 0);
      crc = crc32(buf.subarray(0, n), crc);
      each(buf, off, n);
      which ^= 1;
      off = next;
      n = nextN;
    }
    return (crc >>> 0).toString(16).padStart(8, '0');
  } finally {
    closeSync(fd);
  }
}

/** A plain layer: its pages written from the read buffers as they stream. */
async function streamRaw(path: string, size: number, pieces: PagePiece[], pid: number, bufs: [Buffer, Buffer], written: { bytes: number }): Promise<string> {
  const chunk = bufs[0].length;
  let i = 0;
  const crc = await streamChunks(path, size, bufs, (off) => Math.min(chunk, size - off), (buf, off, n) => {
    i = scatter(pid, pieces, i, off, n, buf, 0, written);
  });
  if (i < pieces.length) throw new CrestError('IMAGE_TRUNCATED', `pages file ${path} has no page at offset ${pieces[i]!.offset}`);
  return crc;
}

/**
 * A compressed layer, streamed in runs of whole blocks: plain blocks placed
 * straight from the read buffer, frames decompressed only when they hold
 * needed pages.
 */
async function streamCompressed(path: string, size: number, c: { blocks: [number, number][] }, pieces: PagePiece[], pid: number, bufs: [Buffer, Buffer], written: { bytes: number }): Promise<string> {
  const ix = blockIndex(c.blocks);
  const onDisk = (b: number): number => (b + 1 < ix.fileOff.length ? ix.fileOff[b + 1]! : size) - ix.fileOff[b]!;
  const into = Buffer.allocUnsafe(Math.max(1, ...c.blocks.map(([p]) => p)) * PAGE_SIZE);
  const what = `compressed pages file ${path}`;
  const chunk = bufs[0].length;
  // Block index by file offset: each chunk ends at a block boundary.
  const blockAt = new Map(ix.fileOff.map((o, b) => [o, b]));
  let i = 0;
  const crc = await streamChunks(
    path,
    size,
    bufs,
    (off) => {
      let b = blockAt.get(off);
      if (b === undefined) throw new CrestError('IMAGE_INVALID', `${what}: no block starts at offset ${off}`);
      if (onDisk(b) > chunk) throw new CrestError('IMAGE_INVALID', `${what}: block ${b} is ${onDisk(b)} bytes, more than crest reads at once (${chunk})`);
      let n = 0;
      // At least one block, then whole blocks while they fit.
      do n += onDisk(b++);
      while (b < ix.blocks.length && n + onDisk(b) <= chunk);
      return n;
    },
    (buf, off, n) => {
      for (let b = blockAt.get(off)!; b < ix.blocks.length && ix.fileOff[b]! < off + n; b++) {
        const from = ix.firstPage[b]! * PAGE_SIZE;
        const len = ix.blocks[b]![0] * PAGE_SIZE;
        if (i >= pieces.length || pieces[i]!.offset >= from + len) continue;
        const at = ix.fileOff[b]! - off;
        const plain = ix.blocks[b]![1] === 0 ? buf.subarray(at, at + len) : plainBlock(ix, b, buf.subarray(at, at + onDisk(b)), into, what);
        i = scatter(pid, pieces, i, from, len, plain, 0, written);
      }
    },
  );
  if (i < pieces.length) throw new CrestError('IMAGE_TRUNCATED', `${what} has fewer blocks than its runs need`);
  return crc;
}

/**
 * Fills the husk's memory from every image of the chain: `pieces` are the
 * leaf's (pagePieces of each mapping to fill), each naming the image that
 * holds it. Each image's pages file of process `pid` is streamed once and
 * its CRC-32 checked against its manifest. `onBytes` reports progress.
 */
export async function loadLayers(chain: ChainLink[], pid: number, huskPid: number, pieces: PagePiece[], bufs: [Buffer, Buffer], onBytes?: (n: number) => void): Promise<void> {
  const byLink: PagePiece[][] = chain.map(() => []);
  for (const p of pieces) byLink[p.link]!.push(p);
  for (let k = 0; k < chain.length; k++) {
    const link = chain[k]!;
    const proc: ProcessImage | undefined = link.manifest.processes.find((p) => p.pid === pid);
    if (!proc) continue; // pagePieces found every needed page: this image has none for the process
    const mine = byLink[k]!.sort((a, b) => a.offset - b.offset);
    // Nothing needed from this image (every page of it superseded): not read at all.
    if (mine.length === 0) continue;
    const path = join(link.dir, proc.pagesFile);
    const entry = link.manifest.files[proc.pagesFile];
    if (!entry) throw new CrestError('IMAGE_INVALID', `${link.dir}: ${proc.pagesFile} is not listed in its manifest`);
    const written = { bytes: 0 };
    const got = proc.compression ? await streamCompressed(path, entry.size, proc.compression, mine, huskPid, bufs, written) : await streamRaw(path, entry.size, mine, huskPid, bufs, written);
    onBytes?.(written.bytes);
    if (got !== entry.crc32) {
      throw new CrestError(
        k === 0 ? 'IMAGE_CHECKSUM' : 'IMAGE_PARENT_DAMAGED',
        `pages file ${path} is corrupted (CRC-32 ${got}, its image says ${entry.crc32}); the restore was abandoned before the process ran`,
      );
    }
  }
}
