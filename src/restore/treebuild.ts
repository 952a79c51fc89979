// Builds the job's process tree out of husks before any of them becomes its
// process (restore/index.ts then turns each into its process): the plan of
// ./treeplan.ts is carried out by syscalls injected into the husks, which
// are still the helper's small processes (forking them is cheap). Then the
// temporary processes exit (their orphans move to the job's init or their
// subreaper), zombies exit with their status, stopped processes stop, and
// the SIGCHLDs all this sent to parents are taken back: each parent got its
// own long ago (a pending one is in the image and queued again later).
import type { Manifest } from '../image/schema.js';
import { CrestError, isErrno } from '../sys/errors.js';
import { MAP, PROT, PTRACE_EVENT_STOP, SIG, SYS } from '../sys/constants.js';
import { native } from '../sys/native.js';
import { REG, Thread, describeStatus, sleepMs, waitTask } from '../tracer/tracer.js';
import { ScratchAllocator } from '../kinds/types.js';
import type { Husks } from '../pids/index.js';
import { planTree, type TreeNode } from './treeplan.js';

const RLIMIT_CORE = 4;
const PR_SET_CHILD_SUBREAPER = 36;
const WNOHANG = 1;
const WUNTRACED = 2;
const __WALL = 0x40000000;
const SIG_IGN = 1n;

/** The plan's view of an image: its processes and zombies. */
export function treeNodes(m: Manifest): TreeNode[] {
  return [
    ...m.processes.map((p) => ({
      pid: p.pid,
      ppid: p.ppid,
      pgid: p.pgid,
      sid: p.sid,
      exitSignal: p.exitSignal ?? SIG.SIGCHLD,
      subreaper: p.prctl?.childSubreaper ?? false,
      zombie: false,
    })),
    ...(m.zombies ?? []).map((z) => ({ ...z, subreaper: false, zombie: true })),
  ];
}

/** The plan for an image of a crest job (the helper makes what it says init forks). */
export function planImageTree(m: Manifest): ReturnType<typeof planTree> {
  return planTree(treeNodes(m), { usedIds: m.processes.flatMap((p) => p.threads.map((t) => t.tid)) });
}

/**
 * Seizes a husk once it is parked in pause(): a husk reports itself ready a
 * moment before it closes its report pipe and parks, and one seized in that
 * moment would carry the pipe into the restored process. Not yet parked: let
 * it go on and look again (bounded).
 */
export function seizeParked(pid: number): Thread {
  for (let tries = 0; ; tries++) {
    const t = Thread.seize(pid, { exitKill: true, traceClone: true, traceFork: true, holdSignals: true });
    if (t.origRegs[REG.orig_rax] === BigInt(SYS.pause) || tries >= 500) return t;
    t.release();
    sleepMs(2);
  }
}

/** A husk's injection site: the `syscall` instruction it is parked after. */
function parkedSite(t: Thread): number {
  const rip = Number(t.origRegs[REG.rip]!);
  const insn = t.readMem(rip - 2, 2);
  if (insn[0] !== 0x0f || insn[1] !== 0x05) {
    throw new CrestError('HUSK_STATE', `husk ${t.tid} is not parked at a syscall (rip 0x${rip.toString(16)})`);
  }
  return rip - 2;
}

/**
 * Seizes the husks the PID mode made, makes the rest of the tree when the
 * husks may choose pids (userns), and returns the main thread of every
 * process of the image by its pid, all held (in `held` too).
 */
export function buildTree(m: Manifest, husks: Husks, held: Thread[], privileged: boolean): Map<number, Thread> {
  const threads = new Map<number, Thread>();
  for (const [pid, host] of husks.pids) {
    const t = seizeParked(host);
    held.push(t);
    t.setSyscallSite(parkedSite(t));
    threads.set(pid, t);
  }
  if (!privileged || m.job.pidMode !== 'userns') return threads;

  // A page in each husk that runs calls taking memory (copied into what it forks, then unmapped with the husk's memory).
  const scratch = new Map<number, { at: number; mem: ScratchAllocator }>();
  const mem = (pid: number): ScratchAllocator => {
    let s = scratch.get(pid);
    if (!s) {
      const t = get(pid);
      const at = Number(t.syscall('mmap', 'map a page for the tree', SYS.mmap, 0, 4096, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS, -1, 0));
      s = { at, mem: new ScratchAllocator(t, at, 4096) };
      scratch.set(pid, s);
    }
    s.mem.reset();
    return s.mem;
  };
  const get = (pid: number): Thread => {
    const t = threads.get(pid);
    if (!t) throw new CrestError('HELPER_FAILED', `no husk for pid ${pid} of the tree`);
    return t;
  };
  const forget = (pid: number): void => {
    const t = threads.get(pid)!;
    held.splice(held.indexOf(t), 1);
    threads.delete(pid);
    scratch.delete(pid);
  };

  for (const step of planImageTree(m).steps) {
    switch (step.op) {
      case 'fork':
        if (step.by !== 1) threads.set(step.pid, forkHusk(get(step.by), mem(step.by), step.pid, step.exitSignal, held));
        break;
      case 'setsid':
        get(step.pid).syscall('setsid', `make session ${step.pid}`, SYS.setsid);
        break;
      case 'setpgid':
        get(step.pid).syscall('setpgid', `join process group ${step.pgid}`, SYS.setpgid, 0, step.pgid);
        break;
      case 'subreaper':
        get(step.pid).syscall('prctl', 'PR_SET_CHILD_SUBREAPER', SYS.prctl, PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        break;
      case 'exit-temp':
        exitAs(get(step.pid), 0, mem(step.pid));
        forget(step.pid);
        if (step.reapBy !== 1) {
          const got = get(step.reapBy).syscall('wait4', `reap temporary process ${step.pid}`, SYS.wait4, step.pid, 0, __WALL, 0);
          if (Number(got) !== step.pid) throw new CrestError('RESTORE_TREE', `reaping temporary process ${step.pid} gave ${got}`);
        }
        break;
    }
  }

  // Who was sent a SIGCHLD (or exit signal) by what follows: parent -> signals.
  const notified = new Map<number, Set<number>>();
  const note = (parent: number, sig: number): void => {
    if (parent > 1 && sig > 0) (notified.get(parent) ?? notified.set(parent, new Set()).get(parent)!).add(sig);
  };
  // Zombies exit now that their parents are final: the parent's wait gets exactly their status.
  for (const z of m.zombies ?? []) {
    exitAs(get(z.pid), z.status, mem(z.pid));
    forget(z.pid);
    note(z.ppid, z.exitSignal);
  }
  for (const p of m.processes) {
    if (!p.stopped) continue;
    stopAs(get(p.pid), p.stopped.signal);
    note(p.ppid, SIG.SIGCHLD);
    if (p.stopped.reported && p.ppid > 1) {
      // Its parent had collected this stop already: collect it again.
      const got = get(p.ppid).syscall('wait4', `collect the stop of ${p.pid}`, SYS.wait4, p.pid, 0, WUNTRACED | WNOHANG | __WALL, 0);
      if (Number(got) !== p.pid) throw new CrestError('RESTORE_TREE', `collecting the stop of ${p.pid} in ${p.ppid} gave ${got}`);
    }
  }
  for (const [parent, sigs] of notified) {
    const t = get(parent);
    for (const sig of sigs) {
      if (sig === SIG.SIGKILL || sig === SIG.SIGSTOP) continue;
      // Ignoring a signal discards it where it is pending; the husk's action is the default again after.
      for (const handler of [SIG_IGN, 0n]) {
        const act = Buffer.alloc(32);
        act.writeBigUInt64LE(handler, 0);
        t.syscall('rt_sigaction', `take back signal ${sig} sent while the tree was built`, SYS.rt_sigaction, sig, mem(parent).put(act), 0, 8);
      }
    }
  }
  for (const [pid, s] of scratch) get(pid).syscall('munmap', 'unmap the page for the tree', SYS.munmap, s.at, 4096);
  return threads;
}

/** clone3 in `parent` (a husk): a new husk `pid`, stopped and attached to us like its parent. */
function forkHusk(parent: Thread, mem: ScratchAllocator, pid: number, exitSignal: number, held: Thread[]): Thread {
  const tids = Buffer.alloc(8);
  tids.writeInt32LE(pid, 0);
  const tidAt = mem.put(tids);
  const args = Buffer.alloc(88); // struct clone_args (CLONE_ARGS_SIZE_VER2): no flags, a fork
  args.writeBigUInt64LE(BigInt(exitSignal), 32);
  args.writeBigUInt64LE(BigInt(tidAt), 64);
  args.writeBigUInt64LE(1n, 72);
  let got: bigint;
  try {
    got = parent.syscall('clone3', `create process ${pid}`, SYS.clone3, mem.put(args), 88);
  } catch (e) {
    if (isErrno(e, 'EEXIST')) throw new CrestError('PID_TAKEN', `pid ${pid} is taken in the job's namespace`, { cause: e });
    throw e;
  }
  if (Number(got) !== pid) throw new CrestError('RESTORE_TREE', `process ${pid} was created as ${got}`);
  const host = parent.newThreads.shift();
  if (host === undefined) throw new CrestError('RESTORE_TREE', `process ${pid} was created but not reported to the tracer`);
  const t = Thread.adopt(host);
  held.push(t);
  // A copy of its parent: parked right after the same `syscall` instruction.
  t.setSyscallSite(parent.site);
  return t;
}

/** Ends husk `t` with wait status `status` (exit code << 8, or a signal); we collect it as its tracer, its parent reaps it. */
function exitAs(t: Thread, status: number, mem: ScratchAllocator): void {
  const n = native();
  const sig = status & 0x7f;
  if (sig === 0) {
    const r = new BigUint64Array(t.origRegs);
    r[REG.rax] = BigInt(SYS.exit_group);
    r[REG.orig_rax] = 0xffffffffffffffffn;
    r[REG.rdi] = BigInt((status >> 8) & 0xff);
    r[REG.rip] = BigInt(t.site);
    n.ptraceSetRegs(t.tid, r);
    n.ptraceCont(t.tid, 0);
  } else {
    // A core size limit of 1 byte: a core-dumping signal writes no core file,
    // not even to a core_pattern pipe (the status loses its core flag).
    const lim = Buffer.alloc(16);
    lim.writeBigUInt64LE(1n, 0);
    lim.writeBigUInt64LE(1n, 8);
    t.syscall('prlimit64', 'RLIMIT_CORE 1', SYS.prlimit64, 0, RLIMIT_CORE, mem.put(lim), 0);
    n.ptraceSetSigmask(t.tid, 0n);
    n.kill(t.tid, sig);
    n.ptraceCont(t.tid, 0);
  }
  for (;;) {
    const st = waitTask(t.tid);
    if (st.kind === 'stopped') {
      // The signal's delivery: let it act (default action: the end); anything else is ours and goes.
      n.ptraceCont(t.tid, st.event === 0 && st.signal === sig ? sig : 0);
      continue;
    }
    const want = sig === 0 ? `exited with ${(status >> 8) & 0xff}` : `killed by signal ${sig}`;
    if (describeStatus(st) !== want) throw new CrestError('RESTORE_TREE', `process ${t.tid} ${describeStatus(st)}, not ${want}`);
    break;
  }
  t.markDetached();
}

/**
 * Stops husk `t` with `sig` as a SIGSTOP would: a group-stop that its parent
 * is told of, and that it goes back to when we let it go. The husk's actions
 * are all default and no instruction of it runs: the signal is taken before.
 */
function stopAs(t: Thread, sig: number): void {
  const n = native();
  n.ptraceSetSigmask(t.tid, 0n);
  n.kill(t.tid, sig);
  n.ptraceCont(t.tid, 0);
  try {
    for (;;) {
      const st = waitTask(t.tid, 3000);
      if (st.kind !== 'stopped') throw new CrestError('RESTORE_TREE', `process ${t.tid} ${describeStatus(st)} while being stopped`);
      if (st.event === PTRACE_EVENT_STOP && st.signal === sig) break;
      n.ptraceCont(t.tid, st.event === 0 && st.signal === sig ? sig : 0);
    }
  } catch (e) {
    if (e instanceof CrestError && e.code === 'TRACE_TIMEOUT') {
      throw new CrestError('RESTORE_TREE', `process ${t.tid} did not stop on signal ${sig} (a terminal stop signal in an orphaned process group is discarded)`, { cause: e });
    }
    throw e;
  }
  // Blocked again for the injections to come; its own mask goes in with its registers.
  n.ptraceSetSigmask(t.tid, 0xffffffffffffffffn);
}

