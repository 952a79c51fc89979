// Restore: the only place that knows the order in which a husk becomes the
// checkpointed process. Everything about the image is checked before any
// process exists; after that, any failure kills the half-built husk (and the
// job's init with it), so nothing half-restored is ever left running.
import { performance } from 'node:perf_hooks';
import { resolve as resolvePath } from 'node:path';
import { readImageChain } from '../image/chain.js';
import type { Manifest, ProcessImage } from '../image/schema.js';
import { CrestError, isErrno } from '../sys/errors.js';
import { MAP, PROT, RSEQ_FLAG_UNREGISTER, SIG, SYS } from '../sys/constants.js';
import { native } from '../sys/native.js';
import { Thread } from '../tracer/tracer.js';
import { ScratchAllocator, type RestoreContext } from '../kinds/types.js';
import { checkRestoredLayout, findFree, mapImageMemory, preflightMemory, replaceHuskMemory, vdsoSizes } from '../kinds/memory.js';
import { preflightFiles } from '../kinds/files.js';
import { verifyFile } from '../kinds/fileid.js';
import { kind } from '../kinds/registry.js';
import { SharedObjects } from '../kinds/objects.js';
import { checkXfeatures } from '../kinds/registers.js';
import { readMaps } from '../proc/index.js';
import { Helper, type HelperExit } from '../jobs/supervise.js';
import { freeJobName, saveJob, removeJob, checkJobName } from '../jobs/registry.js';
import { readStat } from '../proc/index.js';
import { StageRunner } from '../stages.js';

export interface RestoreOptions {
  dir: string;
  /** Return once the job runs, leaving it in the background. */
  detach?: boolean;
  /** Job name for the restored job (default: the image's). */
  name?: string;
  onStage?: (name: string, ms: number) => void;
}

export interface RestoreResult {
  jobName: string;
  /** Host PID of the restored process, and its PID inside the job. */
  pid: number;
  nsPid: number;
  initPid: number;
  durationMs: number;
  stages: { name: string; ms: number }[];
  warnings: string[];
  /** Resolves when the job ends (not meaningful after detach). */
  exited: Promise<HelperExit>;
  helper: Helper;
}

const SCRATCH_SIZE = 64 * 1024;

/** Everything checked before a process is created. */
function preflight(dir: string): Manifest {
  // Pages files are checked as they are loaded (one read of the biggest
  // files): a mismatch ends the restore before any restored code runs.
  // An incremental image brings its chain of parents, each checked whole, and
  // every inherited page found in one of them (image/chain.ts).
  const m = readImageChain(dir, { verifyData: true, verifiedByCaller: (name) => /^pages-\d+\.img$/.test(name) })[0]!.manifest;
  const own = vdsoSizes('self');
  const pids = new Set<number>();
  for (const proc of m.processes) {
    if (proc.threads[0]?.tid !== proc.pid) {
      throw new CrestError('IMAGE_INVALID', `process ${proc.pid}: its first thread must be its main thread`);
    }
    // The helper creates parents before children: each parent must come earlier.
    if (proc.ppid > 1 && !pids.has(proc.ppid)) {
      throw new CrestError('IMAGE_INVALID', `process ${proc.pid}: its parent ${proc.ppid} is not an earlier process of the image`);
    }
    pids.add(proc.pid);
    preflightMemory(proc, own);
    preflightFiles(proc, m);
    verifyFile(proc.exe, 'executable');
  }
  return m;
}

/** Restores the image in opts.dir as a new crest job. */
export async function restore(opts: RestoreOptions): Promise<RestoreResult> {
  const runner = new StageRunner(opts.onStage);
  // Absolute: the husk opens image files by path, from its own working directory.
  opts = { ...opts, dir: resolvePath(opts.dir) };
  const manifest = runner.run('read-image', () => preflight(opts.dir));
  if (opts.name !== undefined) checkJobName(opts.name);
  const jobName = opts.name ?? freeJobName(manifest.job.name ?? 'job');
  const tasks = manifest.processes.flatMap((p) => ['--task', p.ppid > 1 ? `${p.pid}:${p.ppid}` : String(p.pid)]);
  const helper = runner.run('spawn', () => new Helper('restore', tasks, { detached: !!opts.detach }));
  // Every thread of every husk we hold: killed together on failure, let go together on success.
  const held: Thread[] = [];
  let initPid = 0;
  const warnings: string[] = [];
  try {
    const husks = await runner.runAsync('husk', () => awaitHusks(helper));
    initPid = husks.initPid;
    // Read now: a restored job may finish (and its init with it) right after it resumes.
    const initStart = readStat(initPid).starttime;
    const objects = new SharedObjects();
    const finish: (() => void)[] = [];
    for (const proc of manifest.processes) {
      const huskPid = husks.pids.get(proc.pid);
      if (huskPid === undefined) throw new CrestError('HELPER_FAILED', `the helper did not report a husk for pid ${proc.pid}`);
      finish.push(await restoreProcess(runner, manifest, proc, opts.dir, huskPid, held, warnings, objects));
    }
    // Registers go in only once every process is built: until then a husk
    // may still hand an object it made (a memfd ...) to a later one, and
    // each closes its copies of them from its scratch area, still mapped.
    for (const f of finish) f();
    // Everything is in place: let every thread of every process go.
    runner.run('resume', () => {
      for (const th of held) th.detach();
    });
    saveJob({
      name: jobName,
      supervisorPid: opts.detach ? 0 : process.pid,
      helperPid: helper.child.pid ?? 0,
      initPid,
      initStart,
      createdAt: new Date().toISOString(),
    });
    const first = manifest.processes[0]!;
    return {
      jobName,
      pid: husks.pids.get(first.pid)!,
      nsPid: first.pid,
      initPid,
      durationMs: runner.totalMs(),
      stages: runner.stages,
      warnings,
      exited: helper.exited,
      helper,
    };
  } catch (e) {
    // Nothing half-built survives: the husks die (EXITKILL too, should we
    // die), and the init takes the whole namespace with it.
    for (const th of held) th.kill();
    try {
      if (initPid) native().kill(initPid, SIG.SIGKILL);
    } catch {
      /* already gone */
    }
    helper.kill();
    await helper.exited;
    removeJob(jobName);
    throw e;
  }
}

/** Turns one husk into one process of the image; its threads stay stopped (added to `held`). */
async function restoreProcess(
  runner: StageRunner,
  manifest: Manifest,
  proc: ProcessImage,
  dir: string,
  huskPid: number,
  held: Thread[],
  warnings: string[],
  objects: SharedObjects,
): Promise<() => void> {
  const tag = manifest.processes.length > 1 ? `:${proc.pid}` : '';
  const t = runner.run(`seize${tag}`, () => Thread.seize(huskPid, { exitKill: true, traceClone: true }));
  held.push(t);
  const ctx: RestoreContext = {
    manifest,
    proc,
    dir,
    thread: t,
    huskHostPid: huskPid,
    scratch: 0,
    scratchSize: SCRATCH_SIZE,
    mem: null as unknown as ScratchAllocator,
    warnings,
    objects,
  };
  runner.run(`prepare${tag}`, () => prepareHusk(ctx));
  // Order matters, and each step says why it comes where it does:
  // memory first: every later call may point into the restored address space.
  await runner.runAsync(`memory${tag}`, async () => {
    replaceHuskMemory(ctx);
    await mapImageMemory(ctx);
  });
  // files next: before creds drop the husk's capabilities, and after memory
  // so the pages file and mapped files are already closed again.
  runner.run(`files${tag}`, () => kind('files').restore!(ctx));
  runner.run(`process${tag}`, () => kind('process').restore!(ctx));
  // signals: actions point into restored memory; pending signals are queued
  // while all are blocked (the real masks go in last, with the registers).
  runner.run(`signals${tag}`, () => kind('signals').restore!(ctx));
  // PR_SET_MM_MAP after every mapping exists: the kernel checks the values against them.
  runner.run(`mm${tag}`, () => kind('mm').restore!(ctx));
  // Threads after the process-wide state they share, before creds: creating
  // a thread with a chosen TID needs the capability the husk still holds.
  const threads = runner.run(`threads${tag}`, () => createThreads(ctx, held));
  // Per-thread state (alternate stack, queued signals, rseq, robust list,
  // tid address, name), then each thread drops its capabilities (per thread in Linux).
  runner.run(`thread-state${tag}`, () => {
    for (const img of proc.threads) {
      const th = threads.get(img.tid)!;
      ctx.mem.reset();
      kind('signals').restoreThread!(ctx, th, img);
      kind('thread-state').restoreThread!(ctx, th, img);
    }
  });
  runner.run(`creds${tag}`, () => {
    for (const img of proc.threads) kind('creds').restoreThread!(ctx, threads.get(img.tid)!, img);
  });
  runner.run(`verify${tag}`, () => checkRestoredLayout(ctx));
  return () =>
    runner.run(`registers${tag}`, () => {
      objects.release(ctx);
      // The scratch area goes last, from inside itself: the single-step stop
      // comes before the next (now unmapped) instruction would run.
      t.syscall('munmap', 'unmap the scratch area', SYS.munmap, ctx.scratch, SCRATCH_SIZE);
      for (const img of proc.threads) kind('registers').restoreThread!(ctx, threads.get(img.tid)!, img);
    });
}

/** CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM */
const THREAD_FLAGS = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000;

/**
 * Creates the process's other threads with their original TIDs: clone3 with
 * set_tid, injected into the main thread. Each new thread is attached to us
 * (PTRACE_O_TRACECLONE) and stops before running a single instruction; its
 * registers are replaced later like the main thread's.
 */
function createThreads(ctx: RestoreContext, held: Thread[]): Map<number, Thread> {
  const out = new Map<number, Thread>([[ctx.proc.pid, ctx.thread]]);
  for (const img of ctx.proc.threads.slice(1)) {
    ctx.mem.reset();
    const tids = Buffer.alloc(8);
    tids.writeInt32LE(img.tid, 0);
    const tidAt = ctx.mem.put(tids);
    const stack = ctx.mem.alloc(4096);
    const args = Buffer.alloc(88); // struct clone_args (CLONE_ARGS_SIZE_VER2)
    args.writeBigUInt64LE(BigInt(THREAD_FLAGS), 0);
    args.writeBigUInt64LE(BigInt(stack), 40);
    args.writeBigUInt64LE(4096n, 48);
    args.writeBigUInt64LE(BigInt(tidAt), 64);
    args.writeBigUInt64LE(1n, 72);
    let got: bigint;
    try {
      got = ctx.thread.syscall('clone3', `create thread ${img.tid}`, SYS.clone3, ctx.mem.put(args), 88);
    } catch (e) {
      if (isErrno(e, 'EEXIST')) throw new CrestError('PID_TAKEN', `thread id ${img.tid} is taken in the job's namespace`, { cause: e });
      throw e;
    }
    if (Number(got) !== img.tid) throw new CrestError('RESTORE_THREAD', `thread ${img.tid} was created as ${got}`);
    const host = ctx.thread.newThreads.shift();
    if (host === undefined) throw new CrestError('RESTORE_THREAD', `thread ${img.tid} was created but not reported to the tracer`);
    const th = Thread.adopt(host);
    held.push(th);
    th.setSyscallSite(ctx.scratch);
    out.set(img.tid, th);
  }
  return out;
}

/** Reads the helper's control lines until every husk exists. */
async function awaitHusks(helper: Helper): Promise<{ initPid: number; pids: Map<number, number> }> {
  const pids = new Map<number, number>();
  const deadline = performance.now() + 10000;
  for (;;) {
    const line = await Promise.race([
      helper.nextLine(),
      new Promise<null>((r) => setTimeout(() => r(null), Math.max(0, deadline - performance.now())).unref()),
    ]);
    if (line === null) {
      const ex = await Promise.race([helper.exited, new Promise<null>((r) => setTimeout(() => r(null), 100).unref())]);
      throw new CrestError('HELPER_FAILED', `crest's helper did not create the process${ex ? ` (it exited: ${ex.signal ?? ex.code})` : ' in time'}`);
    }
    const [word, a, b] = line.split(' ');
    if (word === 'husk') pids.set(Number(a), Number(b));
    else if (word === 'ready') return { initPid: Number(a), pids };
    else if (word === 'error') {
      throw new CrestError(
        b === 'EEXIST' ? 'PID_TAKEN' : 'HELPER_FAILED',
        `could not create pid ${a} in the job's namespace: ${b}`,
      );
    }
  }
}

/**
 * Gets the husk ready for injection: it is parked in pause(), right after a
 * `syscall` instruction, which serves for the first call (mapping a scratch
 * area that is free in both layouts); the husk's own rseq registration goes
 * before anything is unmapped, or the kernel would fault writing to it.
 */
function prepareHusk(ctx: RestoreContext): void {
  const t = ctx.thread;
  const rip = Number(t.origRegs[16]!);
  const insn = t.readMem(rip - 2, 2);
  if (insn[0] !== 0x0f || insn[1] !== 0x05) {
    throw new CrestError('HUSK_STATE', `the husk is not parked at a syscall (rip 0x${rip.toString(16)})`);
  }
  t.setSyscallSite(rip - 2);
  const rseq = native().ptraceGetRseqConfig(t.tid);
  if (rseq) {
    t.syscall('rseq', "unregister the husk's rseq", SYS.rseq, rseq.rseqAbiPointer, rseq.rseqAbiSize, RSEQ_FLAG_UNREGISTER, BigInt(rseq.signature));
  }
  const busy: [number, number][] = [
    ...ctx.proc.vmas.map((v) => [v.start, v.end] as [number, number]),
    ...readMaps(ctx.huskHostPid)
      .filter((e) => !e.vsyscall)
      .map((e) => [e.start, e.end] as [number, number]),
  ];
  const at = findFree(busy, SCRATCH_SIZE);
  const got = Number(
    t.syscall('mmap', 'map the scratch area', SYS.mmap, at, SCRATCH_SIZE, PROT.READ | PROT.WRITE | PROT.EXEC, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE, -1, 0),
  );
  if (got !== at) throw new CrestError('HUSK_STATE', `scratch area landed at 0x${got.toString(16)}`);
  t.writeMem(at, Buffer.from([0x0f, 0x05]));
  t.setSyscallSite(at);
  ctx.scratch = at;
  ctx.mem = new ScratchAllocator(t, at, SCRATCH_SIZE);
  checkXfeatures(ctx);
}
