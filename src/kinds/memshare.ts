// Memory shared beyond one mapping: memfds, files deleted while mapped, and
// shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS) that several processes
// of the tree map (inherited over fork) or one process maps twice. Each is
// one object, named by its inode in /proc/PID/maps (map_files would hand it
// over directly but needs CAP_CHECKPOINT_RESTORE in the initial namespace).
//
// Dump: the tree is looked at once (every process is frozen) to find which
// objects are shared and how big each is. A page of an object is stored
// once, by the first process (in image order) that maps it; which pages an
// object holds comes from pagemap (pages this process has mapped) and an
// injected mincore (pages of the object in memory that this process has not
// touched: written by another process, through an fd, or by one that ended);
// with pages in swap, all are read. A deleted file is read whole (its pages
// may be on disk only), as is a private mapping of a memfd or deleted file
// (its pages come back as the mapping's own, so no object needs them).
//
// Restore: the first husk that maps an object makes it (memfd_create, or an
// unnamed file in the directory a deleted file was in), at least as big as
// any mapping of it reaches; the others take it from that husk
// (kinds/objects.ts). Open files of the same memfd or deleted file use the
// same object, so writes through an fd show in the mapping as before.
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname } from 'node:path';
import { readChildren, readMaps, type MapEntry, type SmapsEntry } from '../proc/index.js';
import type { SharedObjectImage, VmaImage } from '../image/schema.js';
import type { ImageWriter } from '../image/writer.js';
import { PAGE_SIZE, SYS } from '../sys/constants.js';
import { CrestError } from '../sys/errors.js';
import { TMPFILE_RDWR, deletedKey, memfdKey, shmemKey } from './objects.js';
import type { DumpContext, RestoreContext } from './types.js';

const NR_mincore = 27;
const NR_ftruncate = 77;
const NR_memfd_create = 319;
const MFD_CLOEXEC = 1;
const MFD_ALLOW_SEALING = 2;

/** What memfd_create names the object that stands for shared anonymous memory at restore. */
export const SHARED_ANON_NAME = 'crest:shared-anon';

/** A memfd mapping: its name from maps ("/memfd:NAME (deleted)", the suffix already cut). */
export function memfdName(path: string): string | null {
  return path.startsWith('/memfd:') ? path.slice('/memfd:'.length) : null;
}

type Kind = VmaImage['kind'];

/** The key and image of the object behind a mapping, or null when it shares nothing. */
export interface ObjectRef {
  key: string;
  image: SharedObjectImage;
}

/** What one dump knows of the whole tree's objects (all processes are frozen while it runs). */
interface TreeObjects {
  /** Shared anonymous objects (by inode) that more than one mapping of the tree maps. */
  sharedAnon: Set<number>;
  /** Object key -> size in bytes (every mapping's reach, readable part only). */
  sizes: Map<string, number>;
  /** Object key -> object pages (pgoff / PAGE_SIZE + index) already stored. */
  stored: Map<string, Set<number>>;
}
const trees = new WeakMap<ImageWriter, TreeObjects>();

/** The processes of the tree the context's process belongs to (host pids). */
function members(ctx: DumpContext): number[] {
  if (ctx.initHostPid === null) return [ctx.hostPid];
  const out: number[] = [];
  const walk = (p: number): void => {
    for (const c of readChildren(p)) {
      out.push(c);
      walk(c);
    }
  };
  walk(ctx.initHostPid);
  return out.length > 0 ? out : [ctx.hostPid];
}

/** The object key of a maps entry, if its mapping is backed by a memfd, shared anonymous memory or a deleted file. */
function rawKey(e: MapEntry, kind: Kind): string | null {
  if (kind === 'memfd') return memfdKey(e.inode);
  if (kind === 'shmem-anon') return shmemKey(e.inode);
  if (kind === 'deleted' && e.shared) return deletedKey(e.inode, e.path);
  return null;
}

/** Rough kind of a maps entry, enough for the tree inventory (memory.ts classifies for real). */
function roughKind(e: MapEntry): Kind | null {
  if (e.shared && (e.path === '' || e.path.startsWith('[anon_shmem:') || (e.deleted && e.path === '/dev/zero'))) return 'shmem-anon';
  if (memfdName(e.path) !== null) return 'memfd';
  if (e.deleted && e.path.startsWith('/') && !e.path.startsWith('/SYSV')) return 'deleted';
  return null;
}

/** Looks at every process of the tree once per dump. */
function treeOf(ctx: DumpContext): TreeObjects {
  let t = trees.get(ctx.writer);
  if (t) return t;
  t = { sharedAnon: new Set(), sizes: new Map(), stored: new Map() };
  // shared anonymous inode -> the mappings of it: [pid, first object page, end page]
  const anon = new Map<number, [number, number, number][]>();
  for (const pid of members(ctx)) {
    let maps: MapEntry[];
    try {
      maps = readMaps(pid);
    } catch {
      continue;
    }
    let memFd = -1;
    try {
      for (const e of maps) {
        const kind = roughKind(e);
        if (kind === null) continue;
        const key = rawKey(e, kind);
        if (key === null) continue;
        let len = e.end - e.start;
        if (kind !== 'shmem-anon') {
          if (memFd < 0) memFd = openSync(`/proc/${pid}/mem`, 'r');
          len = readablePages(memFd, e.start, e.end) * PAGE_SIZE;
        } else {
          const list = anon.get(e.inode) ?? [];
          list.push([pid, e.offset / PAGE_SIZE, (e.offset + e.end - e.start) / PAGE_SIZE]);
          anon.set(e.inode, list);
        }
        t.sizes.set(key, Math.max(t.sizes.get(key) ?? 0, e.offset + len));
      }
    } finally {
      if (memFd >= 0) closeSync(memFd);
    }
  }
  for (const [ino, list] of anon) {
    const pids = new Set(list.map((x) => x[0]));
    // One process mapping the same pages twice (mremap of a shared area keeps both) needs one object too.
    const aliased = list.some((a, i) => list.some((b, j) => j > i && a[0] === b[0] && a[1] < b[2] && b[1] < a[2]));
    if (pids.size > 1 || aliased) t.sharedAnon.add(ino);
  }
  trees.set(ctx.writer, t);
  return t;
}

/** The object behind mapping `e` of kind `kind`, if it shares its pages beyond this mapping. */
export function objectOf(ctx: DumpContext, e: SmapsEntry, kind: Kind): ObjectRef | null {
  const key = rawKey(e, kind);
  if (key === null) return null;
  const t = treeOf(ctx);
  if (kind === 'shmem-anon' && !t.sharedAnon.has(e.inode)) return null;
  const size = Math.max(t.sizes.get(key) ?? 0, kind === 'shmem-anon' ? e.offset + e.end - e.start : 0);
  const image: SharedObjectImage = { ino: e.inode, size };
  if (kind === 'memfd') image.name = memfdName(e.path)!;
  if (kind === 'deleted') image.path = e.path;
  return { key, image };
}

/** Whether page `addr` of the process can be read (a page past the end of a mapped file cannot). */
function canRead(memFd: number, addr: number): boolean {
  try {
    return readSync(memFd, ONE, 0, 1, addr) === 1;
  } catch {
    return false;
  }
}
const ONE = Buffer.alloc(1);

/** How many pages from the start of [start, end) can be read: a file's mapping may reach past its end. */
export function readablePages(memFd: number, start: number, end: number): number {
  const total = (end - start) / PAGE_SIZE;
  if (canRead(memFd, start + (total - 1) * PAGE_SIZE)) return total;
  if (!canRead(memFd, start)) return 0;
  let lo = 1; // pages below lo are readable
  let hi = total - 1; // page hi is not
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2);
    if (canRead(memFd, start + mid * PAGE_SIZE)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// ---------------------------------------------------------------- dump: which pages

/** Shared memory pages in memory per mapping start, found by mincore in the injection window. */
const resident = new WeakMap<DumpContext, Map<number, Uint8Array>>();

/**
 * Injected mincore over every shared anonymous or memfd mapping: which pages
 * of the object are in memory, mapped by this process or not. Inside the
 * injection window, so only /proc/PID/maps is read (smaps walks every page
 * table) and nothing is injected for a process without such mappings.
 */
export function collectResidency(ctx: DumpContext): void {
  const out = new Map<number, Uint8Array>();
  const chunk = Math.max(1, ctx.scratchSize - 256);
  for (const e of readMaps(ctx.hostPid)) {
    const kind = roughKind(e);
    if (!e.shared || (kind !== 'shmem-anon' && kind !== 'memfd')) continue;
    const pages = (e.end - e.start) / PAGE_SIZE;
    const vec = new Uint8Array(pages);
    for (let i = 0; i < pages; i += chunk) {
      const n = Math.min(chunk, pages - i);
      ctx.mem.reset();
      const at = ctx.mem.alloc(n);
      const r = ctx.thread.syscallRaw(NR_mincore, e.start + i * PAGE_SIZE, n * PAGE_SIZE, at);
      if (r < 0n) {
        // Not allowed to ask (not the file's owner): read the whole mapping instead.
        vec.fill(1, i, i + n);
        continue;
      }
      vec.set(ctx.thread.readMem(at, n), i);
    }
    out.set(e.start, vec);
  }
  resident.set(ctx, out);
}

/** Merges [first, count] runs and the page flags `extra` (1 byte a page) into sorted runs. */
function union(runs: [number, number][], extra: Uint8Array | undefined, total: number): [number, number][] {
  if (!extra) return runs;
  const keep = new Uint8Array(total);
  for (const [f, c] of runs) keep.fill(1, f, f + c);
  for (let i = 0; i < total; i++) if ((extra[i]! & 1) !== 0) keep[i] = 1;
  return toRuns(keep, total);
}

function toRuns(keep: Uint8Array, total: number): [number, number][] {
  const out: [number, number][] = [];
  let s = -1;
  for (let i = 0; i <= total; i++) {
    const k = i < total && keep[i] === 1;
    if (k && s < 0) s = i;
    else if (!k && s >= 0) {
      out.push([s, i - s]);
      s = -1;
    }
  }
  return out;
}

/**
 * The pages of a memfd, shared anonymous or deleted-file mapping worth
 * storing. `mapped` are the pages pagemap shows present or swapped here.
 * Pages an earlier process of the image stored already are left out, and
 * what is returned is counted as stored.
 */
export function sharedCandidates(ctx: DumpContext, e: SmapsEntry, kind: Kind, obj: ObjectRef | null, mapped: [number, number][]): [number, number][] {
  const total = (e.end - e.start) / PAGE_SIZE;
  let limit = total;
  if (kind !== 'shmem-anon') limit = readablePages(ctx.thread.mem(), e.start, e.end);
  const all = kind === 'deleted' || !e.shared || (e.sizes.Swap ?? 0) > 0;
  let runs: [number, number][] = all ? (limit > 0 ? [[0, limit]] : []) : union(mapped, resident.get(ctx)?.get(e.start), total);
  if (limit < total) runs = clip(runs, limit);
  if (!obj) return runs;
  const t = treeOf(ctx);
  let done = t.stored.get(obj.key);
  if (!done) t.stored.set(obj.key, (done = new Set()));
  const base = e.offset / PAGE_SIZE;
  const keep = new Uint8Array(total);
  for (const [f, c] of runs) {
    for (let i = f; i < f + c; i++) {
      if (done.has(base + i)) continue;
      keep[i] = 1;
      done.add(base + i);
    }
  }
  return toRuns(keep, total);
}

function clip(runs: [number, number][], limit: number): [number, number][] {
  const out: [number, number][] = [];
  for (const [f, c] of runs) {
    if (f >= limit) break;
    out.push([f, Math.min(c, limit - f)]);
  }
  return out;
}

// ---------------------------------------------------------------- restore

/** The registry key of the object behind a recorded mapping. */
export function objectKey(v: VmaImage): string {
  const o = v.object!;
  if (v.kind === 'memfd') return memfdKey(o.ino);
  if (v.kind === 'deleted') return deletedKey(o.ino, o.path!);
  return shmemKey(o.ino);
}

/**
 * The husk's fd of the object behind mapping `v`: taken from the husk that
 * made it, or made now (and sized).
 */
export function objectFd(ctx: RestoreContext, v: VmaImage): { fd: number; key: string } {
  const key = objectKey(v);
  const have = ctx.objects.get(ctx, key);
  if (have !== undefined) return { fd: have, key };
  const o = v.object!;
  const t = ctx.thread;
  ctx.mem.reset();
  let fd: number;
  if (v.kind === 'deleted') {
    const dir = dirname(o.path!);
    const r = Number(t.syscallRaw(SYS.openat, -100, ctx.mem.str(dir), TMPFILE_RDWR, 0o600));
    if (r < 0) throw new CrestError('RESTORE_FILE', `cannot recreate ${o.path} (deleted while mapped) as an unnamed file in ${dir} (O_TMPFILE: errno ${-r})`);
    fd = r;
  } else {
    const name = v.kind === 'memfd' ? o.name! : SHARED_ANON_NAME;
    fd = Number(t.syscall('memfd_create', `create memfd ${name}`, NR_memfd_create, ctx.mem.str(name), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  }
  fd = ctx.objects.put(ctx, key, fd);
  t.syscall('ftruncate', `size ${key} to ${o.size} bytes`, NR_ftruncate, fd, o.size);
  return { fd, key };
}

/** Before any process exists: a deleted file's directory must still be there to make it again. */
export function preflightObject(v: VmaImage): void {
  if (v.kind !== 'deleted' || !v.object) return;
  const dir = dirname(v.object.path!);
  let ok = false;
  try {
    ok = statSync(dir).isDirectory();
  } catch {
    ok = false;
  }
  if (!ok) throw new CrestError('FILE_MISSING', `the directory ${dir} of ${v.object.path} (deleted while mapped) is missing: it cannot be made again there`);
}

// ---------------------------------------------------------------- crest check

/** What a memory probe gets: injection into a seized throwaway child (kinds/fds/probe.ts). */
interface ProbeTarget {
  pid: number;
  thread: DumpContext['thread'];
  mem: DumpContext['mem'];
}

function probeCall(ij: ProbeTarget, what: string, nr: number, ...args: (number | bigint)[]): number {
  return Number(ij.thread.syscall(what, `probe ${what}`, nr, ...args));
}

/** The memory kinds' probes, by kind: each returns what works (a sentence) or throws why it cannot work. */
export const MEMORY_PROBES: [string, (ij: ProbeTarget) => string][] = [
  [
    'memfd',
    (ij) => {
      const fd = probeCall(ij, 'memfd_create', NR_memfd_create, ij.mem.str('crest-probe'), MFD_CLOEXEC);
      probeCall(ij, 'ftruncate', NR_ftruncate, fd, 3 * PAGE_SIZE);
      // A page written through the fd only: in memory, in no page table.
      probeCall(ij, 'pwrite64', 18, fd, ij.mem.str('x'), 1, 2 * PAGE_SIZE);
      const at = probeCall(ij, 'mmap', SYS.mmap, 0, 2 * PAGE_SIZE, 3, 1 /* MAP_SHARED */, fd, PAGE_SIZE);
      const e = readMaps(ij.pid).find((m) => m.start === at);
      if (!e || memfdName(e.path) !== 'crest-probe' || e.offset !== PAGE_SIZE) throw new Error(`/proc/PID/maps does not show the memfd mapping as expected (${e ? `${e.path} @${e.offset}` : 'absent'})`);
      const vec = ij.mem.alloc(8);
      probeCall(ij, 'mincore', NR_mincore, at, 2 * PAGE_SIZE, vec);
      const v = ij.thread.readMem(vec, 2);
      if ((v[1]! & 1) === 0) throw new Error('mincore does not report a memfd page written through its fd: pages no process touched would be lost');
      return 'mapped again from one memfd (name, offset, size), found by the inode in /proc/PID/maps; pages in memory but not mapped found with mincore';
    },
  ],
  [
    'shared-anon',
    (ij) => {
      const fd = probeCall(ij, 'memfd_create', NR_memfd_create, ij.mem.str('crest-probe'), MFD_CLOEXEC);
      const pidfd = Number(ij.thread.syscallRaw(434, ij.pid, 0));
      if (pidfd < 0) throw new Error(`pidfd_open fails (errno ${-pidfd}): memory shared by several processes cannot be shared again at restore`);
      const got = Number(ij.thread.syscallRaw(438, pidfd, fd, 0));
      if (got < 0) throw new Error(`pidfd_getfd fails (errno ${-got}; Linux 5.6+): memory shared by several processes cannot be shared again at restore`);
      return 'shared anonymous memory: one mapping alone comes back as such; shared by several processes (or mapped twice), as one memfd handed between the restored processes with pidfd_getfd';
    },
  ],
  [
    'deleted',
    (ij) => {
      const dir = tmpdir();
      const fd = Number(ij.thread.syscallRaw(SYS.openat, -100, ij.mem.str(dir), TMPFILE_RDWR, 0o600));
      if (fd < 0) throw new Error(`O_TMPFILE in ${dir} fails (errno ${-fd}): a deleted file mapped shared could not be made again there`);
      return `files deleted while mapped: shared mappings come back on an unnamed file (O_TMPFILE) in the same directory, holding every page (works in ${dir}); private ones as anonymous memory with all their pages`;
    },
  ],
];
