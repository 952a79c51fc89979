// Scheduling attributes Linux keeps per thread: the nice value, the policy
// (with its real-time priority), the timer slack and the CPU affinity. Each
// thread gets its own back; what the restoring user may not set (a lower
// nice value, a real-time policy, CPUs it may not use) is clamped with a
// warning, as resource limits are.
import { readFileSync } from 'node:fs';
import { readStat } from '../proc/index.js';
import { SYS } from '../sys/constants.js';
import { isErrno } from '../sys/errors.js';
import type { Thread } from '../tracer/tracer.js';
import type { ThreadImage } from '../image/schema.js';
import { unsupported, type Kind, type RestoreContext } from './types.js';

const PR_GET_TIMERSLACK = 30;
const PR_SET_TIMERSLACK = 29;
const SCHED_OTHER = 0;
const SCHED_DEADLINE = 6;
const POLICY_NAMES: Record<number, string> = { 0: 'SCHED_OTHER', 1: 'SCHED_FIFO', 2: 'SCHED_RR', 3: 'SCHED_BATCH', 5: 'SCHED_IDLE', 6: 'SCHED_DEADLINE' };

/** "0-3,8,10-11" (Cpus_allowed_list) as CPU numbers. */
export function parseCpuList(list: string): number[] {
  const out: number[] = [];
  for (const part of list.trim().split(',')) {
    if (part === '') continue;
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) throw new Error(`malformed CPU list ${JSON.stringify(list)}`);
    const lo = Number(m[1]);
    const hi = m[2] === undefined ? lo : Number(m[2]);
    for (let c = lo; c <= hi; c++) out.push(c);
  }
  return out;
}

/** A cpu_set_t for sched_setaffinity: whole 64-bit words, bit c for CPU c. */
export function cpuMask(cpus: readonly number[]): Buffer {
  const words = Math.max(1, Math.ceil((Math.max(-1, ...cpus) + 1) / 64));
  const b = Buffer.alloc(words * 8);
  for (const c of cpus) b[c >> 3] = b[c >> 3]! | (1 << (c & 7));
  return b;
}

function cpusAllowedList(pid: number, tid: number): string {
  const status = readFileSync(`/proc/${pid}/task/${tid}/status`, 'latin1');
  const m = /^Cpus_allowed_list:\s*(\S*)$/m.exec(status);
  if (!m) throw new Error(`no Cpus_allowed_list in /proc/${pid}/task/${tid}/status`);
  return m[1]!;
}

/** Runs a setting in `thread`; EPERM/EACCES/EINVAL become a warning (and false). */
function trySet(ctx: RestoreContext, what: string, set: () => void): boolean {
  try {
    set();
    return true;
  } catch (e) {
    if (!isErrno(e, 'EPERM') && !isErrno(e, 'EACCES') && !isErrno(e, 'EINVAL')) throw e;
    ctx.warnings.push(`${what}: ${(e as Error).message}`);
    return false;
  }
}

export const sched: Kind = {
  name: 'sched',
  check(ctx) {
    if (ctx.stat.policy === SCHED_DEADLINE) {
      throw unsupported(ctx.hostPid, 'scheduling policy', 'it runs under SCHED_DEADLINE, whose parameters are not captured');
    }
  },
  dumpThreadInjected(ctx, { thread, thr }) {
    // Thread by thread: the slack is only readable from the thread itself
    // (/proc/TID/timerslack_ns needs CAP_SYS_NICE); the rest from /proc.
    const timerSlackNs = Number(thread.syscall('prctl', 'PR_GET_TIMERSLACK', SYS.prctl, PR_GET_TIMERSLACK, 0, 0, 0, 0));
    const st = readStat(ctx.hostPid, thread.tid);
    const policy = st.policy as NonNullable<ThreadImage['sched']>['policy'];
    if (![0, 1, 2, 3, 5].includes(policy)) {
      throw unsupported(ctx.hostPid, 'scheduling policy', `thread ${thread.tid} runs under ${POLICY_NAMES[policy] ?? `policy ${policy}`}, whose parameters are not captured`);
    }
    thr.sched = { nice: st.nice, policy, rtPriority: st.rt_priority, timerSlackNs, cpus: cpusAllowedList(ctx.hostPid, thread.tid) };
  },
  restoreThread(ctx, thread, img) {
    const s = img.sched;
    if (!s) return;
    const who = `thread ${img.tid}`;
    restorePolicy(ctx, thread, img, who);
    trySet(ctx, `${who}: nice value ${s.nice} needs a privilege you lack (RLIMIT_NICE or CAP_SYS_NICE); it keeps its current one`, () => {
      thread.syscall('setpriority', `set the nice value of ${who}`, SYS.setpriority, 0, 0, s.nice);
    });
    thread.syscall('prctl', `PR_SET_TIMERSLACK of ${who}`, SYS.prctl, PR_SET_TIMERSLACK, s.timerSlackNs, 0, 0, 0);
    const cpus = parseCpuList(s.cpus);
    const mask = cpuMask(cpus);
    trySet(ctx, `${who}: CPU affinity ${s.cpus} is not possible here (none of those CPUs may be used); it keeps every CPU it may use`, () => {
      thread.syscall('sched_setaffinity', `set the CPU affinity of ${who}`, SYS.sched_setaffinity, 0, mask.length, ctx.mem.put(mask));
    });
  },
};

function restorePolicy(ctx: RestoreContext, thread: Thread, img: ThreadImage, who: string): void {
  const s = img.sched!;
  if (s.policy === SCHED_OTHER) return; // a husk's threads run under SCHED_OTHER already
  const param = Buffer.alloc(4);
  param.writeInt32LE(s.rtPriority, 0);
  const name = POLICY_NAMES[s.policy] ?? `policy ${s.policy}`;
  trySet(ctx, `${who}: ${name} (priority ${s.rtPriority}) needs a privilege you lack (RLIMIT_RTPRIO or CAP_SYS_NICE); it runs under SCHED_OTHER`, () => {
    thread.syscall('sched_setscheduler', `set the ${name} policy of ${who}`, SYS.sched_setscheduler, 0, s.policy, ctx.mem.put(param));
  });
}
