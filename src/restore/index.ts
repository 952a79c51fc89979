// Restore: the only place that knows the order in which a husk becomes the
// checkpointed process. Everything about the image is checked before any
// process exists; after that, any failure kills the half-built husk (and the
// job's init with it), so nothing half-restored is ever left running.
import { performance } from 'node:perf_hooks';
import { readImage } from '../image/reader.js';
import type { Manifest } from '../image/schema.js';
import { CrestError } from '../sys/errors.js';
import { MAP, PROT, RSEQ_FLAG_UNREGISTER, SIG, SYS } from '../sys/constants.js';
import { native } from '../sys/native.js';
import { Thread } from '../tracer/tracer.js';
import { ScratchAllocator, type RestoreContext } from '../kinds/types.js';
import { checkRestoredLayout, findFree, mapImageMemory, preflightMemory, replaceHuskMemory, vdsoSizes } from '../kinds/memory.js';
import { preflightFiles } from '../kinds/files.js';
import { verifyFile } from '../kinds/fileid.js';
import { kind } from '../kinds/registry.js';
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
  const m = readImage(dir, { verifyData: true });
  if (m.processes.length !== 1) {
    throw new CrestError('UNSUPPORTED', `the image holds ${m.processes.length} processes; this crest restores one`);
  }
  const proc = m.processes[0]!;
  if (proc.threads.length !== 1) {
    throw new CrestError('UNSUPPORTED', `process ${proc.pid} has ${proc.threads.length} threads; this crest restores single-threaded processes`);
  }
  preflightMemory(proc, vdsoSizes('self'));
  preflightFiles(proc, m);
  verifyFile(proc.exe, 'executable');
  return m;
}

/** Restores the image in opts.dir as a new crest job. */
export async function restore(opts: RestoreOptions): Promise<RestoreResult> {
  const runner = new StageRunner(opts.onStage);
  const manifest = runner.run('read-image', () => preflight(opts.dir));
  const proc = manifest.processes[0]!;
  if (opts.name !== undefined) checkJobName(opts.name);
  const jobName = opts.name ?? freeJobName(manifest.job.name ?? 'job');

  const helper = runner.run('spawn', () => new Helper('restore', ['--task', String(proc.pid)], { detached: !!opts.detach }));
  let thread: Thread | null = null;
  let initPid = 0;
  try {
    const husks = await runner.runAsync('husk', () => awaitHusks(helper));
    initPid = husks.initPid;
    const huskPid = husks.pids.get(proc.pid)!;
    thread = runner.run('seize', () => Thread.seize(huskPid, { exitKill: true }));
    const t = thread;
    const warnings: string[] = [];
    const ctx: RestoreContext = {
      manifest,
      proc,
      dir: opts.dir,
      thread: t,
      huskHostPid: huskPid,
      scratch: 0,
      scratchSize: SCRATCH_SIZE,
      mem: null as unknown as ScratchAllocator,
      warnings,
    };
    runner.run('prepare', () => prepareHusk(ctx));
    // Order matters, and each step says why it comes where it does:
    // memory first: every later call may point into the restored address space.
    runner.run('memory', () => {
      replaceHuskMemory(ctx);
      mapImageMemory(ctx);
    });
    // files next: before creds drop the husk's capabilities, and after memory
    // so the pages file and mapped files are already closed again.
    runner.run('files', () => kind('files').restore!(ctx));
    runner.run('process', () => kind('process').restore!(ctx));
    // signals: actions and altstack point into restored memory; pending
    // signals are queued while all are blocked (the real mask goes in last).
    runner.run('signals', () => kind('signals').restore!(ctx));
    // rseq/robust list/tid address: need their memory mapped.
    runner.run('thread-state', () => kind('thread-state').restore!(ctx));
    // PR_SET_MM_MAP after every mapping exists: the kernel checks the values against them.
    runner.run('mm', () => kind('mm').restore!(ctx));
    // creds last among injected calls: dropping capabilities ends what we may do.
    runner.run('creds', () => kind('creds').restore!(ctx));
    runner.run('verify', () => checkRestoredLayout(ctx));
    runner.run('registers', () => {
      // The scratch area goes last, from inside itself: the single-step stop
      // comes before the next (now unmapped) instruction would run.
      t.syscall('munmap', 'unmap the scratch area', SYS.munmap, ctx.scratch, SCRATCH_SIZE);
      kind('registers').restore!(ctx);
    });
    runner.run('resume', () => t.detach());
    saveJob({
      name: jobName,
      supervisorPid: opts.detach ? 0 : process.pid,
      helperPid: helper.child.pid ?? 0,
      initPid,
      initStart: readStat(initPid).starttime,
      createdAt: new Date().toISOString(),
    });
    return {
      jobName,
      pid: huskPid,
      nsPid: proc.pid,
      initPid,
      durationMs: runner.totalMs(),
      stages: runner.stages,
      warnings,
      exited: helper.exited,
      helper,
    };
  } catch (e) {
    // Nothing half-built survives: the husk dies with its tracer's grip
    // (EXITKILL), and the init takes the whole namespace with it.
    try {
      if (thread) thread.kill();
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
