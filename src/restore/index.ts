// Restore: the only place that knows the order in which a husk becomes the
// checkpointed process. Everything about the image is checked before any
// process exists; after that, any failure kills the half-built husk (and the
// job's init with it), so nothing half-restored is ever left running.
import { resolve as resolvePath } from 'node:path';
import { readImageChain } from '../image/chain.js';
import type { Manifest, ProcessImage } from '../image/schema.js';
import { CrestError, isErrno } from '../sys/errors.js';
import { MAP, PROT, RSEQ_FLAG_UNREGISTER, SIG, SYS } from '../sys/constants.js';
import { native } from '../sys/native.js';
import { Thread, awaitGroupStop } from '../tracer/tracer.js';
import { buildTree, planImageTree } from './treebuild.js';
import { ScratchAllocator, type RestoreContext } from '../kinds/types.js';
import { checkRestoredLayout, findFree, mapImageMemory, preflightMemory, replaceHuskMemory, vdsoSizes } from '../kinds/memory.js';
import { preflightFiles, restoreFileLocks, restoreFileOwners } from '../kinds/files.js';
import { verifyFile } from '../kinds/fileid.js';
import { kind } from '../kinds/registry.js';
import { SharedObjects } from '../kinds/objects.js';
import { finishTcp } from '../kinds/fds/tcp.js';
import { checkXfeatures } from '../kinds/registers.js';
import { readMaps } from '../proc/index.js';
import type { Helper, HelperExit } from '../jobs/supervise.js';
import { choosePidMode, restoreSession, type CycleStats, type Husks, type PidModeName } from '../pids/index.js';
import { freeJobName, saveJob, removeJob, checkJobName } from '../jobs/registry.js';
import { readStat } from '../proc/index.js';
import { StageRunner } from '../stages.js';
import { armRestored, protectRestored, type RestoredTracker } from '../kinds/uffdwp.js';

export interface RestoreOptions {
  dir: string;
  /** Return once the job runs, leaving it in the background. */
  detach?: boolean;
  /** Job name for the restored job (default: the image's). */
  name?: string;
  /** How the PIDs come back (pids/); default: the best this image and machine allow. */
  mode?: PidModeName;
  /** cycle mode: give up reaching the PIDs after this long (default 30 s). */
  cycleTimeoutMs?: number;
  /** Every TCP connection comes back closed (reset by its peer), even those the image could recreate. */
  tcpClose?: boolean;
  onStage?: (name: string, ms: number) => void;
  /**
   * Arm the kernel's write tracking in every restored process before it
   * runs (kinds/uffdwp.ts), so that the next incremental checkpoint of the
   * job reads only what it writes (crest run --checkpoint-dir).
   */
  trackPages?: boolean;
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
  /** The PID mode used, and why it was picked. */
  pidMode: PidModeName;
  pidModeWhy: string;
  /** cycle mode: how many IDs were used up to reach the PIDs, and how fast. */
  cycled?: CycleStats;
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
  // The tree (parents, sessions, groups, zombies) must be one restore can build.
  if (m.job.pidMode === 'userns') planImageTree(m);
  return m;
}

/** Restores the image in opts.dir as a new crest job. */
export async function restore(opts: RestoreOptions): Promise<RestoreResult> {
  const runner = new StageRunner(opts.onStage);
  // Absolute: the husk opens image files by path, from its own working directory.
  opts = { ...opts, dir: resolvePath(opts.dir) };
  const manifest = runner.run('read-image', () => preflight(opts.dir));
  // How the PIDs come back (pids/): picked for the image, its own refusals
  // (IDs taken, wrong user ...) before any process exists.
  const choice = choosePidMode(manifest, opts.mode);
  await runner.runAsync('pids', () => choice.mode.preflight(manifest));
  if (opts.name !== undefined) checkJobName(opts.name);
  const jobName = opts.name ?? freeJobName(manifest.job.name ?? nameFromComm(manifest.processes[0]?.comm));
  const spawnOpts = { detached: !!opts.detach, cycleTimeoutMs: opts.cycleTimeoutMs };
  const helper = runner.run('spawn', () => choice.mode.spawn(manifest, spawnOpts));
  // Every thread of every husk we hold: killed together on failure, let go together on success.
  const held: Thread[] = [];
  let initPid = 0;
  const warnings: string[] = [];
  try {
    const husks = await runner.runAsync('husk', () => choice.mode.awaitHusks(helper, manifest, spawnOpts));
    initPid = husks.initPid;
    const unprivileged = choice.mode.huskPrivileged ? undefined : choice.mode.name;
    // Read now: a restored job may finish (and its init with it) right after it resumes.
    const initStart = readStat(initPid).starttime;
    const objects = new SharedObjects();
    const finish: (() => void)[] = [];
    // The whole tree first, while the husks are small: parents, sessions,
    // groups, zombies, stops (restore/treebuild.ts).
    const mains = runner.run('tree', () => buildTree(manifest, husks, held, choice.mode.huskPrivileged));
    const trackers: RestoredTracker[] = [];
    for (const proc of manifest.processes) {
      const main = mains.get(proc.pid);
      if (main === undefined) throw new CrestError('HELPER_FAILED', `the helper did not report a husk for pid ${proc.pid}`);
      finish.push(await restoreProcess(runner, manifest, proc, opts.dir, main, husks, held, warnings, unprivileged, objects, opts.trackPages ? trackers : null, !!opts.tcpClose));
    }
    // Write tracking counts from the restored image: every page protected while nothing runs.
    if (trackers.length > 0) runner.run('track', () => protectRestored(trackers, { name: jobName, initPid, initStart }, manifest.checksum));
    // TCP connections come out of repair mode only now: each one's peer exists (TCP_REPAIR, kinds/fds/tcp.ts).
    runner.run('tcp', () => finishTcp(objects));
    // Registers go in only once every process is built: until then a husk
    // may still hand an object it made (a memfd ...) to a later one, and
    // each closes its copies of them from its scratch area, still mapped.
    for (const f of finish) f();
    // Everything is in place: let every thread of every process go.
    // Children before their parents: a parent that runs first must find its
    // children as they were (a stopped one stopped, not still held by us).
    // A stopped one is let go first and seen in its stop (it gets there once it runs) before its parent goes on.
    const stopped = new Set(manifest.processes.filter((p) => p.stopped).map((p) => mains.get(p.pid)!));
    runner.run('resume', () => {
      for (const th of [...held].reverse()) {
        th.detach();
        if (stopped.has(th)) awaitGroupStop(th.tid);
      }
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
      pidMode: choice.mode.name,
      pidModeWhy: choice.why,
      ...(husks.cycled ? { cycled: husks.cycled } : {}),
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
  t: Thread,
  husks: Husks,
  held: Thread[],
  warnings: string[],
  unprivilegedMode: string | undefined,
  objects: SharedObjects,
  trackers: RestoredTracker[] | null,
  tcpClose: boolean,
): Promise<() => void> {
  const tag = manifest.processes.length > 1 ? `:${proc.pid}` : '';
  const huskPid = t.tid;
  // Threads the PID helper made already (cap, cycle) are held from the start
  // too: none of the husk may run while its memory is replaced.
  const made = runner.run(`seize${tag}`, () => seizeMadeThreads(proc, husks, held));
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
    tcpClose,
    ...(unprivilegedMode ? { unprivilegedMode } : {}),
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
  // The page tracker's fd after the restored fds and rlimits, so it parks clear of both.
  if (trackers) {
    const tr = runner.run(`track${tag}`, () => armRestored(ctx));
    if (tr) trackers.push(tr);
  }
  // Outside a job: lead its session or process group again, as far as an ordinary process can.
  if (manifest.job.pidMode === 'host') runner.run(`session${tag}`, () => restoreSession(ctx));
  // signals: actions point into restored memory; pending signals are queued
  // while all are blocked (the real masks go in last, with the registers).
  runner.run(`signals${tag}`, () => kind('signals').restore!(ctx));
  // PR_SET_MM_MAP after every mapping exists: the kernel checks the values against them.
  runner.run(`mm${tag}`, () => kind('mm').restore!(ctx));
  // Threads after the process-wide state they share, before creds: creating
  // a thread with a chosen TID needs the capability the husk still holds
  // (userns; in the cap and cycle modes the helper made them already).
  const threads = runner.run(`threads${tag}`, () => createThreads(ctx, held, made));
  // Per-thread state (alternate stack, queued signals, rseq, robust list,
  // tid address, name, scheduling attributes), then each thread drops its capabilities (per thread in Linux).
  runner.run(`thread-state${tag}`, () => {
    for (const img of proc.threads) {
      const th = threads.get(img.tid)!;
      ctx.mem.reset();
      kind('signals').restoreThread!(ctx, th, img);
      kind('thread-state').restoreThread!(ctx, th, img);
      kind('sched').restoreThread!(ctx, th, img);
    }
  });
  // POSIX timers once every thread exists (one may be aimed at a thread), as
  // late as can be so little of their time left passes before the process runs.
  runner.run(`timers${tag}`, () => {
    ctx.mem.reset();
    kind('posix-timers').restore!(ctx);
  });
  runner.run(`creds${tag}`, () => {
    for (const img of proc.threads) kind('creds').restoreThread!(ctx, threads.get(img.tid)!, img);
  });
  runner.run(`verify${tag}`, () => checkRestoredLayout(ctx));
  return () =>
    runner.run(`registers${tag}`, () => {
      objects.release(ctx);
      // Locks after the last fd the restore closes in the process (closing one drops its POSIX locks on that file).
      restoreFileLocks(ctx);
      restoreFileOwners(ctx);
      // The scratch area goes last, from inside itself: the single-step stop
      // comes before the next (now unmapped) instruction would run.
      t.syscall('munmap', 'unmap the scratch area', SYS.munmap, ctx.scratch, SCRATCH_SIZE);
      for (const img of proc.threads) kind('registers').restoreThread!(ctx, threads.get(img.tid)!, img);
    });
}

/** CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM */
const THREAD_FLAGS = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000;

/** Seizes the threads the PID helper made with the image's TIDs (cap, cycle modes), by image TID. */
function seizeMadeThreads(proc: ProcessImage, husks: Husks, held: Thread[]): Map<number, Thread> {
  const out = new Map<number, Thread>();
  for (const img of proc.threads.slice(1)) {
    const host = husks.threads.get(img.tid);
    if (host === undefined) continue;
    const th = Thread.seize(host, { exitKill: true, holdSignals: true });
    held.push(th);
    out.set(img.tid, th);
  }
  return out;
}

/**
 * Creates the process's other threads with their original TIDs: clone3 with
 * set_tid, injected into the main thread. Each new thread is attached to us
 * (PTRACE_O_TRACECLONE) and stops before running a single instruction; its
 * registers are replaced later like the main thread's. A thread the PID
 * helper made already (`made`) is used as it is: the husk holds no
 * capability to choose a TID in those modes.
 */
function createThreads(ctx: RestoreContext, held: Thread[], made: Map<number, Thread>): Map<number, Thread> {
  const out = new Map<number, Thread>([[ctx.proc.pid, ctx.thread]]);
  for (const img of ctx.proc.threads.slice(1)) {
    const ready = made.get(img.tid);
    if (ready) {
      ready.setSyscallSite(ctx.scratch);
      // Threads the helper made register no rseq (a CLONE_VM child starts without); should one have, it goes first.
      const rseq = native().ptraceGetRseqConfig(ready.tid);
      if (rseq) ready.syscall('rseq', "unregister the husk thread's rseq", SYS.rseq, rseq.rseqAbiPointer, rseq.rseqAbiSize, RSEQ_FLAG_UNREGISTER, BigInt(rseq.signature));
      out.set(img.tid, ready);
      continue;
    }
    // A husk without capabilities cannot choose a TID: its helper makes them all.
    if (ctx.unprivilegedMode) throw new CrestError('RESTORE_THREAD', `thread ${img.tid} was not made by crest-pidhelper (${ctx.unprivilegedMode} mode)`);
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

/** A job name from a process's command name (a job dumped outside any job has none): its name characters, else "job". */
function nameFromComm(comm: string | undefined): string {
  const name = (comm ?? '').replace(/[^A-Za-z0-9._-]/g, '').replace(/^[._-]+/, '');
  return name.length > 0 ? name.slice(0, 60) : 'job';
}
