// Incremental images (format version 2): an image may store only the pages
// that changed since its parent and name the rest `inherited`. Reading one
// means reading its whole chain of parents, each complete and the very image
// the child was taken on (same manifest checksum), and finding, for every
// page the leaf needs, the image that stores it. All of it is checked here,
// before a restore creates any process.
import * as path from 'node:path';
import { CrestError } from '../sys/errors.js';
import { readImage, type ReadImageOptions } from './reader.js';
import type { Manifest, ProcessImage, VmaImage } from './schema.js';
import { PAGE_SIZE } from './validate.js';

/** Longest chain crest follows (a loop of parents, or a runaway chain, is refused). */
export const MAX_CHAIN = 1000;

/** One image of a chain: leaf first, then its parent, its parent's parent ... */
export interface ChainLink {
  dir: string;
  manifest: Manifest;
}

/** Pages of the leaf's memory to be loaded from one image of the chain. */
export interface PagePiece {
  /** Address of the first page. */
  addr: number;
  pages: number;
  /** Index into the chain (0: the leaf). */
  link: number;
  /** Byte offset of the first page in that image's pages file of the same process. */
  offset: number;
}

/**
 * Reads the image in `dir` and every parent it depends on, leaf first. The
 * leaf is read with `opts`; parents with every byte checked, except the
 * files `opts.verifiedByCaller` names (a restore checks every pages file of
 * the chain as it streams it: kinds/layers.ts). A parent
 * that is missing, incomplete, damaged or not the one the child was taken on
 * is refused with IMAGE_PARENT_MISSING / IMAGE_PARENT_DAMAGED /
 * IMAGE_PARENT_MISMATCH, naming both.
 */
export function readImageChain(dir: string, opts: ReadImageOptions = {}): ChainLink[] {
  const chain: ChainLink[] = [{ dir, manifest: readImage(dir, opts) }];
  chains.set(chain[0]!.manifest, chain);
  const seen = new Set([path.resolve(dir)]);
  for (;;) {
    const child = chain[chain.length - 1]!;
    const ref = child.manifest.parent;
    if (!ref) break;
    const pdir = path.resolve(child.dir, ref.dir);
    if (seen.has(pdir) || chain.length > MAX_CHAIN) {
      throw new CrestError('IMAGE_INVALID', `${child.dir}: its chain of parent images loops or is longer than ${MAX_CHAIN} (at ${pdir})`);
    }
    seen.add(pdir);
    let m: Manifest;
    try {
      m = readImage(pdir, { verifyData: opts.verifyData ?? true, verifiedByCaller: opts.verifiedByCaller });
    } catch (e) {
      const code = (e as CrestError).code;
      const missing = code === 'IMAGE_NOT_FOUND' || code === 'IMAGE_NOT_AN_IMAGE' || code === 'IMAGE_INCOMPLETE';
      throw new CrestError(
        missing ? 'IMAGE_PARENT_MISSING' : 'IMAGE_PARENT_DAMAGED',
        `${child.dir} is incremental on ${pdir}, which ${missing ? 'is missing or incomplete' : 'is damaged'}: ${(e as Error).message}`,
        { cause: e },
      );
    }
    if (m.checksum !== ref.checksum) {
      throw new CrestError(
        'IMAGE_PARENT_MISMATCH',
        `${child.dir} is incremental on ${pdir}, but that is not the image it was taken on (manifest checksum ${m.checksum}, expected ${ref.checksum}): it was replaced`,
      );
    }
    chain.push({ dir: pdir, manifest: m });
  }
  // Every inherited page must be found further up: checked for every process now.
  for (const proc of chain[0]!.manifest.processes) {
    for (const v of proc.vmas) pagePieces(chain, proc.pid, v);
  }
  return chain;
}

const chains = new WeakMap<Manifest, ChainLink[]>();

/** The chain readImageChain read for this (leaf) manifest, so that restore reads it once. */
export function chainOf(m: Manifest): ChainLink[] | undefined {
  return chains.get(m);
}

/** Absolute page intervals of one process in one image: stored (with file offsets) and inherited. */
interface PageIndex {
  stored: { start: number; end: number; off: number }[];
  inherited: { start: number; end: number }[];
}

const indexCache = new WeakMap<Manifest, Map<number, PageIndex>>();

function pageIndex(m: Manifest, pid: number): PageIndex | null {
  let byPid = indexCache.get(m);
  if (!byPid) {
    byPid = new Map();
    indexCache.set(m, byPid);
  }
  const cached = byPid.get(pid);
  if (cached) return cached;
  const proc = m.processes.find((p) => p.pid === pid);
  if (!proc) return null;
  const idx = buildIndex(proc);
  byPid.set(pid, idx);
  return idx;
}

function buildIndex(proc: ProcessImage): PageIndex {
  const idx: PageIndex = { stored: [], inherited: [] };
  let off = 0;
  for (const v of proc.vmas) {
    const base = v.start / PAGE_SIZE;
    for (const [first, count] of v.runs) {
      idx.stored.push({ start: base + first, end: base + first + count, off });
      off += count * PAGE_SIZE;
    }
    for (const [first, count] of v.inherited ?? []) idx.inherited.push({ start: base + first, end: base + first + count });
  }
  return idx;
}

/** Index of the first interval ending after `page` (intervals sorted and disjoint). */
function firstEndingAfter(list: { start: number; end: number }[], page: number): number {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1; // list indices, not addresses: small integers
    if (list[mid]!.end <= page) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Where the pages [a, b) (absolute page numbers) of process `pid` come from, starting at chain link k. */
function resolve(chain: ChainLink[], k: number, pid: number, a: number, b: number, out: PagePiece[]): void {
  const link = chain[k];
  const idx = link ? pageIndex(link.manifest, pid) : null;
  const from = k === 0 ? 'the image' : `parent ${link?.dir ?? '(none)'}`;
  if (!idx) {
    throw new CrestError('IMAGE_PARENT_MISMATCH', `${chain[k - 1]!.dir}: pages of process ${pid} are inherited from ${from}, which has no such process`);
  }
  const pieces: { start: number; end: number; off?: number }[] = [];
  for (let i = firstEndingAfter(idx.stored, a); i < idx.stored.length && idx.stored[i]!.start < b; i++) {
    const s = idx.stored[i]!;
    const lo = Math.max(a, s.start);
    const hi = Math.min(b, s.end);
    pieces.push({ start: lo, end: hi, off: s.off + (lo - s.start) * PAGE_SIZE });
  }
  for (let i = firstEndingAfter(idx.inherited, a); i < idx.inherited.length && idx.inherited[i]!.start < b; i++) {
    const s = idx.inherited[i]!;
    pieces.push({ start: Math.max(a, s.start), end: Math.min(b, s.end) });
  }
  pieces.sort((x, y) => x.start - y.start);
  let at = a;
  for (const p of pieces) {
    if (p.start !== at) break;
    if (p.off !== undefined) out.push({ addr: p.start * PAGE_SIZE, pages: p.end - p.start, link: k, offset: p.off });
    else resolve(chain, k + 1, pid, p.start, p.end, out);
    at = p.end;
  }
  if (at < b) {
    throw new CrestError(
      'IMAGE_PARENT_MISMATCH',
      `${chain[k - 1]!.dir}: page 0x${(at * PAGE_SIZE).toString(16)} of process ${pid} is inherited from ${from}, which does not have it`,
    );
  }
}

/**
 * The pieces that fill mapping `v` of process `pid` of the chain's leaf, in
 * address order: its own stored runs (link 0, in pages-file order) and its
 * inherited pages, found in the parents.
 */
export function pagePieces(chain: ChainLink[], pid: number, v: VmaImage): PagePiece[] {
  // Worked out once: readImageChain checks every mapping, the restore then uses the same pieces.
  const cached = piecesCache.get(v);
  if (cached && cached.chain === chain) return cached.pieces;
  const out: PagePiece[] = [];
  const base = v.start / PAGE_SIZE;
  const runs: [number, number, boolean][] = [
    ...v.runs.map(([f, c]): [number, number, boolean] => [f, c, true]),
    ...(v.inherited ?? []).map(([f, c]): [number, number, boolean] => [f, c, false]),
  ].sort((x, y) => x[0] - y[0]);
  const own = pageIndex(chain[0]!.manifest, pid);
  for (const [first, count, stored] of runs) {
    if (stored) {
      // Own runs: their offsets come from the leaf's index.
      resolveOwn(own!, base + first, base + first + count, out);
    } else {
      if (chain.length < 2) throw new CrestError('IMAGE_PARENT_MISSING', `${chain[0]!.dir}: pages are inherited but the image has no parent`);
      resolve(chain, 1, pid, base + first, base + first + count, out);
    }
  }
  piecesCache.set(v, { chain, pieces: out });
  return out;
}

const piecesCache = new WeakMap<VmaImage, { chain: ChainLink[]; pieces: PagePiece[] }>();

function resolveOwn(idx: PageIndex, a: number, b: number, out: PagePiece[]): void {
  const i = firstEndingAfter(idx.stored, a);
  const s = idx.stored[i]!;
  out.push({ addr: a * PAGE_SIZE, pages: b - a, link: 0, offset: s.off + (a - s.start) * PAGE_SIZE });
}
