// Per-thread kernel registrations that glibc relies on: the rseq area (the
// kernel writes the current CPU into it), the robust futex list, and the
// clear_child_tid address (set_tid_address).
import { native } from '../sys/native.js';
import { PR, SYS } from '../sys/constants.js';
import type { Kind } from './types.js';

const hex = (v: bigint): string => '0x' + BigInt.asUintN(64, v).toString(16);

export const threadState: Kind = {
  name: 'thread-state',
  dumpInjected(ctx) {
    const out = ctx.mem.alloc(8);
    ctx.thread.syscall('prctl', 'PR_GET_TID_ADDRESS', SYS.prctl, PR.GET_TID_ADDRESS, out);
    ctx.thr.clearChildTid = hex(ctx.thread.readMem(out, 8).readBigUInt64LE(0));
  },
  dump(ctx) {
    const n = native();
    const rseq = n.ptraceGetRseqConfig(ctx.thread.tid);
    ctx.thr.rseq = rseq
      ? { ptr: hex(rseq.rseqAbiPointer), size: rseq.rseqAbiSize, flags: rseq.flags, signature: hex(BigInt(rseq.signature)) }
      : null;
    const rl = n.getRobustList(ctx.thread.tid);
    ctx.thr.robustList = { head: hex(rl.head), len: rl.len };
  },
  restore(ctx) {
    const t = ctx.proc.threads[0]!;
    if (t.rseq) {
      ctx.thread.syscall('rseq', 'register the rseq area', SYS.rseq, BigInt(t.rseq.ptr), t.rseq.size, 0, BigInt(t.rseq.signature));
    }
    if (BigInt(t.robustList.head) !== 0n) {
      ctx.thread.syscall('set_robust_list', 'restore the robust futex list', SYS.set_robust_list, BigInt(t.robustList.head), t.robustList.len);
    }
    ctx.thread.syscall('set_tid_address', 'restore clear_child_tid', SYS.set_tid_address, BigInt(t.clearChildTid));
  },
};
