// The tracer: freezing threads, their registers, and "run this system call in
// that task" (injection). Everything that touches a stopped task goes through
// here, on the main thread (ptrace requests are only accepted from the thread
// that attached, so nothing here may run on the libuv pool).
import { closeSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { native } from '../sys/native.js';
import { CrestError, SyscallError, errnoName } from '../sys/errors.js';
import { NT, PTRACE_EVENT_CLONE, PTRACE_EVENT_FORK, PTRACE_EVENT_STOP, SIG, WNOHANG, __WALL } from '../sys/constants.js';
import { REG_NAMES, type RegName, type Regs } from '../image/schema.js';
import { faultArg, stall } from '../fault.js';

/** Index of each register in struct user_regs_struct. */
export const REG: Record<RegName, number> = Object.fromEntries(
  REG_NAMES.map((n, i) => [n, i]),
) as Record<RegName, number>;

const sleepCell = new Int32Array(new SharedArrayBuffer(4));
/** Blocks the thread for `ms` milliseconds (we are synchronous by design while tasks are frozen). */
export function sleepMs(ms: number): void {
  Atomics.wait(sleepCell, 0, 0, ms);
}

/** A decoded wait status. */
export type WaitStatus =
  | { kind: 'exited'; code: number }
  | { kind: 'signaled'; signal: number }
  | { kind: 'stopped'; signal: number; event: number };

export function decodeStatus(status: number): WaitStatus {
  if ((status & 0xff) === 0x7f) {
    return { kind: 'stopped', signal: (status >> 8) & 0xff, event: (status >>> 16) & 0xff };
  }
  if ((status & 0x7f) === 0) return { kind: 'exited', code: (status >> 8) & 0xff };
  return { kind: 'signaled', signal: status & 0x7f };
}

/**
 * Waits for a state change of `tid` (a tracee), with a time bound: a task in
 * uninterruptible sleep can take a while to reach its stop, and a task that
 * never stops must not hang crest.
 */
export function waitTask(tid: number, timeoutMs = 5000): WaitStatus {
  const n = native();
  // Spin briefly first: single-steps and interrupts usually land in microseconds.
  for (let i = 0; i < 200; i++) {
    const r = n.waitpid(tid, WNOHANG | __WALL);
    if (r.pid === tid) return decodeStatus(r.status);
  }
  const deadline = Date.now() + timeoutMs;
  let pause = 0.05;
  for (;;) {
    const r = n.waitpid(tid, WNOHANG | __WALL);
    if (r.pid === tid) return decodeStatus(r.status);
    if (Date.now() > deadline) {
      throw new CrestError('TRACE_TIMEOUT', `task ${tid} did not stop within ${timeoutMs} ms`);
    }
    sleepMs(pause);
    pause = Math.min(pause * 2, 5);
  }
}

export function regsToImage(r: BigUint64Array): Regs {
  const out = {} as Record<RegName, string>;
  REG_NAMES.forEach((name, i) => {
    out[name] = '0x' + (r[i] ?? 0n).toString(16);
  });
  return out as Regs;
}

export function regsFromImage(r: Regs): BigUint64Array {
  const out = new BigUint64Array(REG_NAMES.length);
  REG_NAMES.forEach((name, i) => {
    out[i] = BigInt(r[name]);
  });
  return out;
}

/** Signed view of a 64-bit register value. */
export function signed(v: bigint): bigint {
  return BigInt.asIntN(64, v);
}

/** struct rt_sigframe on x86-64: pretcode, ucontext (304 bytes), siginfo (128). */
const RT_SIGFRAME_SIZE = 8 + 304 + 128;
/** Room a safe-return frame may take (the frame, then the XSAVE area, 64-byte aligned). */
export const FRAME_ROOM = 40 * 1024;
/** The safe-return trampoline: syscall; mov $15, %eax; syscall (rt_sigreturn); ud2. */
export const SAFE_RETURN_CODE = Buffer.from([0x0f, 0x05, 0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x0f, 0x0b]);

let injectedCalls = 0;
/**
 * Fault point kill-in-injection:N: crest is SIGKILLed just after starting
 * its Nth injected system call (the thread running into it or stopped at
 * its entry). With "N:exit", once that call has ended (the thread stopped
 * at its exit; for calls that stop at entry and exit, see useSyscallStops).
 */
const KILL_IN_INJECTION = faultArg('kill-in-injection');
function killInInjection(tid: number): void {
  const f = KILL_IN_INJECTION;
  if (f === null) return;
  const [n, when] = f.split(':');
  if (++injectedCalls !== Number(n)) return;
  if (when === 'exit') {
    waitTask(tid);
    native().ptraceSyscall(tid, 0);
    waitTask(tid);
  }
  process.kill(process.pid, 'SIGKILL');
}

/** A value passed to an injected system call. */
export type Arg = number | bigint;

/**
 * One thread we hold in a ptrace stop. Created by `Thread.seize`; all state
 * changes that must be undone on failure are tracked so `release()` can put
 * the thread back exactly as it was.
 */
export class Thread {
  readonly tid: number;
  /** Registers at the moment we stopped it: what release() puts back. */
  readonly origRegs: BigUint64Array;
  readonly origSigmask: bigint;
  /** Signals dequeued while we were stopping the thread; re-queued on release or saved in the image. */
  readonly caughtSignals: Buffer[] = [];
  /** Threads and processes created by injected clones (host tids), attached to us, not yet adopted. */
  readonly newThreads: number[] = [];
  /** The signal that had stopped the thread's process when we seized it (group-stop: SIGSTOP, SIGTSTP ...); 0: it ran. */
  groupStop = 0;
  private syscallSite = 0;
  private injecting = false;
  /** Injected calls stop at system-call entry and exit (PTRACE_SYSCALL) instead of single-stepping (see armSafeReturn). */
  private syscallStops = false;
  /** While armed: the stack pointer injected calls run with, just above the safe-return frame. */
  private safeSp = 0n;
  private memFd = -1;
  private detached = false;
  private origXstate: Buffer | undefined;

  private constructor(tid: number, regs: BigUint64Array, sigmask: bigint) {
    this.tid = tid;
    this.origRegs = regs;
    this.origSigmask = sigmask;
  }

  /**
   * PTRACE_SEIZE + PTRACE_INTERRUPT, then wait for the interrupt stop.
   * A signal arriving meanwhile shows up as a signal-delivery stop first.
   * By default it is delivered, as CRIU does: the kernel sets up the
   * handler's frame (or takes the default action) with the original
   * siginfo, and the pending interrupt then stops the task before the
   * handler's first instruction. Taking it out of the way and sending it
   * again later would lose its value and its place in the queue (an
   * rt signal queued meanwhile would overtake it). `holdSignals` (husks,
   * whose signals mean nothing) keeps it in caughtSignals instead.
   */
  static seize(tid: number, opts: { exitKill?: boolean; traceClone?: boolean; traceFork?: boolean; timeoutMs?: number; holdSignals?: boolean } = {}): Thread {
    const n = native();
    // TRACESYSGOOD: a system-call stop reports SIGTRAP|0x80. Besides telling it
    // from a single-step trap, that matters if crest dies while the thread is
    // in one: the kernel's detach leaves the stop's code behind and "delivers"
    // it as a signal when the thread goes on, and 0x85 is no signal at all
    // (plain SIGTRAP would kill the thread).
    n.ptraceSeize(tid, 1 | (opts.exitKill ? 0x100000 : 0) | (opts.traceClone ? 8 : 0) | (opts.traceFork ? 2 : 0));
    // Tests widen the moment between seizing and stopping, where a thread may exit.
    const stallMs = faultArg('stall-in-seize');
    if (stallMs !== null) stall(Number(stallMs));
    const caught: Buffer[] = [];
    let groupStop = 0;
    try {
      n.ptraceInterrupt(tid);
      for (;;) {
        const st = waitTask(tid, opts.timeoutMs ?? 5000);
        if (st.kind !== 'stopped') {
          throw new CrestError('TASK_GONE', `task ${tid} ended while being frozen (${describeStatus(st)})`);
        }
        if (st.event === PTRACE_EVENT_STOP) {
          // A group-stop (the process was stopped by SIGSTOP & co.) reports its
          // stop signal: the task stays stopped for us like any other, and
          // goes back to its group-stop when we detach (the kernel sees to it).
          if (st.signal !== SIG.SIGTRAP) groupStop = st.signal;
          break;
        }
        // Signal-delivery stop: deliver it (or, for husks, keep it for later
        // and suppress it); the pending interrupt then stops the task.
        if (opts.holdSignals) {
          caught.push(n.ptraceGetSiginfo(tid));
          n.ptraceCont(tid, 0);
        } else {
          n.ptraceCont(tid, st.signal);
        }
      }
      const regs = n.ptraceGetRegs(tid);
      const mask = n.ptraceGetSigmask(tid);
      const t = new Thread(tid, regs, mask);
      t.caughtSignals.push(...caught);
      t.groupStop = groupStop;
      return t;
    } catch (e) {
      try {
        // Re-deliver what we took out of the way, then let go.
        for (const si of caught) n.tgkill(tgidOf(tid), tid, si.readInt32LE(0));
        n.ptraceDetach(tid, 0);
      } catch {
        /* the task may be gone */
      }
      throw e;
    }
  }

  /**
   * Takes over a thread that an injected clone created: it was attached to us
   * automatically (PTRACE_O_TRACECLONE) and starts in a ptrace stop.
   */
  static adopt(tid: number): Thread {
    const n = native();
    for (;;) {
      const st = waitTask(tid);
      if (st.kind !== 'stopped') throw new CrestError('TASK_GONE', `new thread ${tid} ended before it could be set up`);
      if (st.event === PTRACE_EVENT_STOP || st.signal === SIG.SIGSTOP) break;
      n.ptraceCont(tid, 0);
    }
    return new Thread(tid, n.ptraceGetRegs(tid), n.ptraceGetSigmask(tid));
  }

  /** Bytes of the task's memory through /proc/PID/mem (reads work on PROT_NONE and read-only pages too). */
  mem(): number {
    if (this.memFd < 0) this.memFd = openSync(`/proc/${this.tid}/mem`, 'r+');
    return this.memFd;
  }

  readMem(addr: number, len: number): Buffer {
    const buf = Buffer.alloc(len);
    let done = 0;
    while (done < len) {
      const n = readSync(this.mem(), buf, done, len - done, addr + done);
      if (n <= 0) throw new CrestError('MEM_READ', `short read of task ${this.tid} memory at 0x${(addr + done).toString(16)}`);
      done += n;
    }
    return buf;
  }

  writeMem(addr: number, data: Buffer): void {
    let done = 0;
    while (done < data.length) {
      const n = writeSync(this.mem(), data, done, data.length - done, addr + done);
      if (n <= 0) throw new CrestError('MEM_WRITE', `short write to task ${this.tid} memory at 0x${(addr + done).toString(16)}`);
      done += n;
    }
  }

  /**
   * Injected calls stop at system-call entry and exit (PTRACE_SYSCALL)
   * instead of single-stepping: two stops instead of one, but the thread
   * never carries the forced trap flag, which the kernel's detach on
   * crest's death would leave set (the thread would die of SIGTRAP).
   */
  useSyscallStops(): void {
    this.syscallStops = true;
  }

  /** Where injected syscalls execute: the address of a `syscall` instruction (0f 05) in the task. */
  setSyscallSite(addr: number): void {
    this.syscallSite = addr;
  }

  get site(): number {
    return this.syscallSite;
  }

  /**
   * Runs one system call inside the task and returns its raw result (negative
   * errno on failure). All signals are blocked while injecting so no handler
   * runs on our borrowed registers.
   */
  syscallRaw(nr: number, ...args: Arg[]): bigint {
    if (!this.syscallSite) throw new Error('no syscall site set');
    const n = native();
    if (!this.injecting) {
      n.ptraceSetSigmask(this.tid, ~0n & 0xffffffffffffffffn);
      this.injecting = true;
    }
    const r = new BigUint64Array(this.origRegs);
    r[REG.rax] = BigInt(nr);
    r[REG.orig_rax] = 0xffffffffffffffffn;
    r[REG.rip] = BigInt(this.syscallSite);
    if (this.safeSp !== 0n) r[REG.rsp] = this.safeSp;
    const argRegs = [REG.rdi, REG.rsi, REG.rdx, REG.r10, REG.r8, REG.r9];
    args.forEach((a, i) => {
      r[argRegs[i]!] = BigInt.asUintN(64, BigInt(a));
    });
    n.ptraceSetRegs(this.tid, r);
    // Single-step: one stop, after the call. Syscall stops: two (entry, exit), and no trap flag.
    const step = this.syscallStops ? (tid: number) => n.ptraceSyscall(tid, 0) : (tid: number) => n.ptraceSingleStep(tid, 0);
    let traps = this.syscallStops ? 2 : 1;
    step(this.tid);
    killInInjection(this.tid);
    for (;;) {
      const st = waitTask(this.tid);
      if (st.kind !== 'stopped') {
        throw new CrestError('TASK_GONE', `task ${this.tid} ended during an injected system call ${nr} (${describeStatus(st)})`);
      }
      if (st.event === PTRACE_EVENT_CLONE || st.event === PTRACE_EVENT_FORK) {
        // An injected clone made a thread or a process; it is attached to us (TRACECLONE, TRACEFORK).
        this.newThreads.push(Number(n.ptraceGetEventMsg(this.tid)));
      } else if (this.syscallStops ? st.signal === (SIG.SIGTRAP | 0x80) : st.signal === SIG.SIGTRAP && st.event === 0) {
        if (--traps === 0) break;
      }
      // Other stops (an interrupt, an unblockable signal): step on; SIGKILL shows as exit next.
      step(this.tid);
    }
    const out = n.ptraceGetRegs(this.tid);
    return signed(out[REG.rax]!);
  }

  /** Like syscallRaw, but a negative result throws a SyscallError naming the call and what it was for. */
  syscall(name: string, op: string, nr: number, ...args: Arg[]): bigint {
    const r = this.syscallRaw(nr, ...args);
    if (r < 0n && r > -4096n) throw new SyscallError(name, `${op} (injected)`, Number(-r), this.tid);
    return r;
  }

  /** Registers as they are now. */
  regs(): BigUint64Array {
    return native().ptraceGetRegs(this.tid);
  }

  /** The XSAVE area as the thread had it when frozen (read once; injected calls leave it alone). */
  originalXstate(): Buffer {
    this.origXstate ??= this.xstate();
    return this.origXstate;
  }

  xstate(): Buffer {
    return native().ptraceGetRegset(this.tid, NT.X86_XSTATE, 64 * 1024);
  }

  /** Puts back the registers and signal mask we found (ends an injection window). */
  restoreOriginal(): void {
    const n = native();
    n.ptraceSetRegs(this.tid, this.origRegs);
    n.ptraceSetSigmask(this.tid, this.origSigmask);
    this.injecting = false;
    this.safeSp = 0n;
  }

  /**
   * Makes the injection window safe against crest dying in it (dump, where
   * the process must go on whatever happens to crest). Injected calls then
   * stop at system-call entry and exit, so no trap flag is ever set, and run
   * with the stack pointer just above an rt_sigreturn frame (`frameAt`,
   * FRAME_ROOM bytes) that holds the thread's own registers, signal mask
   * and FPU/AVX state. `site` is a `syscall` followed by
   * `mov $15, %eax; syscall` (rt_sigreturn): if crest dies, the kernel lets
   * the thread go wherever it is in an injected call; it finishes that call
   * and returns through the frame to exactly where it was: `regs`, the
   * thread's own registers as it is to resume (a system call it was
   * interrupted in made again: kinds/registers.ts resumeRegs). The frame's alternate-stack field holds an invalid mode, which
   * rt_sigreturn's sigaltstack step rejects and ignores (it squashes all
   * but EFAULT), so the thread's alternate stack stays as it is, unread.
   * Returns false, leaving things as they were, when the frame cannot be
   * made (an XSAVE layout a frame does not take: see below).
   */
  armSafeReturn(frameAt: number, site: number, regs: BigUint64Array): boolean {
    // PTRACE_GETREGSET gives the XSAVE area with XCR0 in its software bytes;
    // a signal frame wants them to describe the area (magic, sizes,
    // features) and a second magic after it. The area is then as long as
    // the regset, which it is as long as no feature needs the process's
    // permission first (AMX tiles, XCR0 bits 17-18): such a thread is left
    // unarmed.
    const xs = Buffer.from(this.originalXstate());
    const FP_XSTATE_MAGIC1 = 0x46505853;
    const FP_XSTATE_MAGIC2 = 0x46505845;
    const xsize = xs.length;
    const xcr0 = xsize >= 512 + 64 ? xs.readBigUInt64LE(464) : 0n;
    if (xsize < 512 + 64 || (xcr0 & 3n) !== 3n || (xcr0 >> 17n) !== 0n) return false;
    xs.fill(0, 464, 512);
    xs.writeUInt32LE(FP_XSTATE_MAGIC1, 464);
    xs.writeUInt32LE(xsize + 4, 468); // extended_size
    xs.writeBigUInt64LE(xcr0, 472); // xfeatures
    xs.writeUInt32LE(xsize, 480); // xstate_size
    const fpOff = Math.ceil(RT_SIGFRAME_SIZE / 64) * 64;
    const b = Buffer.alloc(fpOff + xsize + 4);
    if (b.length > FRAME_ROOM) return false;
    const rg = (name: RegName): bigint => regs[REG[name]]!;
    b.writeBigUInt64LE(0n, 0); // pretcode
    b.writeBigUInt64LE(1n | 2n | 4n, 8); // UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS
    b.writeInt32LE(3, 32); // uc_stack.ss_flags: neither 0, SS_ONSTACK nor SS_DISABLE
    const sc = 48;
    const order: RegName[] = ['r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rdi', 'rsi', 'rbp', 'rbx', 'rdx', 'rax', 'rcx', 'rsp', 'rip', 'eflags'];
    order.forEach((name, i) => b.writeBigUInt64LE(rg(name), sc + i * 8));
    b.writeUInt16LE(Number(rg('cs')), sc + 144);
    b.writeUInt16LE(Number(rg('ss')), sc + 150);
    b.writeBigUInt64LE(BigInt(frameAt + fpOff), sc + 184); // fpstate
    b.writeBigUInt64LE(this.origSigmask, 304); // uc_sigmask
    xs.copy(b, fpOff, 0, xsize);
    b.writeUInt32LE(FP_XSTATE_MAGIC2, fpOff + xsize);
    this.writeMem(frameAt, b);
    this.safeSp = BigInt(frameAt + 8);
    this.syscallSite = site;
    this.syscallStops = true;
    return true;
  }

  /**
   * Ends an injection window and leaves the thread in a plain interrupt stop
   * with its own registers and mask. Single-stepping leaves the trap flag
   * forced on (TIF_FORCED_TF); an explicit detach clears it, but if crest
   * died later the kernel's implicit detach would not, and the process would
   * die of SIGTRAP. Resuming once into a pending interrupt clears it without
   * running a single user instruction.
   */
  endInjection(): void {
    if (!this.injecting) return;
    const n = native();
    // Every signal stays blocked during that resume, so none is dequeued
    // (a signal delivered now would run against registers that are about
    // to be replaced); the task's own mask goes back once it is stopped.
    n.ptraceSetSigmask(this.tid, ~0n & 0xffffffffffffffffn);
    n.ptraceSetRegs(this.tid, this.origRegs);
    n.ptraceInterrupt(this.tid);
    n.ptraceCont(this.tid, 0);
    for (;;) {
      const st = waitTask(this.tid);
      if (st.kind !== 'stopped') {
        throw new CrestError('TASK_GONE', `task ${this.tid} ended while being frozen (${describeStatus(st)})`);
      }
      if (st.event === PTRACE_EVENT_STOP) break;
      // Only a stop no mask holds back can come here: let it go by.
      n.ptraceCont(this.tid, 0);
    }
    this.restoreOriginal();
  }

  /** Installs final registers and mask (restore), leaving the thread stopped. */
  install(regs: BigUint64Array, sigmask: bigint, xstate?: Buffer): void {
    const n = native();
    if (xstate) n.ptraceSetRegset(this.tid, NT.X86_XSTATE, xstate);
    n.ptraceSetRegs(this.tid, regs);
    n.ptraceSetSigmask(this.tid, sigmask);
    this.injecting = false;
  }

  /** Lets the thread run on (optionally re-queuing signals we took out of the way). */
  detach(): void {
    if (this.detached) return;
    this.closeMem();
    native().ptraceDetach(this.tid, 0);
    this.detached = true;
  }

  /** Best-effort: put the thread back as found and let it go. Never throws. */
  release(): void {
    if (this.detached) return;
    try {
      this.restoreOriginal();
    } catch {
      /* gone */
    }
    try {
      this.detach();
    } catch {
      /* gone */
    }
    const n = native();
    for (const si of this.caughtSignals) {
      try {
        n.tgkill(tgidOf(this.tid), this.tid, si.readInt32LE(0));
      } catch {
        /* gone */
      }
    }
  }

  closeMem(): void {
    if (this.memFd >= 0) {
      try {
        closeSync(this.memFd);
      } catch {
        /* ignore */
      }
      this.memFd = -1;
    }
  }

  /**
   * SIGKILLs the thread's process and collects the tracer's exit report: a
   * traced zombie is reported to its tracer first, and until the tracer has
   * seen it, the parent (the job's init) cannot reap it.
   */
  kill(opts: { reap?: boolean } = {}): void {
    if (this.detached) return;
    this.closeMem();
    const n = native();
    try {
      n.kill(this.tid, SIG.SIGKILL);
      // A tracer that is about to exit need not wait: its exit releases the zombie.
      if (opts.reap === false) {
        this.detached = true;
        return;
      }
      for (;;) {
        const st = waitTask(this.tid, 5000);
        if (st.kind !== 'stopped') break;
      }
    } catch {
      /* already gone or reaped */
    }
    this.detached = true;
  }

  markDetached(): void {
    this.closeMem();
    this.detached = true;
  }
}

export function describeStatus(st: WaitStatus): string {
  switch (st.kind) {
    case 'exited':
      return `exited with ${st.code}`;
    case 'signaled':
      return `killed by signal ${st.signal}`;
    case 'stopped':
      return `stopped by signal ${st.signal}`;
  }
}

/** The thread group (process) a thread belongs to: tgkill needs it, and it differs from the tid but for the main thread. */
export function tgidOf(tid: number): number {
  try {
    const m = /^Tgid:\s*(\d+)/m.exec(readFileSync(`/proc/${tid}/status`, 'utf8'));
    return m ? Number(m[1]) : tid;
  } catch {
    return tid;
  }
}

/**
 * Waits (bounded, 2 s) until a process we let go in a group-stop is back in
 * it (state T): it gets there only once it runs, and whoever looks at it
 * next (its parent) must find it stopped.
 */
export function awaitGroupStop(pid: number): void {
  for (let i = 0; i < 400; i++) {
    try {
      const st = readFileSync(`/proc/${pid}/stat`, 'latin1');
      if (st.slice(st.lastIndexOf(')') + 2, st.lastIndexOf(')') + 3) === 'T') return;
    } catch {
      return; // gone: nothing to wait for
    }
    sleepMs(5);
  }
}

/** Finds a `syscall` instruction (0f 05) in a byte range; -1 when none. */
export function findSyscallInsn(buf: Buffer): number {
  for (let i = 0; i + 1 < buf.length; i++) {
    if (buf[i] === 0x0f && buf[i + 1] === 0x05) return i;
  }
  return -1;
}

export { errnoName };
