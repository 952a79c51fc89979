// Signal dispositions, the alternate stack, and queued signals. The blocked
// mask is installed last, with the registers (see registers.ts/restore stages).
import { native } from '../sys/native.js';
import { SYS } from '../sys/constants.js';
import type { Kind } from './types.js';

const KSIGACTION_SIZE = 32; // handler, flags, restorer, mask (8 bytes each)
const hex = (v: bigint): string => '0x' + BigInt.asUintN(64, v).toString(16);

const SI_TIMER = -2;

/**
 * A dumped siginfo made ready to queue again. A POSIX timer's signal carries
 * the kernel's private re-arm cookie, which older kernels act on when the
 * signal is taken: the restored timer is armed already, so it is cleared.
 */
function siginfo(saved: string): Buffer {
  const b = Buffer.from(saved, 'base64');
  if (b.readInt32LE(8) === SI_TIMER) b.writeInt32LE(0, 32);
  return b;
}

/** Signals whose disposition cannot be read or changed. */
const FIXED = new Set([9, 19]);

export const signals: Kind = {
  name: 'signals',
  dumpInjected(ctx) {
    const out = ctx.mem.alloc(KSIGACTION_SIZE);
    const list = [];
    for (let sig = 1; sig <= 64; sig++) {
      if (FIXED.has(sig)) continue;
      ctx.thread.syscall('rt_sigaction', `read action of signal ${sig}`, SYS.rt_sigaction, sig, 0, out, 8);
      const b = ctx.thread.readMem(out, KSIGACTION_SIZE);
      const handler = b.readBigUInt64LE(0);
      const flags = b.readBigUInt64LE(8);
      const restorer = b.readBigUInt64LE(16);
      const mask = b.readBigUInt64LE(24);
      if (handler === 0n && flags === 0n && mask === 0n) continue;
      list.push({ sig, handler: hex(handler), flags: hex(flags), restorer: hex(restorer), mask: hex(mask) });
    }
    ctx.proc.sigactions = list;
  },
  dumpThreadInjected(ctx, { thread, thr }) {
    const ss = ctx.mem.alloc(24);
    thread.syscall('sigaltstack', 'read alternate stack', SYS.sigaltstack, 0, ss);
    const b = ctx.thread.readMem(ss, 24);
    thr.sigaltstack = { sp: hex(b.readBigUInt64LE(0)), flags: b.readInt32LE(8), size: Number(b.readBigUInt64LE(16)) };
  },
  dump(ctx) {
    ctx.proc.sharedPending = native().ptracePeekSiginfo(ctx.thread.tid, true, 4096).map((b) => b.toString('base64'));
  },
  dumpThread(_ctx, { thread, thr }) {
    thr.sigmask = hex(thread.origSigmask);
    const own = native().ptracePeekSiginfo(thread.tid, false, 4096);
    // Signals we took out of the way while freezing were never blocked: they
    // are delivered right after restore, as they would have been.
    thr.pending = [...thread.caughtSignals, ...own].map((b) => b.toString('base64'));
  },
  restore(ctx) {
    const act = ctx.mem.alloc(KSIGACTION_SIZE);
    for (const a of ctx.proc.sigactions) {
      const b = Buffer.alloc(KSIGACTION_SIZE);
      b.writeBigUInt64LE(BigInt(a.handler), 0);
      b.writeBigUInt64LE(BigInt(a.flags), 8);
      b.writeBigUInt64LE(BigInt(a.restorer), 16);
      b.writeBigUInt64LE(BigInt(a.mask), 24);
      ctx.thread.writeMem(act, b);
      ctx.thread.syscall('rt_sigaction', `set action of signal ${a.sig}`, SYS.rt_sigaction, a.sig, act, 0, 8);
    }
    // Queue pending signals while everything is blocked; the real mask goes in with the registers.
    const info = ctx.mem.alloc(128);
    for (const p of ctx.proc.sharedPending) {
      const b = siginfo(p);
      ctx.thread.writeMem(info, b);
      ctx.thread.syscall('rt_sigqueueinfo', 'queue a pending signal', SYS.rt_sigqueueinfo, ctx.proc.pid, b.readInt32LE(0), info);
    }
  },
  restoreThread(ctx, thread, t) {
    const ss = Buffer.alloc(24);
    ss.writeBigUInt64LE(BigInt(t.sigaltstack.sp), 0);
    ss.writeInt32LE(t.sigaltstack.flags & ~1, 8); // SS_ONSTACK is a report, not a setting
    ss.writeBigUInt64LE(BigInt(t.sigaltstack.size), 16);
    thread.syscall('sigaltstack', 'set alternate stack', SYS.sigaltstack, ctx.mem.put(ss), 0);
    const info = ctx.mem.alloc(128);
    for (const p of t.pending) {
      const b = siginfo(p);
      ctx.thread.writeMem(info, b);
      thread.syscall(
        'rt_tgsigqueueinfo',
        'queue a pending thread signal',
        SYS.rt_tgsigqueueinfo,
        ctx.proc.pid,
        t.tid,
        b.readInt32LE(0),
        info,
      );
    }
  },
};
