// Process-wide attributes that are one value each: working directory, umask,
// personality, nice value, resource limits and interval timers.
import { readFileSync, readlinkSync } from 'node:fs';
import { native } from '../sys/native.js';
import { RLIMIT_COUNT, SYS } from '../sys/constants.js';
import { isErrno } from '../sys/errors.js';
import { unsupported, type Kind } from './types.js';

const hex = (v: bigint): string => '0x' + BigInt.asUintN(64, v).toString(16);
const ITIMERS = ['real', 'virtual', 'prof'] as const;
const PR_SET_PDEATHSIG = 1;
const PR_GET_PDEATHSIG = 2;
const PR_SET_TIMERSLACK = 29;
const PR_GET_TIMERSLACK = 30;
const PR_SET_CHILD_SUBREAPER = 36;
const PR_GET_CHILD_SUBREAPER = 37;
const PR_SET_THP_DISABLE = 41;
const PR_GET_THP_DISABLE = 42;
const RLIMIT_NAMES = [
  'cpu', 'fsize', 'data', 'stack', 'core', 'rss', 'nproc', 'nofile', 'memlock', 'as', 'locks',
  'sigpending', 'msgqueue', 'nice', 'rtprio', 'rttime',
];

function readLinkTarget(pid: number, what: string): string {
  return readlinkSync(`/proc/${pid}/${what}`);
}

export const processAttrs: Kind = {
  name: 'process',
  check(ctx) {
    const root = readLinkTarget(ctx.hostPid, 'root');
    if (root !== '/') throw unsupported(ctx.hostPid, 'root directory', `it runs chrooted in ${root}`);
    const cwd = readLinkTarget(ctx.hostPid, 'cwd');
    if (cwd.endsWith(' (deleted)')) throw unsupported(ctx.hostPid, 'working directory', `${cwd} was deleted`);
  },
  dumpInjected(ctx) {
    const out = ctx.mem.alloc(32);
    const itimers = {} as Record<(typeof ITIMERS)[number], { intervalUs: number; valueUs: number }>;
    ITIMERS.forEach((name, which) => {
      ctx.thread.syscall('getitimer', `read the ${name} interval timer`, SYS.getitimer, which, out);
      const b = ctx.thread.readMem(out, 32);
      const us = (o: number): number => Number(b.readBigInt64LE(o)) * 1e6 + Number(b.readBigInt64LE(o + 8));
      itimers[name] = { intervalUs: us(0), valueUs: us(16) };
    });
    ctx.proc.itimers = itimers;
    const t = ctx.thread;
    t.syscall('prctl', 'PR_GET_PDEATHSIG', SYS.prctl, PR_GET_PDEATHSIG, out);
    const pdeathsig = t.readMem(out, 4).readInt32LE(0);
    t.syscall('prctl', 'PR_GET_CHILD_SUBREAPER', SYS.prctl, PR_GET_CHILD_SUBREAPER, out);
    const childSubreaper = t.readMem(out, 4).readInt32LE(0) !== 0;
    const timerslackNs = Number(t.syscall('prctl', 'PR_GET_TIMERSLACK', SYS.prctl, PR_GET_TIMERSLACK, 0, 0, 0, 0));
    const thpDisable = t.syscall('prctl', 'PR_GET_THP_DISABLE', SYS.prctl, PR_GET_THP_DISABLE, 0, 0, 0, 0) !== 0n;
    ctx.proc.prctl = { pdeathsig, childSubreaper, timerslackNs, thpDisable };
  },
  dump(ctx) {
    const pid = ctx.hostPid;
    ctx.proc.cwd = readLinkTarget(pid, 'cwd');
    ctx.proc.umask = ctx.status.umask;
    ctx.proc.personality = parseInt(readFileSync(`/proc/${pid}/personality`, 'utf8').trim(), 16);
    ctx.proc.nice = ctx.stat.nice;
    const n = native();
    const limits: [number, string, string][] = [];
    for (let r = 0; r < RLIMIT_COUNT; r++) {
      const [soft, hard] = n.prlimit(pid, r);
      limits.push([r, hex(soft), hex(hard)]);
    }
    ctx.proc.rlimits = limits;
  },
  restore(ctx) {
    const p = ctx.proc;
    const t = ctx.thread;
    t.syscall('chdir', `change directory to ${p.cwd}`, SYS.chdir, ctx.mem.str(p.cwd));
    t.syscall('umask', 'set umask', SYS.umask, p.umask);
    t.syscall('personality', 'set personality', SYS.personality, p.personality);
    const cur = native();
    // Limits: never above what the restoring user may have (no CAP_SYS_RESOURCE):
    // a hard limit we cannot raise is kept, and the soft limit clamped to it.
    const lim = ctx.mem.alloc(16);
    for (const [r, softS, hardS] of p.rlimits) {
      const [, curHard] = cur.prlimit(ctx.huskHostPid, r);
      let soft = BigInt(softS);
      let hard = BigInt(hardS);
      if (hard > curHard) {
        ctx.warnings.push(`limit ${RLIMIT_NAMES[r] ?? r}: hard limit ${hard} is above what you may set (${curHard}); kept at ${curHard}`);
        hard = curHard;
        if (soft > hard) soft = hard;
      }
      const b = Buffer.alloc(16);
      b.writeBigUInt64LE(soft, 0);
      b.writeBigUInt64LE(hard, 8);
      t.writeMem(lim, b);
      t.syscall('prlimit64', `set limit ${RLIMIT_NAMES[r] ?? r}`, SYS.prlimit64, 0, r, lim, 0);
    }
    // With per-thread values (kinds/sched.ts) each thread sets its own once it
    // exists: one set here first would be inherited, and lowering it needs a privilege.
    if (p.threads[0]?.sched === undefined) {
      try {
        t.syscall('setpriority', 'set nice value', SYS.setpriority, 0, 0, p.nice);
      } catch (e) {
        if (!isErrno(e, 'EACCES') && !isErrno(e, 'EPERM')) throw e;
        ctx.warnings.push(`nice value ${p.nice} needs a privilege you lack; the process keeps the default`);
      }
    }
    // Always set: a husk of crest-pidhelper dies with its parent until here (0 clears that).
    t.syscall('prctl', 'PR_SET_PDEATHSIG', SYS.prctl, PR_SET_PDEATHSIG, p.prctl?.pdeathsig ?? 0, 0, 0, 0);
    if (p.prctl) {
      const c = p.prctl;
      if (c.childSubreaper) t.syscall('prctl', 'PR_SET_CHILD_SUBREAPER', SYS.prctl, PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
      t.syscall('prctl', 'PR_SET_TIMERSLACK', SYS.prctl, PR_SET_TIMERSLACK, c.timerslackNs, 0, 0, 0);
      if (c.thpDisable) t.syscall('prctl', 'PR_SET_THP_DISABLE', SYS.prctl, PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    const itv = ctx.mem.alloc(32);
    ITIMERS.forEach((name, which) => {
      const v = { ...p.itimers[name] };
      if (v.valueUs === 0 && v.intervalUs === 0) return;
      // Expired with its signal still queued: the kernel re-arms such a timer
      // when the signal is taken. setitimer cannot keep an interval without
      // arming, so arm it to fire at once: its signal merges with the queued one.
      if (v.valueUs === 0) v.valueUs = 1;
      const b = Buffer.alloc(32);
      b.writeBigInt64LE(BigInt(Math.floor(v.intervalUs / 1e6)), 0);
      b.writeBigInt64LE(BigInt(v.intervalUs % 1e6), 8);
      b.writeBigInt64LE(BigInt(Math.floor(v.valueUs / 1e6)), 16);
      b.writeBigInt64LE(BigInt(v.valueUs % 1e6), 24);
      t.writeMem(itv, b);
      t.syscall('setitimer', `set the ${name} interval timer`, SYS.setitimer, which, itv, 0);
    });
  },
};
