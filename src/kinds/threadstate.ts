// Per-thread kernel registrations that glibc relies on: the rseq area (the
// kernel writes the current CPU into it), the robust futex list, and the
// clear_child_tid address (set_tid_address).
import { readFileSync } from 'node:fs';
import { native } from '../sys/native.js';
import { PR, SYS } from '../sys/constants.js';
import type { Kind } from './types.js';

const hex = (v: bigint): string => '0x' + BigInt.asUintN(64, v).toString(16);

export const threadState: Kind = {
  name: 'thread-state',
  dumpThreadInjected(ctx, { thread, thr }) {
    const out = ctx.mem.alloc(8);
    thread.syscall('prctl', 'PR_GET_TID_ADDRESS', SYS.prctl, PR.GET_TID_ADDRESS, out);
    thr.clearChildTid = hex(ctx.thread.readMem(out, 8).readBigUInt64LE(0));
  },
  dumpThread(_ctx, { thread, thr }) {
    const n = native();
    const rseq = n.ptraceGetRseqConfig(thread.tid);
    thr.rseq = rseq
      ? { ptr: hex(rseq.rseqAbiPointer), size: rseq.rseqAbiSize, flags: rseq.flags, signature: hex(BigInt(rseq.signature)) }
      : null;
    const rl = n.getRobustList(thread.tid);
    thr.robustList = { head: hex(rl.head), len: rl.len };
    try {
      thr.comm = readFileSync(`/proc/${thread.tid}/comm`, 'utf8').replace(/\n$/, '');
    } catch {
      /* the name is cosmetic */
    }
  },
  restoreThread(ctx, thread, t) {
    if (t.comm !== undefined) {
      const comm = Buffer.alloc(16);
      comm.write(t.comm.slice(0, 15));
      thread.syscall('prctl', 'PR_SET_NAME', SYS.prctl, 15 /* PR_SET_NAME */, ctx.mem.put(comm));
    }
    if (t.rseq) {
      thread.syscall('rseq', 'register the rseq area', SYS.rseq, BigInt(t.rseq.ptr), t.rseq.size, 0, BigInt(t.rseq.signature));
    }
    if (BigInt(t.robustList.head) !== 0n) {
      thread.syscall('set_robust_list', 'restore the robust futex list', SYS.set_robust_list, BigInt(t.robustList.head), t.robustList.len);
    }
    thread.syscall('set_tid_address', 'restore clear_child_tid', SYS.set_tid_address, BigInt(t.clearChildTid));
  },
};
