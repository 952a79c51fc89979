// Kernel write tracking for incremental checkpoints: userfaultfd async
// write-protect (UFFD_FEATURE_WP_ASYNC, Linux 6.7) read back and re-armed
// with the PAGEMAP_SCAN ioctl on /proc/PID/pagemap (kernel-notes.md: this
// kernel has no soft-dirty). A checkpoint then reads only the pages written
// since its parent, instead of reading and hashing all of memory.
//
// The userfaultfd belongs to the tracked process: crest injects
// userfaultfd(O_CLOEXEC|UFFD_USER_MODE_ONLY) into it, enables WP_ASYNC, parks
// it at a high fd and registers the process's private anonymous mappings for
// write-protect. In async mode a write to a protected page is resolved by the
// kernel itself (the process never waits for anyone): the page just loses its
// write-protect bit, which PAGEMAP_SCAN reports as PAGE_IS_WRITTEN. With
// PM_SCAN_WP_MATCHING the same scan protects the pages again. Everything runs
// from outside except creating and registering, which happen inside the
// injection window of a dump (and at restore).
//
// What the tracker vouches for, and what it does not:
// - Only pages of VMAs the kernel reports as PAGE_IS_WPALLOWED (registered
//   with an async write-protect context). A VMA that appeared since (mmap),
//   moved (mremap: the kernel unregisters it), or a fork child's memory (the
//   kernel unregisters it in the child) is not: its pages are read and
//   hashed. A VMA grown in place keeps its registration, and its new pages
//   carry no write-protect bit: they read as written.
// - Only when the process still holds the very tracker crest armed (same
//   process start time, fd still a userfaultfd with WP_ASYNC, per fdinfo),
//   and when the tracker was last re-armed right after the parent image was
//   committed. That fact lives in a small state file per job (the job's
//   runtime directory, `<job>.uffd-track`): re-arming writes `since: null`
//   first and the new image's checksum after, so a checkpoint cut short in
//   between leaves a state that no image matches, and the next checkpoint
//   falls back to page hashes. Written-since-an-older-image is a superset of
//   written-since-a-newer-one, so a re-arm that failed leaves nothing missing.
// - Whatever is not vouched for falls back to page hashes (kinds/pagetrack.ts)
//   or full pages, never to silently missing pages.
// The parked fd is crest's: hidden from the fd kinds (crestTrackerFds), never
// in an image, armed again in the restored process.
//
// Seen on this kernel (6.18), by an experiment as an ordinary user: another
// process of the same user (not even ptrace-attached) can PAGEMAP_SCAN, with
// PM_SCAN_WP_MATCHING, the pagemap of a process that armed its own
// userfaultfd; a write by the kernel (read(2) into a protected page) counts
// as written; a transparent huge page is split where the scan protects only
// part of it, so one 4 KiB write shows as one page, and a THP left whole
// reports PAGE_IS_HUGE; mremap moves lose the registration (the new range is
// not WPALLOWED) and new mmaps have none; a fork child's copy is not
// WPALLOWED, though it inherits the fd (the context stays the parent's);
// WP_UNPOPULATED's markers read as swapped pages in pagemap (so it is left
// off); PM_SCAN_CHECK_WPASYNC fails the whole scan (EPERM) as soon as one
// VMA is not registered, so crest scans without it and reads WPALLOWED.
import { closeSync, openSync, readFileSync, readdirSync, readlinkSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runtimeDir } from '../paths.js';
import { readFdinfo, readSmaps, readStat } from '../proc/index.js';
import { native } from '../sys/native.js';
import { KCMP_FILE, PAGE_SIZE, SYS } from '../sys/constants.js';
import type { Thread } from '../tracer/tracer.js';
import type { DumpContext, RestoreContext, ScratchAllocator } from './types.js';

const SYS_IOCTL = 16;
const SYS_USERFAULTFD = 323;
const O_CLOEXEC = 0o2000000;
const UFFD_USER_MODE_ONLY = 1;
const UFFD_API = 0xaan;
/** _IOWR(0xAA, 0x3F, struct uffdio_api) and _IOWR(0xAA, 0x00, struct uffdio_register). */
const UFFDIO_API = 0xc018aa3f;
const UFFDIO_REGISTER = 0xc020aa00;
const UFFDIO_REGISTER_MODE_WP = 2n;
/** UFFD_FEATURE_WP_ASYNC (1 << 15, Linux 6.7); WP_UNPOPULATED is left off: its pte markers read as swapped in pagemap. */
const UFFD_FEATURE_WP_ASYNC = 1n << 15n;
const F_DUPFD_CLOEXEC = 1030;
const RLIMIT_NOFILE = 7;
/** The parked fd sits this far below the process's soft RLIMIT_NOFILE: out of the way of the fds it opens. */
const PARK_BELOW_LIMIT = 64;

/** PAGEMAP_SCAN page categories (include/uapi/linux/fs.h). */
export const PAGE_IS = { WPALLOWED: 1, WRITTEN: 2, FILE: 4, PRESENT: 8, SWAPPED: 16 } as const;
const PM_SCAN_WP_MATCHING = 1;
/** End of the x86-64 user address space (4-level paging): the whole of it is scanned. */
const USER_END = 0x7ffffffff000;
const UFFD_LINK = 'anon_inode:[userfaultfd]';

/** What one process's tracker record says, in the job's state file. */
interface TrackerRecord {
  /** The process's start time (/proc/PID/stat field 22): the same process, not a reused PID. */
  start: number;
  /** Its host PID, to compare fds across processes (kcmp). */
  hostPid: number;
  /** Where the userfaultfd is parked. */
  fd: number;
  /** Manifest checksum of the image the write-protect bits count from; null while being re-armed. */
  since: string | null;
}

interface TrackerState {
  job: string;
  initPid: number;
  initStart: number;
  /** By PID inside the job. */
  procs: Record<string, TrackerRecord>;
}

/** The job a dump or restore tracks pages of. */
export interface TrackedJob {
  name: string;
  initPid: number;
  initStart: number;
}

/** One process's tracker during a dump. */
export interface ProcTracker {
  hostPid: number;
  nsPid: number;
  start: number;
  /** The parked userfaultfd after the injection window (re-armed once the image is committed); null: not tracked. */
  fd: number | null;
  /** Absolute page intervals [start, end) the tracker vouches were not written since the parent (sorted). */
  unchanged: [number, number][] | null;
  /** Why the tracker could not vouch for this checkpoint (null when it did). */
  why: string | null;
}

/** Kernel write tracking for one dump (PageTracking.uffd). */
export interface UffdTracking {
  job: TrackedJob;
  state: TrackerState;
  /** Why the kernel tracker cannot be used at all (a missing feature), or null. */
  unavailable: string | null;
  procs: Map<number, ProcTracker>;
}

function statePath(job: string): string {
  return join(runtimeDir(), 'jobs', `${job}.uffd-track`);
}

function loadState(job: TrackedJob): TrackerState {
  try {
    const s = JSON.parse(readFileSync(statePath(job.name), 'utf8')) as TrackerState;
    // A job of the same name that is not this one (its init differs) has nothing for us.
    if (s.initPid === job.initPid && s.initStart === job.initStart && s.procs) return s;
  } catch {
    /* none yet */
  }
  return { job: job.name, initPid: job.initPid, initStart: job.initStart, procs: {} };
}

function saveState(s: TrackerState): void {
  const p = statePath(s.job);
  writeFileSync(p + '.tmp', JSON.stringify(s) + '\n', { mode: 0o600 });
  renameSync(p + '.tmp', p);
}

/** Forgets a job's tracker state (its job ended or was stopped). */
export function dropTrackerState(job: string): void {
  rmSync(statePath(job), { force: true });
}

let kernelWhy: string | null | undefined;
/** Why this kernel cannot track writes for crest (null: it can): WP_ASYNC and PAGEMAP_SCAN, probed once. */
export function uffdUnavailable(): string | null {
  if (kernelWhy !== undefined) return kernelWhy;
  const n = native();
  const u = n.uffdProbe();
  if (!u.ok) kernelWhy = `userfaultfd(UFFD_USER_MODE_ONLY) fails here (errno ${u.errno})`;
  else if ((u.features & UFFD_FEATURE_WP_ASYNC) === 0n) kernelWhy = 'the kernel has no userfaultfd WP_ASYNC (Linux 6.7+)';
  else if (!n.pagemapScanProbe().ok) kernelWhy = 'the kernel has no PAGEMAP_SCAN ioctl (Linux 6.7+)';
  else kernelWhy = null;
  if (process.env.CREST_TRACKER === 'page-hash') kernelWhy = 'CREST_TRACKER=page-hash';
  return kernelWhy;
}

/** Sets up kernel write tracking for a dump of `job` (none outside a job: nothing would keep its state). */
export function openUffdTracking(job: TrackedJob | null): UffdTracking | null {
  if (!job) return null;
  return { job, state: loadState(job), unavailable: uffdUnavailable(), procs: new Map() };
}

// ------------------------------------------------------------ crest's fds

/** userfaultfds crest created in processes during this run (host PID -> fds), before any state file names them. */
const created = new Map<number, Set<number>>();

function uffdFds(pid: number): number[] {
  const out: number[] = [];
  let names: string[];
  try {
    names = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return out;
  }
  for (const n of names) {
    try {
      if (readlinkSync(`/proc/${pid}/fd/${n}`) === UFFD_LINK) out.push(Number(n));
    } catch {
      /* closed meanwhile */
    }
  }
  return out.sort((a, b) => a - b);
}

function allRecords(): TrackerRecord[] {
  const dir = join(runtimeDir(), 'jobs');
  const out: TrackerRecord[] = [];
  for (const f of readdirSync(dir)) {
    if (!f.endsWith('.uffd-track')) continue;
    try {
      out.push(...Object.values((JSON.parse(readFileSync(join(dir, f), 'utf8')) as TrackerState).procs));
    } catch {
      /* being replaced */
    }
  }
  return out;
}

/**
 * The fds of `pid` that are crest's page trackers, not the process's own:
 * the one crest parked in it, and copies of another tracked process's
 * tracker that a fork handed down. The fd kinds leave them out (no image
 * holds them; they are armed again after restore).
 */
export function crestTrackerFds(pid: number): Set<number> {
  const out = new Set<number>();
  const fds = uffdFds(pid);
  if (fds.length === 0) return out;
  for (const fd of created.get(pid) ?? []) if (fds.includes(fd)) out.add(fd);
  const recs = allRecords();
  let start = -1;
  try {
    start = readStat(pid).starttime;
  } catch {
    return out;
  }
  for (const fd of fds) {
    if (out.has(fd)) continue;
    for (const r of recs) {
      if (r.hostPid === pid ? r.start === start && r.fd === fd : sameFile(pid, fd, r)) {
        out.add(fd);
        break;
      }
    }
  }
  return out;
}

function sameFile(pid: number, fd: number, r: TrackerRecord): boolean {
  try {
    if (readStat(r.hostPid).starttime !== r.start) return false;
    return native().kcmp(pid, r.hostPid, KCMP_FILE, fd, r.fd) === 0;
  } catch {
    return false;
  }
}

/** fdinfo's API line: "API:\t<api>:<features>:<ioctls>" (hex). Does the context have WP_ASYNC? */
function hasWpAsync(pid: number, fd: number): boolean {
  try {
    const api = readFdinfo(pid, fd).fields.API ?? '';
    const features = BigInt('0x' + (api.split(':')[1] ?? '0'));
    return (features & UFFD_FEATURE_WP_ASYNC) !== 0n;
  } catch {
    return false;
  }
}

// ------------------------------------------------------------ scanning

const SCAN_REGIONS = 65536;
let scanBuf: Buffer | undefined;

/** PAGEMAP_SCAN over the whole user address space, every region [start, end, categories], going on where a full buffer stopped it. */
function scanAll(pid: number, flags: number, mask: number, anyof: number, ret: number, each: (s: number, e: number, cat: number) => void): void {
  scanBuf ??= Buffer.alloc(SCAN_REGIONS * 24);
  const view = new BigUint64Array(scanBuf.buffer, scanBuf.byteOffset, SCAN_REGIONS * 3);
  const fd = openSync(`/proc/${pid}/pagemap`, 'r');
  try {
    let at = 0;
    while (at < USER_END) {
      const r = native().pagemapScan(fd, at, USER_END, flags, mask, anyof, ret, scanBuf);
      for (let i = 0; i < r.n; i++) each(Number(view[i * 3]!), Number(view[i * 3 + 1]!), Number(view[i * 3 + 2]!));
      if (r.walkEnd <= at) break;
      at = r.walkEnd;
    }
  } finally {
    closeSync(fd);
  }
}

/** Present or swapped pages the tracker vouches were not written: registered (WPALLOWED) and not WRITTEN. */
function unwrittenPages(pid: number): [number, number][] {
  const out: [number, number][] = [];
  scanAll(pid, 0, 0, PAGE_IS.PRESENT | PAGE_IS.SWAPPED, PAGE_IS.WPALLOWED | PAGE_IS.WRITTEN, (s, e, cat) => {
    if (cat !== PAGE_IS.WPALLOWED) return;
    const a = s / PAGE_SIZE;
    const b = e / PAGE_SIZE;
    const last = out[out.length - 1];
    if (last && last[1] === a) last[1] = b;
    else out.push([a, b]);
  });
  return out;
}

/** Write-protects again every page written since the last arming (the tracker counts from now). */
function protectAll(pid: number): void {
  scanAll(pid, PM_SCAN_WP_MATCHING, PAGE_IS.WRITTEN, 0, PAGE_IS.WRITTEN, () => {});
}

// ------------------------------------------------------------ arming

/**
 * Creates the tracker inside the stopped process (injected): a
 * userfaultfd with WP_ASYNC, parked at the first free fd from
 * RLIMIT_NOFILE - 64. Returns the fd, or why it could not.
 */
function createTracker(t: Thread, mem: ScratchAllocator, hostPid: number, nofileSoft: bigint): number | string {
  const limit = nofileSoft > 1n << 20n ? 1 << 20 : Number(nofileSoft);
  if (limit < 2 * PARK_BELOW_LIMIT) return `its RLIMIT_NOFILE (${limit}) leaves no room to park the tracker`;
  const raw = t.syscallRaw(SYS_USERFAULTFD, O_CLOEXEC | UFFD_USER_MODE_ONLY);
  if (raw < 0n) return `userfaultfd() failed in the process (errno ${-raw})`;
  const api = Buffer.alloc(24);
  api.writeBigUInt64LE(UFFD_API, 0);
  api.writeBigUInt64LE(UFFD_FEATURE_WP_ASYNC, 8);
  const r = t.syscallRaw(SYS_IOCTL, raw, UFFDIO_API, mem.put(api));
  if (r < 0n) {
    t.syscallRaw(SYS.close, raw);
    return `UFFDIO_API with WP_ASYNC failed (errno ${-r})`;
  }
  const fd = t.syscallRaw(SYS.fcntl, raw, F_DUPFD_CLOEXEC, limit - PARK_BELOW_LIMIT);
  t.syscallRaw(SYS.close, raw);
  if (fd < 0n) return `no free fd to park the tracker at (errno ${-fd})`;
  let set = created.get(hostPid);
  if (!set) created.set(hostPid, (set = new Set()));
  set.add(Number(fd));
  return Number(fd);
}

/** Registers [start, end) ranges for write-protect on the tracker (already registered ones are no-ops); failures leave a range untracked. */
function registerRanges(t: Thread, mem: ScratchAllocator, fd: number, ranges: [number, number][]): void {
  const reg = Buffer.alloc(32);
  const at = mem.put(reg);
  for (const [start, end] of ranges) {
    reg.writeBigUInt64LE(BigInt(start), 0);
    reg.writeBigUInt64LE(BigInt(end - start), 8);
    reg.writeBigUInt64LE(UFFDIO_REGISTER_MODE_WP, 16);
    reg.writeBigUInt64LE(0n, 24);
    t.writeMem(at, reg);
    t.syscallRaw(SYS_IOCTL, fd, UFFDIO_REGISTER, at);
  }
}

const anonLabel = (p: string): boolean => p === '' || p === '[heap]' || p === '[stack]' || p.startsWith('[anon:');

/**
 * In the dump's injection window (the process frozen): decides whether the
 * tracker vouches for this checkpoint (reading which pages were written,
 * before anything is registered anew), then makes sure the process has a
 * tracker covering all its private anonymous memory, for the next one.
 */
export function prepareTracker(ctx: DumpContext): void {
  const u = ctx.pageTracking?.uffd;
  if (!u) return;
  const pid = ctx.hostPid;
  const p: ProcTracker = { hostPid: pid, nsPid: ctx.nsPid, start: ctx.stat.starttime, fd: null, unchanged: null, why: null };
  u.procs.set(ctx.nsPid, p);
  if (u.unavailable) {
    p.why = u.unavailable;
    return;
  }
  const rec = u.state.procs[String(ctx.nsPid)];
  const fds = uffdFds(pid);
  const own = rec && rec.start === p.start && rec.hostPid === pid && fds.includes(rec.fd) && hasWpAsync(pid, rec.fd) ? rec.fd : null;
  // Copies of another process's tracker a fork handed down are crest's: closed (they track the other process).
  const hidden = crestTrackerFds(pid);
  for (const fd of fds) if (fd !== own && hidden.has(fd)) ctx.thread.syscallRaw(SYS.close, fd);
  const parent = ctx.pageTracking?.parent;
  if (!rec || rec.start !== p.start) p.why = 'not armed yet (the first checkpoint since the process started or was restored)';
  else if (own === null) p.why = 'the tracker is gone (its fd was closed or replaced)';
  else if (!parent) p.why = 'a full checkpoint';
  else if (rec.since === null) p.why = 'the tracker was not re-armed after the last checkpoint (cut short)';
  else if (rec.since !== parent.ref.checksum) p.why = 'the tracker counts writes since another image than the parent';
  else p.unchanged = unwrittenPages(pid);
  const fd = own ?? createTracker(ctx.thread, ctx.mem, pid, native().prlimit(pid, RLIMIT_NOFILE)[0]);
  if (typeof fd === 'string') {
    p.why ??= fd;
    p.unchanged = null;
    return;
  }
  p.fd = fd;
  const ranges = readSmaps(pid)
    .filter((e) => !e.shared && !e.vsyscall && anonLabel(e.path) && !e.vmFlags.includes('uw'))
    .map((e): [number, number] => [e.start, e.end]);
  ctx.mem.reset();
  registerRanges(ctx.thread, ctx.mem, fd, ranges);
}

/**
 * After the image is committed, the processes still frozen: write-protect
 * every page again, so the next checkpoint counts writes from this image.
 * The state says `since: null` while that happens.
 */
export function rearmTrackers(u: UffdTracking | null | undefined, checksum: string): void {
  if (!u || u.unavailable) return;
  const armed = [...u.procs.values()].filter((p) => p.fd !== null);
  u.state.procs = {};
  for (const p of armed) u.state.procs[String(p.nsPid)] = { start: p.start, hostPid: p.hostPid, fd: p.fd!, since: null };
  saveState(u.state);
  for (const p of armed) protectAll(p.hostPid);
  for (const p of armed) u.state.procs[String(p.nsPid)]!.since = checksum;
  saveState(u.state);
}

/** A restored process's tracker, armed before it runs. */
export interface RestoredTracker {
  hostPid: number;
  nsPid: number;
  fd: number;
}

/**
 * At restore, after memory and fds are back (injected into the husk): a new
 * tracker registered over the image's private anonymous mappings. Returns
 * null (with a warning) when the process cannot have one.
 */
export function armRestored(ctx: RestoreContext): RestoredTracker | null {
  const why = uffdUnavailable();
  if (why) return null;
  const nofile = ctx.proc.rlimits?.find(([r]) => r === RLIMIT_NOFILE);
  const soft = nofile ? BigInt(nofile[1]) : native().prlimit(ctx.huskHostPid, RLIMIT_NOFILE)[0];
  ctx.mem.reset();
  const fd = createTracker(ctx.thread, ctx.mem, ctx.huskHostPid, soft);
  if (typeof fd === 'string') {
    ctx.warnings.push(`pid ${ctx.proc.pid}: no kernel write tracking after restore (${fd}); its next incremental checkpoint compares page hashes`);
    return null;
  }
  const ranges = ctx.proc.vmas.filter((v) => v.kind === 'anon' && !v.shared).map((v): [number, number] => [v.start, v.end]);
  ctx.mem.reset();
  registerRanges(ctx.thread, ctx.mem, fd, ranges);
  return { hostPid: ctx.huskHostPid, nsPid: ctx.proc.pid, fd };
}

/** Once every restored process is built (none runs yet): protect all their pages; the trackers count from the restored image. */
export function protectRestored(list: RestoredTracker[], job: TrackedJob, checksum: string): void {
  const state: TrackerState = { job: job.name, initPid: job.initPid, initStart: job.initStart, procs: {} };
  for (const p of list) {
    protectAll(p.hostPid);
    state.procs[String(p.nsPid)] = { start: readStat(p.hostPid).starttime, hostPid: p.hostPid, fd: p.fd, since: checksum };
  }
  saveState(state);
}
