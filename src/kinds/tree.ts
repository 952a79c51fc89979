// A process's place in its tree that only the process itself can tell or
// that the tree driver needs per process: the signal its parent gets when it
// exits (clone's exit_signal), and, for a parent, which of its stopped
// children's stops it has not collected yet (waitpid with WUNTRACED) and
// the status each of its zombies holds for it (waitid WNOWAIT). The
// tree itself (parents, sessions, groups, zombies, stops) is rebuilt by
// restore/treeplan.ts and restore/treebuild.ts.
import { SYS } from '../sys/constants.js';
import type { Kind } from './types.js';

const P_PID = 1;
const WNOHANG = 1;
const WSTOPPED = 2;
const WEXITED = 4;
const WNOWAIT = 0x01000000;
const __WALL = 0x40000000;
/** siginfo_t of a SIGCHLD-style report: si_code, then si_pid, si_uid, si_status after padding. */
const SI_CODE = 8;
const SI_PID = 16;
const SI_STATUS = 24;
const CLD_EXITED = 1;
const CLD_DUMPED = 3;

export const tree: Kind = {
  name: 'tree',
  dumpInjected(ctx) {
    if (!ctx.tree) return;
    const info = ctx.mem.alloc(128);
    for (const child of ctx.tree.stoppedChildren) {
      ctx.thread.writeMem(info, Buffer.alloc(128));
      // WNOWAIT: look without collecting; the report stays for the process.
      ctx.thread.syscall('waitid', `look for the stop report of child ${child}`, SYS.waitid, P_PID, child, info, WSTOPPED | WNOHANG | WNOWAIT | __WALL, 0);
      if (ctx.thread.readMem(info + SI_PID, 4).readInt32LE(0) === child) ctx.tree.unreported.add(child);
    }
    // A zombie's status as its parent's wait will see it (its /proc stat hides it once it is not dumpable).
    for (const z of ctx.tree.zombies) {
      ctx.thread.writeMem(info, Buffer.alloc(128));
      ctx.thread.syscall('waitid', `look at the exit of child ${z}`, SYS.waitid, P_PID, z, info, WEXITED | WNOHANG | WNOWAIT | __WALL, 0);
      const b = ctx.thread.readMem(info, 128);
      if (b.readInt32LE(SI_PID) !== z) continue;
      const code = b.readInt32LE(SI_CODE);
      const st = b.readInt32LE(SI_STATUS);
      ctx.tree.status.set(z, code === CLD_EXITED ? (st & 0xff) << 8 : (st & 0x7f) | (code === CLD_DUMPED ? 0x80 : 0));
    }
  },
  dump(ctx) {
    // Outside a job the restored process is crest-pidhelper's child: its exit signal is not given back.
    if (ctx.initHostPid !== null) ctx.proc.exitSignal = ctx.stat.exit_signal;
  },
};
