// Memory: every mapping with its address, protection, backing and flags, and
// the contents of the pages that cannot be had elsewhere (anonymous pages,
// and pages of private file mappings that were written). Restore maps each
// area at its address and reads the stored pages straight from the image into
// the husk (an injected pread64: one kernel copy, no trip through crest).
// Memory shared beyond one mapping (memfds, deleted files, shared anonymous
// memory between processes) is one object again at restore: ./memshare.ts.
import { accessSync, closeSync, constants as fsConstants, openSync, read as fsRead, readFileSync, readSync, statSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { dirname, join } from 'node:path';
import { readMaps, readSmaps, type SmapsEntry } from '../proc/index.js';
import { native } from '../sys/native.js';
import type { DataFile } from '../image/writer.js';
import { MADV, MAP, MREMAP, O, PAGE_SIZE, PROT, SYS } from '../sys/constants.js';
import { CrestError } from '../sys/errors.js';
import type { VmaImage } from '../image/schema.js';
import { fileIdentity, verifyFile } from './fileid.js';
import { HashingCopier, IntervalCursor } from './pagetrack.js';
import { prepareTracker } from './uffdwp.js';
import { progressSink } from '../progress.js';
import { chainOf, pagePieces, type PagePiece } from '../image/chain.js';
import { loadLayers } from './layers.js';
import { unsupported, type DumpContext, type Kind, type RestoreContext } from './types.js';
import { collectResidency, objectFd, objectOf, preflightObject, sharedCandidates } from './memshare.js';

type VmaKind = VmaImage['kind'];
const SPECIAL: ReadonlySet<string> = new Set(['vdso', 'vvar', 'vvar_vclock']);

/** How a mapping is captured, or why it cannot be. */
function classify(e: SmapsEntry): VmaKind | 'skip' | { why: string } {
  if (e.vsyscall || e.path === '[vsyscall]') return 'skip';
  if (e.path === '[vdso]') return 'vdso';
  if (e.path === '[vvar]') return 'vvar';
  if (e.path === '[vvar_vclock]') return 'vvar_vclock';
  const anonLabel = e.path === '' || e.path === '[heap]' || e.path === '[stack]' || e.path.startsWith('[anon:');
  if (anonLabel) return e.shared ? 'shmem-anon' : 'anon';
  if (e.shared && e.deleted && e.path === '/dev/zero') return 'shmem-anon';
  if (e.path.startsWith('[')) return { why: `special mapping ${e.path} is not supported` };
  if (e.path.startsWith('/SYSV')) return { why: 'SysV shared memory is not supported yet' };
  if ((e.sizes.KernelPageSize ?? 4) > 4) return { why: `${e.path} lives in huge pages (hugetlbfs), which is not supported yet` };
  if (e.path.startsWith('/memfd:')) return 'memfd';
  if (e.deleted) {
    // A shared mapping comes back on an unnamed file in the same directory; a private one as anonymous memory.
    if (e.shared && !writableDir(dirname(e.path))) return { why: `mapped file ${e.path} was deleted, and its directory is gone or not writable, so it could not be made again there` };
    return 'deleted';
  }
  return 'file';
}

function writableDir(dir: string): boolean {
  try {
    if (!statSync(dir).isDirectory()) return false;
    accessSync(dir, fsConstants.W_OK);
    return true;
  } catch {
    return false;
  }
}

function protOf(s: string): number {
  return (s[0] === 'r' ? PROT.READ : 0) | (s[1] === 'w' ? PROT.WRITE : 0) | (s[2] === 'x' ? PROT.EXEC : 0);
}

const hexa = (n: number): string => '0x' + n.toString(16);

export const memory: Kind = {
  name: 'memory',
  check(ctx) {
    for (const e of readSmaps(ctx.hostPid)) {
      const k = classify(e);
      if (typeof k === 'object') throw unsupported(ctx.hostPid, `mapping ${hexa(e.start)}-${hexa(e.end)}`, k.why);
    }
  },
  dumpInjected(ctx) {
    // Kernel write tracking: which pages were written since the parent, and the tracker armed for the next checkpoint.
    prepareTracker(ctx);
    // Pages of shared memory objects in memory but not mapped here (mincore): asked from inside the process.
    collectResidency(ctx);
  },
  dump(ctx) {
    return dumpMemory(ctx);
  },
};

/** Two page-aligned 8 MiB buffers, reused across dumps: one fills while the other is written. */
let ioBuffers: [Buffer, Buffer] | undefined;
export function buffers(): [Buffer, Buffer] {
  ioBuffers ??= [native().mmapBuffer(IO_CHUNK), native().mmapBuffer(IO_CHUNK)];
  return ioBuffers;
}
const IO_CHUNK = 8 * 1024 * 1024;

/** Reads the mappings, decides which pages to keep (pagemap), and streams them to the pages file. */
async function dumpMemory(ctx: DumpContext): Promise<void> {
  const pid = ctx.hostPid;
  const vmas: VmaImage[] = [];
  const pagemapFd = openSync(`/proc/${pid}/pagemap`, 'r');
  const memFd = ctx.thread.mem();
  const pagesName = `pages-${ctx.nsPid}.img`;
  const out = ctx.writer.openData(pagesName, { direct: true });
  const copier = new PageCopier(pid, memFd, out);
  // Incremental checkpoints: pages hashed, compared with the parent's (kinds/pagetrack.ts).
  const hasher = ctx.pageTracking ? new HashingCopier(pid, memFd, out, buffers(), ctx.pageTracking, ctx.nsPid) : null;
  // Pages the kernel vouches were not written since the parent (private anonymous memory only): not read.
  const tracker = ctx.pageTracking?.uffd?.procs.get(ctx.nsPid);
  const unchanged = tracker?.unchanged ? new IntervalCursor(tracker.unchanged) : undefined;
  const pmBuf = Buffer.allocUnsafe(8 * 65536);
  progressSink()?.start('checkpoint', anonRss(pid));
  try {
    for (const e of readSmaps(pid)) {
      const kind = classify(e);
      if (kind === 'skip') continue;
      if (typeof kind === 'object') throw unsupported(pid, `mapping ${hexa(e.start)}-${hexa(e.end)}`, kind.why);
      const vma: VmaImage = {
        start: e.start,
        end: e.end,
        prot: e.perms.slice(0, 3),
        shared: e.shared,
        kind,
        pgoff: kind === 'file' ? e.offset : 0,
        vmFlags: e.vmFlags,
        runs: [],
      };
      const obj = objectOf(ctx, e, kind);
      if (obj) {
        vma.object = obj.image;
        vma.pgoff = e.offset;
      } else if (kind === 'memfd') {
        vma.pgoff = e.offset;
      }
      if (e.path.startsWith('[')) vma.label = e.path;
      if (kind === 'file') {
        const id = fileIdentity(e.path);
        if (id.ino !== e.inode) {
          throw unsupported(pid, `mapping of ${e.path}`, 'the file on disk was replaced since it was mapped');
        }
        vma.file = id;
      }
      if (!SPECIAL.has(kind) && !(kind === 'file' && e.shared)) {
        let candidates = selectPages(pagemapFd, pmBuf, e.start, e.end, kind === 'file');
        if (kind === 'shmem-anon' || kind === 'memfd' || kind === 'deleted') candidates = sharedCandidates(ctx, e, kind, obj, candidates);
        if (hasher) {
          // A zero page may be left out wherever the restored page reads zero without it: not over a memfd's private mapping.
          const r = await hasher.copy(e.start, candidates, kind !== 'file' && !(kind === 'memfd' && !e.shared), kind === 'anon' && !e.shared ? unchanged : undefined);
          vma.runs = r.runs;
          if (r.inherited.length > 0) vma.inherited = r.inherited;
        } else {
          vma.runs = candidates;
          await copier.copy(e.start, vma.runs);
        }
      }
      vmas.push(vma);
    }
    await copier.drain();
    await hasher?.drain();
  } finally {
    closeSync(pagemapFd);
    await copier.drain().catch(() => undefined);
    await hasher?.drain().catch(() => undefined);
  }
  progressSink()?.done();
  const compression = hasher?.compression();
  if (compression) ctx.proc.compression = compression;
  ctx.proc.vmas = vmas;
  ctx.proc.pagesFile = pagesName;
  out.close();
  if (hasher) ctx.proc.hashesFile = hasher.writeHashes(ctx.writer, ctx.nsPid);
  // An incremental image says how it found what changed.
  if (hasher && ctx.pageTracking?.parent) {
    const why = tracker ? tracker.why : 'not in a crest job';
    ctx.proc.tracking = {
      method: tracker && !tracker.why ? 'uffd-wp' : 'page-hash',
      ...(why ? { why } : {}),
      trackedPages: hasher.trackedPages,
      readPages: hasher.readPages,
    };
  }
}

/** Anonymous and shared memory the process holds (RssAnon + RssShmem): about what a checkpoint reads. */
function anonRss(pid: number): number {
  try {
    const t = readFileSync(`/proc/${pid}/status`, 'latin1');
    const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(t)?.[1] ?? 0);
    return (kb('RssAnon') + kb('RssShmem')) * 1024;
  } catch {
    return 0;
  }
}

/**
 * Pages worth storing, as [first page, count] runs: present or swapped pages
 * of anonymous memory; of private file mappings only the pages that were
 * written (present but no longer the file's page, bit 61 clear) or swapped.
 */
function selectPages(pmFd: number, buf: Buffer, start: number, end: number, fileBacked: boolean): [number, number][] {
  const runs: [number, number][] = [];
  const total = (end - start) / PAGE_SIZE;
  let runStart = -1;
  for (let base = 0; base < total; base += 65536) {
    const n = Math.min(65536, total - base);
    const want = n * 8;
    let got = 0;
    while (got < want) {
      const r = readSync(pmFd, buf, got, want - got, (start / PAGE_SIZE + base) * 8 + got);
      if (r <= 0) break;
      got += r;
    }
    for (let i = 0; i < n; i++) {
      const b7 = i * 8 + 7 < got ? buf[i * 8 + 7]! : 0;
      const present = (b7 & 0x80) !== 0;
      const swapped = (b7 & 0x40) !== 0;
      const fileOrShared = (b7 & 0x20) !== 0;
      const keep = fileBacked ? (present && !fileOrShared) || swapped : present || swapped;
      const idx = base + i;
      if (keep) {
        if (runStart < 0) runStart = idx;
      } else if (runStart >= 0) {
        runs.push([runStart, idx - runStart]);
        runStart = -1;
      }
    }
  }
  if (runStart >= 0) runs.push([runStart, total - runStart]);
  return runs;
}

/**
 * Copies runs of pages from /proc/PID/mem to the pages file, double-buffered:
 * while one buffer is being written (O_DIRECT, on the libuv pool), the next is
 * read from the process on this thread.
 */
class PageCopier {
  private pending: Promise<void> = Promise.resolve();
  private which = 0;
  constructor(
    private readonly pid: number,
    private readonly memFd: number,
    private readonly out: DataFile,
  ) {}

  async copy(start: number, runs: [number, number][]): Promise<void> {
    const bufs = buffers();
    for (const [first, count] of runs) {
      let addr = start + first * PAGE_SIZE;
      let left = count * PAGE_SIZE;
      while (left > 0) {
        const buf = bufs[this.which]!;
        const len = Math.min(left, buf.length);
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
          if (r <= 0) throw new CrestError('MEM_READ', `could not read memory at ${hexa(addr + got)}`);
          got += r;
        }
        await this.pending;
        this.pending = this.out.writeAsync(buf, 0, len);
        this.which ^= 1;
        progressSink()?.add(len);
        addr += len;
        left -= len;
      }
    }
  }

  drain(): Promise<void> {
    return this.pending;
  }
}

// ---------------------------------------------------------------- restore

/** Largest range one injected pread64 fills (the kernel caps a read at 2 GiB - 4 KiB). */
const MAX_IO = 1024 * 1024 * 1024;

/**
 * Checks before any process exists: files behind mappings still the same,
 * the vDSO set of this kernel the same size as the image's.
 */
export function preflightMemory(proc: RestoreContext['proc'], ownVdso: Map<string, number>): void {
  for (const v of proc.vmas) {
    if (v.kind === 'file' && v.file) verifyFile(v.file, 'mapped file');
    preflightObject(v);
    if (SPECIAL.has(v.kind)) {
      const size = ownVdso.get(v.kind);
      if (size !== v.end - v.start) {
        throw new CrestError(
          'VDSO_MISMATCH',
          `the image's ${v.kind} area is ${v.end - v.start} bytes but this kernel's is ${size ?? 'absent'}; restore on the kernel the checkpoint was taken on`,
        );
      }
    }
  }
  const have = [...ownVdso.keys()].filter((k) => SPECIAL.has(k));
  for (const k of have) {
    if (!proc.vmas.some((v) => v.kind === k)) {
      throw new CrestError('VDSO_MISMATCH', `this kernel has a [${k}] area the image lacks; restore on the kernel the checkpoint was taken on`);
    }
  }
}

/** The special mappings of a process: kind -> size. */
export function vdsoSizes(pid: number | 'self'): Map<string, number> {
  const m = new Map<string, number>();
  for (const e of readMaps(pid)) {
    const k = e.path.replace(/^\[|\]$/g, '');
    if (SPECIAL.has(k)) m.set(k, e.end - e.start);
  }
  return m;
}

/** Finds `size` free bytes avoiding every range in `busy`, searching down from high user addresses. */
export function findFree(busy: [number, number][], size: number): number {
  const sorted = [...busy].sort((a, b) => b[0] - a[0]);
  let top = 0x7f0000000000;
  for (const [s, e] of sorted) {
    if (e <= top && top - e >= size + 2 * PAGE_SIZE) return top - size - PAGE_SIZE;
    if (s < top) top = Math.min(top, s);
  }
  if (top - 0x10000000 >= size) return top - size - PAGE_SIZE;
  throw new CrestError('NO_ADDRESS_SPACE', `no free ${size}-byte area in the address space`);
}

/** Unmaps everything of the husk but the scratch area and the vDSO set, then moves the vDSO set where the image had it. */
export function replaceHuskMemory(ctx: RestoreContext): void {
  const t = ctx.thread;
  const husk = readMaps(ctx.huskHostPid);
  const special = new Map<string, { start: number; end: number }>();
  for (const e of husk) {
    if (e.vsyscall) continue;
    const k = e.path.replace(/^\[|\]$/g, '');
    if (SPECIAL.has(k)) {
      special.set(k, { start: e.start, end: e.end });
      continue;
    }
    if (e.start === ctx.scratch) continue;
    t.syscall('munmap', `unmap husk area ${hexa(e.start)}`, SYS.munmap, e.start, e.end - e.start);
  }
  // Move each special area out of the way first, then to its place: a direct
  // move could land on another special area that has not moved yet.
  const targets = ctx.proc.vmas.filter((v) => SPECIAL.has(v.kind));
  const busy: [number, number][] = [
    ...ctx.proc.vmas.map((v) => [v.start, v.end] as [number, number]),
    ...[...special.values()].map((s) => [s.start, s.end] as [number, number]),
    [ctx.scratch, ctx.scratch + ctx.scratchSize],
  ];
  const parked = new Map<string, number>();
  for (const [k, cur] of special) {
    const size = cur.end - cur.start;
    const tmp = findFree(busy, size);
    busy.push([tmp, tmp + size]);
    t.syscall('mremap', `park [${k}]`, SYS.mremap, cur.start, size, size, MREMAP.MAYMOVE | MREMAP.FIXED, tmp);
    parked.set(k, tmp);
  }
  for (const v of targets) {
    const from = parked.get(v.kind);
    if (from === undefined) throw new CrestError('VDSO_MISMATCH', `this kernel gave the husk no [${v.kind}] area`);
    const size = v.end - v.start;
    t.syscall('mremap', `move [${v.kind}] to ${hexa(v.start)}`, SYS.mremap, from, size, size, MREMAP.MAYMOVE | MREMAP.FIXED, v.start);
  }
}

const VMFLAG_MADVISE: [string, number][] = [
  ['dd', MADV.DONTDUMP],
  ['dc', MADV.DONTFORK],
  ['wf', MADV.WIPEONFORK],
  ['hg', MADV.HUGEPAGE],
  ['nh', MADV.NOHUGEPAGE],
];

/**
 * Maps every recorded area at its address and fills it from the pages file,
 * in one pass over the file: crest reads it (O_DIRECT, the next chunk on the
 * libuv pool while this one is placed), checks its CRC-32 as it goes, and
 * writes each chunk into the husk's memory, populated in bulk first. A
 * mismatch is found before any restored code has run: restore then kills
 * the husk, so a corrupted image never runs. An incremental image's pages
 * come from its chain of images, each streamed once (./layers.ts).
 */
export async function mapImageMemory(ctx: RestoreContext): Promise<void> {
  const t = ctx.thread;
  const pagesPath = join(ctx.dir, ctx.proc.pagesFile);
  // An incremental image's inherited pages come from its parents (image/chain.ts).
  const chain = chainOf(ctx.manifest) ?? [{ dir: ctx.dir, manifest: ctx.manifest }];
  // A chain, or compressed pages: each image's pages file streamed once (./layers.ts); plain pages of a single image: in area order.
  const layered = chain.length > 1 || ctx.proc.compression !== undefined;
  const loader = layered ? null : new PageLoader(pagesPath, ctx.huskHostPid);
  const fileFds = new Map<string, number>();
  const bar = progressSink();
  bar?.start('restore', ctx.proc.vmas.reduce((n, v) => n + [...v.runs, ...(v.inherited ?? [])].reduce((a, [, c]) => a + c * PAGE_SIZE, 0), 0));
  // Layered: the pages every area needs, from whichever image holds them, placed once all areas exist.
  const pieces: PagePiece[] = [];
  const mapped: { v: VmaImage; prot: number; mapProt: number }[] = [];
  try {
    for (const v of ctx.proc.vmas) {
      if (SPECIAL.has(v.kind)) continue;
      ctx.mem.reset();
      const len = v.end - v.start;
      const prot = protOf(v.prot);
      const stored = v.runs.length > 0 || (v.inherited?.length ?? 0) > 0;
      let mapProt = stored ? prot | PROT.WRITE | PROT.READ : prot;
      let flags = MAP.FIXED | (v.shared ? MAP.SHARED : MAP.PRIVATE);
      if (v.vmFlags.includes('gd')) flags |= MAP.GROWSDOWN;
      if (v.vmFlags.includes('nr')) flags |= MAP.NORESERVE;
      let fd = -1;
      let offset = v.kind === 'file' ? v.pgoff : 0;
      // An object an fd kind filled whole already (an earlier process's memfd): its pages are there.
      let filled = false;
      if (v.object) {
        const o = objectFd(ctx, v);
        fd = o.fd;
        offset = v.pgoff;
        filled = v.shared && ctx.objects.filled(o.key);
      } else if (v.kind === 'file') {
        const f = v.file!;
        const rw = v.shared && (v.prot[1] === 'w' || v.vmFlags.includes('mw'));
        const key = `${f.path}\0${rw ? 'rw' : 'r'}`;
        fd = fileFds.get(key) ?? -1;
        if (fd < 0) {
          fd = Number(t.syscall('openat', `open mapped file ${f.path}`, SYS.openat, -100, ctx.mem.str(f.path), (rw ? O.RDWR : O.RDONLY) | O.CLOEXEC, 0));
          fileFds.set(key, fd);
        }
      } else {
        flags |= MAP.ANONYMOUS;
      }
      if (filled) mapProt = prot;
      const got = t.syscall('mmap', `map ${hexa(v.start)}-${hexa(v.end)}`, SYS.mmap, v.start, len, mapProt, flags, fd, offset);
      if (Number(got) !== v.start) throw new CrestError('RESTORE_MMAP', `mmap placed ${hexa(v.start)} at ${hexa(Number(got))}`);
      // Stored and inherited runs alternate: populate each stretch of adjacent runs with one call.
      for (const [first, count] of filled ? [] : mergeRuns([...v.runs, ...(v.inherited ?? [])])) {
        const addr = v.start + first * PAGE_SIZE;
        const n = count * PAGE_SIZE;
        // Populate in bulk first: first-touch faults page by page cost ~20x more.
        for (let off = 0; off < n; off += MAX_IO) {
          const pop = t.syscallRaw(SYS.madvise, addr + off, Math.min(MAX_IO, n - off), MADV.POPULATE_WRITE);
          if (pop < 0n && pop !== -22n) throw new CrestError('RESTORE_MEMORY', `populating ${hexa(addr + off)}: errno ${-pop}`);
        }
      }
      if (loader) {
        for (const [first, count] of v.runs) {
          await loader.load(v.start + first * PAGE_SIZE, count * PAGE_SIZE, filled);
          bar?.add(count * PAGE_SIZE);
        }
        finishArea(ctx, v, prot, mapProt);
      } else {
        if (!filled) pieces.push(...pagePieces(chain, ctx.proc.pid, v));
        mapped.push({ v, prot, mapProt });
      }
    }
    if (loader) {
      const want = ctx.manifest.files[ctx.proc.pagesFile]?.crc32;
      const got = loader.finish();
      if (got !== want) {
        throw new CrestError('IMAGE_CHECKSUM', `pages file ${pagesPath} is corrupted (CRC-32 ${got}, the image says ${want}); the restore was abandoned before the process ran`);
      }
    } else {
      await loadLayers(chain, ctx.proc.pid, ctx.huskHostPid, pieces, buffers(), (n) => bar?.add(n));
      for (const m of mapped) finishArea(ctx, m.v, m.prot, m.mapProt);
    }
  } finally {
    bar?.done();
    loader?.close();
    for (const fd of fileFds.values()) t.syscallRaw(SYS.close, fd);
  }
}

/** Once an area holds its pages: its real protection, name, lock and advice. */
function finishArea(ctx: RestoreContext, v: VmaImage, prot: number, mapProt: number): void {
  const t = ctx.thread;
  const len = v.end - v.start;
  ctx.mem.reset();
  if (mapProt !== prot) t.syscall('mprotect', `protect ${hexa(v.start)}`, SYS.mprotect, v.start, len, prot);
  // Names given with PR_SET_VMA_ANON_NAME show as [anon:NAME]; give them back.
  const named = /^\[anon(?:_shmem)?:(.*)\]$/.exec(v.label ?? '');
  if (named) {
    const r = t.syscallRaw(SYS.prctl, 0x53564d41 /* PR_SET_VMA */, 0 /* PR_SET_VMA_ANON_NAME */, v.start, len, ctx.mem.str(named[1]!));
    if (r < 0n) ctx.warnings.push(`could not name ${hexa(v.start)} ${v.label}: errno ${-r}`);
  }
  if (v.vmFlags.includes('lo')) {
    // Locked memory: best effort within the restoring user's RLIMIT_MEMLOCK.
    const r = t.syscallRaw(SYS.mlock, v.start, len);
    if (r < 0n) ctx.warnings.push(`could not lock ${hexa(v.start)}-${hexa(v.end)} in memory: errno ${-r}`);
  }
  for (const [flag, advice] of VMFLAG_MADVISE) {
    if (!v.vmFlags.includes(flag)) continue;
    const r = t.syscallRaw(SYS.madvise, v.start, len, advice);
    if (r < 0n) ctx.warnings.push(`madvise(${flag}) on ${hexa(v.start)} failed: errno ${-r}`);
  }
}

/**
 * Streams the pages file into the husk: the read of the next chunk runs on
 * the libuv pool while this one is checksummed and written into the husk.
 */
class PageLoader {
  private readonly fd: number;
  private readonly direct: boolean;
  private off = 0;
  private crc = 0;
  private which = 0;
  /** A read already started for the chunk at `aheadOff` of `aheadLen` bytes. */
  private ahead: Promise<number> | null = null;
  private aheadOff = -1;
  private aheadLen = 0;

  constructor(
    private readonly path: string,
    private readonly pid: number,
  ) {
    try {
      this.fd = openSync(path, fsConstants.O_RDONLY | fsConstants.O_DIRECT);
      this.direct = true;
    } catch {
      this.fd = openSync(path, 'r');
      this.direct = false;
    }
  }

  private startRead(buf: Buffer, off: number, len: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const step = (done: number): void => {
        if (done >= len) return resolve(done);
        fsRead(this.fd, buf, done, len - done, off + done, (err, n) => {
          if (err) return reject(err);
          if (n === 0) return resolve(done);
          step(done + n);
        });
      };
      step(0);
    });
  }

  /** Fills [addr, addr+len) of the husk with the next `len` bytes of the file (only checksums them when `skip`). */
  async load(addr: number, len: number, skip = false): Promise<void> {
    const bufs = buffers();
    let done = 0;
    while (done < len) {
      const n = Math.min(IO_CHUNK, len - done);
      const buf = bufs[this.which]!;
      let got: number;
      if (this.ahead && this.aheadOff === this.off && this.aheadLen === n) {
        got = await this.ahead;
      } else {
        if (this.ahead) await this.ahead.catch(() => 0);
        got = await this.startRead(buf, this.off, n);
      }
      this.ahead = null;
      if (got !== n) throw new CrestError('IMAGE_TRUNCATED', `pages file ${this.path} ended early at offset ${this.off + got}`);
      // Read ahead the next chunk of this run into the other buffer.
      const nextLen = Math.min(IO_CHUNK, len - done - n);
      if (nextLen > 0) {
        this.aheadOff = this.off + n;
        this.aheadLen = nextLen;
        this.ahead = this.startRead(bufs[this.which ^ 1]!, this.aheadOff, nextLen);
        this.ahead.catch(() => 0);
      }
      this.crc = crc32(buf.subarray(0, n), this.crc);
      let w = skip ? n : 0;
      while (w < n) {
        const k = native().processVmWritev(this.pid, addr + done + w, buf, w, n - w);
        if (k <= 0) throw new CrestError('RESTORE_MEMORY', `could not write the husk's memory at ${hexa(addr + done + w)}`);
        w += k;
      }
      this.which ^= 1;
      this.off += n;
      done += n;
    }
  }

  /** The CRC-32 of everything loaded (8 hex digits). */
  finish(): string {
    return (this.crc >>> 0).toString(16).padStart(8, '0');
  }

  close(): void {
    try {
      closeSync(this.fd);
    } catch {
      /* closed */
    }
  }

  get usesDirectIo(): boolean {
    return this.direct;
  }
}

/** Runs sorted, adjacent ones joined: [[0,2],[2,3],[7,1]] -> [[0,5],[7,1]]. */
export function mergeRuns(runs: [number, number][]): [number, number][] {
  const out: [number, number][] = [];
  for (const [f, c] of [...runs].sort((a, b) => a[0] - b[0])) {
    const last = out[out.length - 1];
    if (last && last[0] + last[1] === f) last[1] += c;
    else out.push([f, c]);
  }
  return out;
}

/** The husk's memory is the image's: every area at its address with its protection. */
export function checkRestoredLayout(ctx: RestoreContext): void {
  const now = readMaps(ctx.huskHostPid).filter((e) => !e.vsyscall && e.start !== ctx.scratch);
  for (const v of ctx.proc.vmas) {
    const covered = now.some((e) => e.start <= v.start && e.end >= v.end);
    if (!covered) throw new CrestError('RESTORE_LAYOUT', `area ${hexa(v.start)}-${hexa(v.end)} is missing after restore`);
  }
}
