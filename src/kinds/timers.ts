// POSIX timers (timer_create): each timer's ID, clock, how it notifies
// (signal number and sigev_value, to the process, to one thread, or not at
// all) and its time left and interval. Programs hold them more often than it
// seems: coreutils' `timeout` arms one, glibc's SIGEV_THREAD timers are one
// aimed at a helper thread.
//
// /proc/PID/timers lists the timers (ID, signal/value, notify, clock); the
// time left and interval are read by injecting timer_gettime. Restore makes
// each timer again with its own ID: Linux 6.15+ takes a wanted ID from
// timer_create once the process asks for it (PR_TIMER_CREATE_RESTORE_IDS);
// before that, IDs are handed out in increasing order from 0 in a new
// process, so timers are created in ID order and the ones in between deleted
// again (as CRIU does). The time left runs on from the restore: the time the
// process spent checkpointed does not count, as for its interval timers and
// timerfds. The overrun count of a timer is not kept (a read returns 0).
import { readFileSync } from 'node:fs';
import { SYS } from '../sys/constants.js';
import { CrestError } from '../sys/errors.js';
import { faultArg } from '../fault.js';
import type { PosixTimer } from '../image/schema.js';
import { unsupported, type DumpContext, type Kind, type RestoreContext } from './types.js';

const PR_TIMER_CREATE_RESTORE_IDS = 77;
const SIGEV_SIGNAL = 0;
const SIGEV_NONE = 1;
const SIGEV_THREAD = 2;
const SIGEV_THREAD_ID = 4;
/** The fixed clocks timer_create takes (the process and thread CPU clocks read as negative numbers, below). */
const CLOCKS = new Map([
  [0, 'CLOCK_REALTIME'],
  [1, 'CLOCK_MONOTONIC'],
  [7, 'CLOCK_BOOTTIME'],
  [8, 'CLOCK_REALTIME_ALARM'],
  [9, 'CLOCK_BOOTTIME_ALARM'],
  [11, 'CLOCK_TAI'],
]);
/** How far the ID-order fallback may walk past IDs nobody holds. */
const MAX_ID_GAP = 65536;

/** One entry of /proc/PID/timers. */
export interface ProcTimer {
  id: number;
  signo: number;
  /** sigev_value, as the kernel prints it (hex). */
  value: bigint;
  /** signal, none or thread (SIGEV_THREAD), and whether it is aimed at one thread (SIGEV_THREAD_ID). */
  notify: 'signal' | 'none' | 'thread';
  toThread: boolean;
  /** The pid or tid it notifies, in the pid namespace of the /proc that was read. */
  target: number;
  clock: number;
}

/** Parses /proc/PID/timers ("ID: 0\nsignal: 14/000...\nnotify: signal/pid.12\nClockID: 1\n" per timer). */
export function parseProcTimers(text: string): ProcTimer[] {
  const out: ProcTimer[] = [];
  let cur: Partial<ProcTimer> | null = null;
  const bad = (line: string): never => {
    throw new CrestError('PROC_FORMAT', `unexpected line in /proc/PID/timers: '${line}'`);
  };
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    const [key, rest] = [line.slice(0, line.indexOf(':')), line.slice(line.indexOf(':') + 1).trim()];
    if (key === 'ID') {
      cur = { id: Number(rest) };
      out.push(cur as ProcTimer);
    } else if (cur === null) {
      bad(line);
    } else if (key === 'signal') {
      const m = /^(\d+)\/([0-9a-fA-F]+)$/.exec(rest) ?? bad(line);
      cur.signo = Number(m[1]);
      cur.value = BigInt('0x' + m[2]);
    } else if (key === 'notify') {
      const m = /^(signal|none|thread)\/(pid|tid)\.(\d+)$/.exec(rest) ?? bad(line);
      cur.notify = m[1] as ProcTimer['notify'];
      cur.toThread = m[2] === 'tid';
      cur.target = Number(m[3]);
    } else if (key === 'ClockID') {
      cur.clock = Number(rest);
    }
  }
  for (const t of out) {
    if (!Number.isInteger(t.id) || t.signo === undefined || t.notify === undefined || !Number.isInteger(t.clock)) {
      throw new CrestError('PROC_FORMAT', `incomplete entry for timer ${t.id} in /proc/PID/timers`);
    }
  }
  return out;
}

function readTimers(pid: number): ProcTimer[] {
  return parseProcTimers(readFileSync(`/proc/${pid}/timers`, 'utf8'));
}

/**
 * Refuses the timers crest cannot make again. A CPU-time clock is stored
 * encoded as (~pid << 3) | per-thread (4) | type (0-2), pid 0 meaning the
 * caller: CLOCK_PROCESS_CPUTIME_ID reads as -6, CLOCK_THREAD_CPUTIME_ID as
 * -2. Made again with the same number by the same process (whose pid and
 * tids come back), it counts the same task's time, except a thread clock of
 * "the caller", which would count the main thread's (restore creates the
 * timers there): fine only when that is the only thread.
 * `tids`: the process's threads (namespace tids), or null before the freeze.
 */
function checkTimers(pid: number, nsPid: number, timers: ProcTimer[], tids: readonly number[] | null): void {
  for (const t of timers) {
    const what = `POSIX timer ${t.id}`;
    if (t.clock >= 0) {
      if (!CLOCKS.has(t.clock)) throw unsupported(pid, what, `it runs on clock ${t.clock}, which crest does not know`);
      continue;
    }
    const owner = ~(t.clock >> 3);
    const perThread = (t.clock & 4) !== 0;
    if ((t.clock & 3) === 3) throw unsupported(pid, what, `it runs on a clock device (clock ${t.clock}), which crest cannot re-create`);
    if (perThread && owner === 0 && tids !== null && tids.length > 1) {
      throw unsupported(pid, what, 'it counts the CPU time of one thread of a multi-threaded process (CLOCK_THREAD_CPUTIME_ID), and /proc does not say which');
    }
    const own = owner === 0 || (perThread ? tids === null || tids.includes(owner) : owner === nsPid);
    if (!own) throw unsupported(pid, what, `it counts the CPU time of ${perThread ? 'thread' : 'process'} ${owner}, not one of this process`);
  }
}

/** The timers of a dumped process: /proc for what they are, injected timer_gettime for when they fire. */
function dumpTimers(ctx: DumpContext): PosixTimer[] {
  const timers = readTimers(ctx.hostPid);
  checkTimers(ctx.hostPid, ctx.nsPid, timers, ctx.threads.map((s) => s.thr.tid!));
  const its = ctx.mem.alloc(32);
  return timers.map((t) => {
    ctx.thread.syscall('timer_gettime', `read POSIX timer ${t.id}`, SYS.timer_gettime, t.id, its);
    const b = ctx.thread.readMem(its, 32);
    const spec = (o: number) => ({ sec: Number(b.readBigInt64LE(o)), nsec: Number(b.readBigInt64LE(o + 8)) });
    const out: PosixTimer = {
      id: t.id,
      clock: t.clock,
      notify: t.notify,
      signo: t.signo,
      value: '0x' + BigInt.asUintN(64, t.value).toString(16),
      interval: spec(0),
      left: spec(16),
    };
    if (t.toThread) {
      const slot = ctx.threads.find((s) => s.thread.tid === t.target);
      if (!slot) throw unsupported(ctx.hostPid, `POSIX timer ${t.id}`, `it signals thread ${t.target}, which is not a thread of this process any more`);
      out.tid = slot.thr.tid!;
    }
    return out;
  });
}

/** struct sigevent for timer_create (x86-64: value, signo, notify, then the target tid). */
function sigevent(t: PosixTimer): Buffer {
  const b = Buffer.alloc(64);
  b.writeBigUInt64LE(BigInt(t.value), 0);
  b.writeInt32LE(t.signo, 8);
  const notify = t.notify === 'none' ? SIGEV_NONE : t.notify === 'thread' ? SIGEV_THREAD : SIGEV_SIGNAL;
  b.writeInt32LE(notify | (t.tid !== undefined ? SIGEV_THREAD_ID : 0), 12);
  if (t.tid !== undefined) b.writeInt32LE(t.tid, 16);
  return b;
}

/** Creates one timer; returns the ID the kernel gave (the wanted one, if the kernel takes wishes). */
function create(ctx: RestoreContext, clock: number, ev: number, idAt: number, wanted: number): number {
  const b = Buffer.alloc(4);
  b.writeInt32LE(wanted, 0);
  ctx.thread.writeMem(idAt, b);
  ctx.thread.syscall('timer_create', `create POSIX timer ${wanted} on ${CLOCKS.get(clock) ?? clock}`, SYS.timer_create, clock, ev, idAt);
  return ctx.thread.readMem(idAt, 4).readInt32LE(0);
}

function restoreTimers(ctx: RestoreContext, timers: readonly PosixTimer[]): void {
  const t = ctx.thread;
  const sorted = [...timers].sort((a, b) => a.id - b.id);
  const idAt = ctx.mem.alloc(8);
  const ev = ctx.mem.alloc(64);
  // (Fault point timer-ids-in-order: behave as on a kernel without it.)
  const exact = faultArg('timer-ids-in-order') === null && t.syscallRaw(SYS.prctl, PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0) === 0n;
  const placeholder = exact ? 0 : ctx.mem.put(Buffer.from(sigevent({ value: '0x0', signo: 0, notify: 'none' } as PosixTimer)));
  let last = -1;
  for (const tm of sorted) {
    t.writeMem(ev, sigevent(tm));
    // IDs come in increasing order: take (and give back) the ones before it.
    while (!exact && last < tm.id - 1) {
      if (tm.id - last > MAX_ID_GAP) {
        throw new CrestError('TIMER_ID', `POSIX timer ${tm.id}: this kernel hands out timer IDs in order only (no PR_TIMER_CREATE_RESTORE_IDS, Linux < 6.15), and ${tm.id - last - 1} IDs lie before it`);
      }
      last = create(ctx, 1, placeholder, idAt, 0);
      t.syscall('timer_delete', 'give back a placeholder timer', SYS.timer_delete, last);
      if (last >= tm.id) throw new CrestError('TIMER_ID', `POSIX timer ${tm.id}: the kernel handed out ID ${last} before it`);
    }
    const got = create(ctx, tm.clock, ev, idAt, tm.id);
    if (got !== tm.id) throw new CrestError('TIMER_ID', `POSIX timer ${tm.id}: the kernel handed out ID ${got} instead`);
    last = tm.id;
    const armed = tm.left.sec !== 0 || tm.left.nsec !== 0;
    const periodic = tm.interval.sec !== 0 || tm.interval.nsec !== 0;
    if (!armed && !periodic) continue;
    // A periodic timer whose signal was still queued may read 0 s left: it fires again one interval on.
    const left = armed ? tm.left : tm.interval;
    const its = Buffer.alloc(32);
    its.writeBigInt64LE(BigInt(tm.interval.sec), 0);
    its.writeBigInt64LE(BigInt(tm.interval.nsec), 8);
    its.writeBigInt64LE(BigInt(left.sec), 16);
    its.writeBigInt64LE(BigInt(left.nsec), 24);
    t.syscall('timer_settime', `arm POSIX timer ${tm.id}`, SYS.timer_settime, tm.id, 0, ctx.mem.put(its), 0);
  }
  if (exact) t.syscall('prctl', 'PR_TIMER_CREATE_RESTORE_IDS off', SYS.prctl, PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0);
}

export const posixTimers: Kind = {
  name: 'posix-timers',
  check(ctx) {
    // The threads are not known yet; the dump checks thread CPU clocks again.
    checkTimers(ctx.hostPid, ctx.nsPid, readTimers(ctx.hostPid), null);
  },
  dumpInjected(ctx) {
    const timers = dumpTimers(ctx);
    if (timers.length > 0) ctx.proc.posixTimers = timers;
  },
  /** Runs once every thread exists (a timer may signal one of them), with the scratch area free. */
  restore(ctx) {
    if (ctx.proc.posixTimers?.length) restoreTimers(ctx, ctx.proc.posixTimers);
  },
};

// ---------------------------------------------------------------- crest check

/** What the probe gets: injection into a seized throwaway child (kinds/fds/probe.ts). */
interface ProbeTarget {
  pid: number;
  thread: DumpContext['thread'];
  mem: DumpContext['mem'];
}

/** `crest check`'s verdict on POSIX timers: listed in /proc, read, and made again with a chosen ID. */
export const TIMER_PROBES: [string, (ij: ProbeTarget) => string][] = [
  [
    'posix-timers',
    (ij) => {
      const t = ij.thread;
      const exact = t.syscallRaw(SYS.prctl, PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0) === 0n;
      const idAt = ij.mem.alloc(8);
      const want = exact ? 4321 : 0;
      t.writeMem(idAt, Buffer.from(Int32Array.of(want).buffer));
      const ev = ij.mem.put(sigevent({ value: '0x0', signo: 0, notify: 'none' } as PosixTimer));
      t.syscall('timer_create', 'probe timer_create', SYS.timer_create, 1, ev, idAt);
      const id = t.readMem(idAt, 4).readInt32LE(0);
      if (exact) t.syscall('prctl', 'PR_TIMER_CREATE_RESTORE_IDS off', SYS.prctl, PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0);
      const listed = readTimers(ij.pid).map((x) => x.id);
      t.syscall('timer_gettime', 'probe timer_gettime', SYS.timer_gettime, id, ij.mem.alloc(32));
      t.syscall('timer_delete', 'probe timer_delete', SYS.timer_delete, id);
      if (!listed.includes(id)) throw new Error(`/proc/PID/timers does not list a new timer (ID ${id}): timers cannot be found`);
      if (exact && id !== want) throw new Error(`PR_TIMER_CREATE_RESTORE_IDS is on, but timer_create gave ID ${id} for ${want}`);
      return exact
        ? 'listed in /proc/PID/timers, read with timer_gettime, made again with their own IDs (PR_TIMER_CREATE_RESTORE_IDS)'
        : `listed in /proc/PID/timers and read with timer_gettime; made again in ID order (no PR_TIMER_CREATE_RESTORE_IDS, Linux < 6.15): a timer with more than ${MAX_ID_GAP} unused IDs before it is refused`;
    },
  ],
];
