// Probes of this process's own memory through /proc/self: where a Buffer
// lives, its pagemap entry, and whether soft-dirty tracking works. JS cannot
// ask a Buffer for its address, so we find it: mark the Buffer with random
// bytes, search the present pages of our writable mappings through
// /proc/self/mem, and confirm the find by changing the Buffer and reading the
// address again.
import { randomFillSync } from 'node:crypto';
import { closeSync, openSync, readSync, writeFileSync } from 'node:fs';
import { type MapEntry, readMaps } from '../proc/index.js';
import { CrestError } from '../sys/errors.js';

export const PAGE_SIZE = 4096;
/** pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst). */
export const PM_PRESENT = 1n << 63n;
export const PM_SWAPPED = 1n << 62n;
export const PM_FILE = 1n << 61n;
export const PM_EXCLUSIVE = 1n << 56n;
export const PM_SOFT_DIRTY = 1n << 55n;
export const PM_PFN_MASK = (1n << 55n) - 1n;

const MARK = 16; // random bytes per mark
const STRIDE = 2048; // a mark every 2 KiB: one of any two neighbours lies inside a page

/** Reads `count` pagemap entries of /proc/self/pagemap starting at `addr` (page aligned). */
export function readPagemap(addr: number, count = 1, fd?: number): BigUint64Array {
  const own = fd === undefined;
  const f = own ? openSync('/proc/self/pagemap', 'r') : fd;
  try {
    const buf = Buffer.alloc(count * 8);
    const got = readSync(f, buf, 0, buf.length, (addr / PAGE_SIZE) * 8);
    if (got !== buf.length) throw new CrestError('PAGEMAP_SHORT', `short read of /proc/self/pagemap at 0x${addr.toString(16)}: ${got} of ${buf.length} bytes`);
    return new BigUint64Array(buf.buffer, buf.byteOffset, count);
  } finally {
    if (own) closeSync(f);
  }
}

function candidates(before: readonly MapEntry[], after: readonly MapEntry[]): MapEntry[] {
  const known = new Set(before.map((m) => `${m.start}-${m.end}`));
  const rw = after.filter((m) => m.read && m.write && !m.shared && !m.vsyscall && (m.path === '' || m.path.startsWith('[')));
  const changed = rw.filter((m) => !known.has(`${m.start}-${m.end}`));
  const same = rw.filter((m) => known.has(`${m.start}-${m.end}`)).sort((a, b) => a.end - a.start - (b.end - b.start));
  return [...changed, ...same];
}

/**
 * The address of `buf`'s first byte, found as described above. `before` is
 * /proc/self/maps read just before `buf` was allocated (new mappings are
 * searched first). `buf` must be at least 3 pages long; its contents are
 * overwritten. Throws CrestError BUFFER_NOT_FOUND when the search fails.
 */
export function locateBuffer(buf: Buffer, before: readonly MapEntry[], maxScanBytes = 1 << 30): number {
  if (buf.length < 3 * PAGE_SIZE) throw new CrestError('BUFFER_NOT_FOUND', 'locateBuffer needs a buffer of at least 3 pages');
  // Marks: 16 random bytes, then the mark's own offset in buf (u32), every STRIDE bytes.
  randomFillSync(buf, 0, MARK);
  buf.writeUInt32LE(0, MARK);
  for (let off = STRIDE; off + MARK + 4 <= buf.length; off += STRIDE) {
    buf.copy(buf, off, 0, MARK);
    buf.writeUInt32LE(off, off + MARK);
  }
  const mark = Buffer.from(buf.subarray(0, MARK));
  const mem = openSync('/proc/self/mem', 'r');
  const pm = openSync('/proc/self/pagemap', 'r');
  try {
    const page = Buffer.alloc(PAGE_SIZE);
    const probe = Buffer.alloc(MARK);
    // A copy of a mark elsewhere (our scratch page, `mark` itself) cannot follow
    // a change made to buf afterwards: bytes between two marks get new random
    // contents, and must read back the same at the candidate address.
    const CHECK = MARK + 4;
    const confirm = (base: number): boolean => {
      randomFillSync(buf, CHECK, MARK);
      try {
        return readSync(mem, probe, 0, MARK, base + CHECK) === MARK && probe.equals(buf.subarray(CHECK, CHECK + MARK));
      } catch {
        return false;
      }
    };
    let scanned = 0;
    for (const m of candidates(before, readMaps('self'))) {
      const CHUNK = 512;
      for (let a = m.start; a < m.end; a += CHUNK * PAGE_SIZE) {
        const n = Math.min(CHUNK, (m.end - a) / PAGE_SIZE);
        let entries: BigUint64Array;
        try {
          entries = readPagemap(a, n, pm);
        } catch {
          break; // the mapping went away
        }
        for (let i = 0; i < n; i++) {
          if ((entries[i]! & PM_PRESENT) === 0n) continue;
          const addr = a + i * PAGE_SIZE;
          let got: number;
          try {
            got = readSync(mem, page, 0, PAGE_SIZE, addr);
          } catch {
            continue; // VM_IO and the like
          }
          scanned += got;
          for (let at = page.indexOf(mark); at >= 0 && at + MARK + 4 <= got; at = page.indexOf(mark, at + 1)) {
            const off = page.readUInt32LE(at + MARK);
            if (off % STRIDE !== 0 || off >= buf.length) continue;
            const base = addr + at - off;
            if (confirm(base)) return base;
          }
          if (scanned > maxScanBytes) {
            throw new CrestError('BUFFER_NOT_FOUND', `buffer not found after scanning ${scanned} bytes of /proc/self/mem`);
          }
        }
      }
    }
  } finally {
    closeSync(mem);
    closeSync(pm);
  }
  throw new CrestError('BUFFER_NOT_FOUND', 'buffer not found in any writable private mapping of /proc/self/maps');
}

/** Result of the pagemap probe. */
export interface PagemapProbe {
  /** Page-aligned address of the page probed. */
  addr: number;
  present: boolean;
  pfn: bigint;
  entry: bigint;
}

/** Result of the soft-dirty probe. */
export interface SoftDirtyProbe {
  /** Bit 55 on the page written after clear_refs. */
  writtenDirty: boolean;
  /** Bit 55 on a page left alone after clear_refs (must be clear). */
  untouchedDirty: boolean;
  /** Writing "4" to clear_refs worked. */
  cleared: boolean;
  /** errno name when clear_refs could not be written. */
  clearError?: string;
  available: boolean;
}

/** A Buffer and the address of its first whole page; the Buffer must stay referenced while used. */
export interface LocatedBuffer {
  buf: Buffer;
  base: number;
  /** Page-aligned addresses of whole pages inside buf. */
  pages: number[];
}

/** Allocates a Buffer of `pages` pages outside the V8 heap, fills it, and finds its address. */
export function allocLocated(pages = 64): LocatedBuffer {
  const before = readMaps('self');
  const buf = Buffer.allocUnsafeSlow(pages * PAGE_SIZE);
  buf.fill(0xa5);
  const base = locateBuffer(buf, before);
  const first = Math.ceil(base / PAGE_SIZE) * PAGE_SIZE;
  const out: number[] = [];
  for (let p = first; p + PAGE_SIZE <= base + buf.length; p += PAGE_SIZE) out.push(p);
  return { buf, base, pages: out };
}

/** Writes bytes to the page at `addr` of a located buffer. */
export function touchPage(lb: LocatedBuffer, addr: number, value: number): void {
  const off = addr - lb.base;
  lb.buf.fill(value, off, off + PAGE_SIZE);
}

/** Fills a page of a located buffer and reads its pagemap entry. */
export function probePagemap(lb: LocatedBuffer): PagemapProbe {
  const addr = lb.pages[1]!;
  touchPage(lb, addr, 0x5a);
  const entry = readPagemap(addr)[0]!;
  return { addr, present: (entry & PM_PRESENT) !== 0n, pfn: entry & PM_PFN_MASK, entry };
}

/**
 * Soft-dirty, tried: write "4" to /proc/self/clear_refs, write one page that
 * was already present, and read bit 55 of it and of a page not written since.
 */
export function probeSoftDirty(lb: LocatedBuffer): SoftDirtyProbe {
  const written = lb.pages[2]!;
  const untouched = lb.pages[3]!;
  touchPage(lb, written, 1);
  touchPage(lb, untouched, 2);
  try {
    writeFileSync('/proc/self/clear_refs', '4');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? String(e);
    return { writtenDirty: false, untouchedDirty: false, cleared: false, clearError: code, available: false };
  }
  touchPage(lb, written, 3);
  const [w, u] = [readPagemap(written)[0]!, readPagemap(untouched)[0]!];
  const writtenDirty = (w & PM_SOFT_DIRTY) !== 0n;
  const untouchedDirty = (u & PM_SOFT_DIRTY) !== 0n;
  return { writtenDirty, untouchedDirty, cleared: true, available: writtenDirty && !untouchedDirty };
}
