// General registers, fs/gs base and the extended state (x87, SSE, AVX,
// AVX-512: all of it lives in the XSAVE area that NT_X86_XSTATE returns).
import { REG, regsFromImage, regsToImage } from '../tracer/tracer.js';
import { CrestError } from '../sys/errors.js';
import {
  EINTR,
  ERESTARTNOHAND,
  ERESTARTNOINTR,
  ERESTARTSYS,
  ERESTART_RESTARTBLOCK,
} from '../sys/constants.js';
import type { Kind, RestoreContext } from './types.js';

/**
 * In the XSAVE area PTRACE_GETREGSET (NT_X86_XSTATE) gives: XCR0, the
 * features this CPU and kernel enable, in the software-reserved bytes
 * (offset 464, where gdb reads it too), and XSTATE_BV, the features whose
 * state is in use, first in the XSAVE header (offset 512).
 */
const XCR0_OFFSET = 464;
const XSTATE_BV_OFFSET = 512;

function word(xstate: Buffer, at: number): bigint {
  return xstate.length < at + 8 ? 0n : xstate.readBigUInt64LE(at);
}

/** The features whose state a thread holds (its XSAVE header's XSTATE_BV). */
export function usedFeatures(xstate: Buffer): bigint {
  return word(xstate, XSTATE_BV_OFFSET);
}

/** The features this machine enables (XCR0), from any thread's XSAVE area. */
export function enabledFeatures(xstate: Buffer): bigint {
  return word(xstate, XCR0_OFFSET);
}

const SYS_POLL = 7n;
const SYS_FUTEX = 202n;
const FUTEX_WAIT_BITSET = 9n;

/**
 * A call that left through the restart block but loses nothing when simply
 * made again with the same arguments (still in rdi/rsi/rdx): poll(2) without
 * a timeout (it takes the restart block even then), and a futex wait with an
 * absolute deadline (FUTEX_WAIT_BITSET: sem_timedwait, pthread_cond_timedwait
 * ... glibc's sem_timedwait would pass an EINTR on to the program).
 */
function restartsAsIs(nr: bigint, r: BigUint64Array): boolean {
  if (nr === SYS_POLL) return BigInt.asIntN(32, r[REG.rdx]!) < 0n;
  if (nr === SYS_FUTEX) return (r[REG.rsi]! & 0x7fn) === FUTEX_WAIT_BITSET;
  return false;
}

/**
 * The registers to install so the task resumes where it was: a task caught
 * inside a sleeping system call holds -ERESTART* in rax. The kernel would
 * restart it on the way out of the stop; we do the same by hand (the restart
 * block of -ERESTART_RESTARTBLOCK died with the old process, so that call
 * returns EINTR, as after a signal - unless restarting it as it was loses
 * nothing, see restartsAsIs), and clear orig_rax so nothing restarts twice.
 * `restartBlock: 'again'` makes such a call again from the start instead
 * (the dump's safe-return frame: its timeout starts over, but no EINTR
 * comes out of a call the program did not expect to be interrupted).
 */
export function resumeRegs(saved: BigUint64Array, opts: { restartBlock?: 'eintr' | 'again' } = {}): BigUint64Array {
  const r = new BigUint64Array(saved);
  const orig = BigInt.asIntN(64, r[REG.orig_rax]!);
  if (orig >= 0n) {
    const rax = BigInt.asIntN(64, r[REG.rax]!);
    const restartBlock = rax === -BigInt(ERESTART_RESTARTBLOCK);
    const again = restartBlock && (opts.restartBlock === 'again' || restartsAsIs(orig, r));
    if (rax === -BigInt(ERESTARTSYS) || rax === -BigInt(ERESTARTNOINTR) || rax === -BigInt(ERESTARTNOHAND) || again) {
      r[REG.rax] = r[REG.orig_rax]!;
      r[REG.rip] = r[REG.rip]! - 2n;
    } else if (restartBlock) {
      r[REG.rax] = BigInt.asUintN(64, -BigInt(EINTR));
    }
  }
  r[REG.orig_rax] = 0xffffffffffffffffn;
  return r;
}

/** Refuses an image whose extended state uses CPU features this machine lacks. */
export function checkXfeatures(ctx: RestoreContext): void {
  const have = enabledFeatures(ctx.thread.xstate());
  for (const t of ctx.proc.threads) {
    const need = BigInt(t.xfeatures);
    if ((need & ~have) !== 0n) {
      throw new CrestError(
        'CPU_MISMATCH',
        `thread ${t.tid} uses CPU state features 0x${need.toString(16)} but this CPU offers 0x${have.toString(16)}; restore on a machine with the same CPU features`,
      );
    }
  }
}

export const registers: Kind = {
  name: 'registers',
  dumpThread(_ctx, { thread, thr }) {
    thr.regs = regsToImage(thread.origRegs);
    const xs = thread.originalXstate();
    thr.xstate = xs.toString('base64');
    thr.xfeatures = '0x' + usedFeatures(xs).toString(16);
  },
  // Last for each thread: after this the thread must not run injected calls.
  restoreThread(_ctx, thread, t) {
    const regs = resumeRegs(regsFromImage(t.regs));
    thread.install(regs, BigInt(t.sigmask), Buffer.from(t.xstate, 'base64'));
  },
};
