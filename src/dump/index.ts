// Dump: the only place that knows the order of a checkpoint.
//   resolve -> refuse what cannot be captured (process still running) ->
//   freeze -> injection window (short: scratch page, injected reads, then
//   registers and mask put back) -> collect -> pages -> manifest (last) ->
//   finish: kill, or resume. Any failure after the freeze resumes the process
//   exactly as it was and removes what was written.
import { existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { native } from '../sys/native.js';
import { CrestError, isErrno } from '../sys/errors.js';
import { MAP, PROT, SIG, SYS } from '../sys/constants.js';
import { readChildren, readMaps, readStat, readStatus, readTasks, type ProcStatus } from '../proc/index.js';
import { Thread, findSyscallInsn } from '../tracer/tracer.js';
import { ImageWriter } from '../image/writer.js';
import { FORMAT_VERSION, IMAGE_MAGIC, type ProcessImage, type ThreadImage } from '../image/schema.js';
import { KINDS } from '../kinds/registry.js';
import { ScratchAllocator, unsupported, type DumpContext, type TcpPolicy } from '../kinds/types.js';
import { lockNetwork, ownNetns, type NetLock } from '../kinds/fds/netlock.js';
import { jobOfPid, listJobs, loadJob, saveJob, type JobRecord } from '../jobs/registry.js';
import { pidHelperCapability, setcapCommand } from '../pids/index.js';
import { vdsoSizes } from '../kinds/memory.js';
import { openPageTracking, parentRef, type PageTrackingOptions } from '../kinds/pagetrack.js';
import { CREST_VERSION } from '../version.js';
import { StageRunner } from '../stages.js';

export interface DumpOptions {
  /** A host PID of the job (any of its processes, or its init). */
  pid?: number;
  /** The job's name (crest run --name). */
  job?: string;
  /** Image directory. */
  dir: string;
  /** Keep the process running after the checkpoint (default: stop the job). */
  leaveRunning?: boolean;
  /** Overwrite an existing image in dir. */
  force?: boolean;
  /** TCP connections crest cannot recreate are taken as closed: reset by their peer after restore. */
  tcpClose?: boolean;
  /**
   * Wait for the stopped process to be gone before returning (default). The
   * CLI, which exits right after, skips the wait: its exit releases the process.
   */
  reap?: boolean;
  /** Called after each stage with its name and duration. */
  onStage?: (name: string, ms: number) => void;
  /**
   * Hash every page (written to the image, for the next incremental
   * checkpoint) and store only pages that differ from `parentDir`'s.
   */
  pages?: PageTrackingOptions;
}

export interface DumpResult {
  dir: string;
  jobName: string | null;
  /** Host PID of the dumped process and its PID inside the job. */
  pid: number;
  nsPid: number;
  /** How many processes the image holds. */
  processes: number;
  /** userns: a crest job's process; host: a process outside any job (restored by the cap or cycle mode). */
  pidMode: 'userns' | 'host';
  pagesBytes: number;
  durationMs: number;
  stages: { name: string; ms: number }[];
  warnings: string[];
  stopped: boolean;
}

interface Target {
  pid: number;
  /** Every process of the job (host PIDs), parents before children. */
  members: number[];
  /** The job's init; null for a process outside any job (dumped alone, PID mode host). */
  initPid: number | null;
  record: JobRecord | null;
}

const SCRATCH_SIZE = 16384;

function processExists(pid: number): boolean {
  return existsSync(`/proc/${pid}`);
}

/** Finds the process to dump and its job, refusing what is not ours or not a crest job. */
function resolveTarget(opts: DumpOptions): Target {
  let pid = opts.pid;
  let record: JobRecord | null = null;
  if (opts.job !== undefined) {
    record = loadJob(opts.job);
    if (!record) throw new CrestError('NO_SUCH_JOB', `no running job named ${JSON.stringify(opts.job)} (crest run --name ${opts.job} starts one)`);
    const kids = readChildren(record.initPid);
    if (kids.length === 0) throw new CrestError('NO_SUCH_JOB', `job ${opts.job} has no process left to checkpoint`);
    pid = kids[0]!;
  }
  if (pid === undefined) throw new CrestError('USAGE', 'name the process: --pid PID or --job NAME');
  if (!Number.isInteger(pid) || pid <= 0 || !processExists(pid)) {
    throw new CrestError('NO_SUCH_PROCESS', `no process with pid ${pid}`);
  }
  let status: ProcStatus;
  try {
    status = readStatus(pid);
  } catch {
    throw new CrestError('NO_SUCH_PROCESS', `no process with pid ${pid}`);
  }
  const uid = process.getuid!();
  if (uid !== 0 && status.uid.some((u) => u !== uid)) {
    throw new CrestError('NOT_YOURS', `pid ${pid} (${status.name}) belongs to uid ${status.uid[0]}; you (uid ${uid}) can only checkpoint your own processes`);
  }
  const job = jobOfPid(pid);
  if (!job) return hostTarget(pid, status, record);
  if (pid === job.initPid) {
    if (job.members.length === 0) throw new CrestError('NO_SUCH_PROCESS', `job of pid ${pid} has no process left`);
    pid = job.members[0]!;
  }
  const members = treeMembers(job.initPid);
  if (members.length === 0) throw new CrestError('NO_SUCH_PROCESS', `job of pid ${pid} has no process left`);
  return { pid: members[0]!, members, initPid: job.initPid, record: record ?? job.record };
}

/**
 * A process outside any crest job: dumped alone, with its host PID and TIDs
 * (PID mode host), when crest-pidhelper can give them back (the cap or the
 * cycle mode). The job record is the one of a `crest restore` that made it,
 * if any (its helper is the parent), so that the restore learns of the dump.
 */
function hostTarget(pid: number, status: ProcStatus, record: JobRecord | null): Target {
  const advice = 'Start it as `crest run -- CMD`: a job has its own pid namespace and always gets its PIDs back';
  if (status.nspid.length !== 1) {
    throw new CrestError(
      'NOT_A_JOB',
      `pid ${pid} (${status.name}) lives in a pid namespace of its own (PIDs ${status.nspid.join(', ')}, outermost first) that is not a crest job's; it could not get its PIDs back. ${advice}`,
    );
  }
  const c = pidHelperCapability();
  if (!c.built) {
    throw new CrestError('NOT_A_JOB', `pid ${pid} (${status.name}) was not started by crest run, and no PID mode for processes outside a job is available (${c.why}). ${advice}`);
  }
  record ??= listJobs().find((r) => r.initPid === status.ppid) ?? null;
  return { pid, members: [pid], initPid: null, record };
}

/** Refusals that need only /proc (the process keeps running untouched). */
function refuseUnsupported(pid: number, initPid: number | null, members: number[], tcp: TcpPolicy): void {
  const status = readStatus(pid);
  const stat = readStat(pid);
  const kids = readChildren(pid).filter((k) => !members.includes(k));
  if (kids.length > 0 && initPid === null) {
    throw unsupported(pid, 'children', `it has child processes (${kids.join(', ')}); a process outside a crest job is checkpointed alone. Start it with \`crest run -- CMD\` to checkpoint a whole process tree`);
  }
  if (kids.length > 0) {
    throw unsupported(pid, 'children', `it started child processes (${kids.join(', ')}) while being checked; try again`);
  }
  // Sessions and process groups made inside the job are not recreated yet
  // (outside a job, restore makes the process lead its session or group again, see pids/host.ts).
  const depth = status.nspid.length;
  for (const [what, id] of [['process group', stat.pgrp], ['session', stat.session]] as const) {
    if (id <= 0 || initPid === null) continue;
    let inside = false;
    try {
      inside = readStatus(id).nspid.length === depth;
    } catch {
      inside = false;
    }
    if (inside) throw unsupported(pid, what, `it leads or joined a ${what} created inside the job (id ${id}); not supported yet`);
  }
  if (status.tracerPid !== 0) {
    throw unsupported(pid, 'tracer', `it is already traced by pid ${status.tracerPid}`);
  }
  if (status.state === 'T' || status.state === 't') {
    throw unsupported(pid, 'state', 'it is stopped; resume it (kill -CONT) first');
  }
  if (status.state === 'Z' || status.state === 'X') throw unsupported(pid, 'zombie', 'it has exited and its parent has not reaped it yet; zombies are not supported yet');
  const nsPid = status.nspid[status.nspid.length - 1]!;
  for (const k of KINDS) k.check?.({ hostPid: pid, nsPid, status, stat, initHostPid: initPid, tcp });
}

/** Checkpoints one process of a crest job into opts.dir. */
export async function dump(opts: DumpOptions): Promise<DumpResult> {
  const runner = new StageRunner(opts.onStage);
  return runner.deferSignals(() => dumpStages(opts, runner));
}

async function dumpStages(opts: DumpOptions, runner: StageRunner): Promise<DumpResult> {
  const target = runner.run('resolve', () => resolveTarget(opts));
  const pid = target.pid;
  // A job with its own network namespace (crest run --net) has its TCP connections repaired.
  const tcp: TcpPolicy = { ownNetns: ownNetns(target.initPid), close: !!opts.tcpClose };
  runner.run('check', () => {
    for (const m of target.members) refuseUnsupported(m, target.initPid, target.members, tcp);
  });
  const writer = runner.run('open-image', () => ImageWriter.create(opts.dir, { force: !!opts.force }));
  const pidMode = target.initPid === null ? 'host' : 'userns';
  // Every process of the tree, frozen before any is inspected, so the image is one moment.
  const frozen = new Map<number, Thread[]>();
  let netLock: NetLock | null = null;
  let committed = false;
  const warnings: string[] = [];
  if (pidMode === 'host') {
    const c = pidHelperCapability();
    if (!c.capable) {
      warnings.push(`pid ${pid} is not in a crest job: restoring it will cycle PIDs (slow, racy) because ${c.why}; an administrator can enable the cap mode with: ${setcapCommand(c.path)}`);
    }
  }
  try {
    // The parent's page hashes are read before the freeze: the job does not wait for them.
    const tracking = opts.pages ? runner.run('parent', () => openPageTracking(opts.pages!, opts.dir)) : undefined;
    runner.run('freeze', () => {
      for (const m of target.members) frozen.set(m, freeze(m));
      // A process created while we froze the tree would be missed: look again.
      const again = target.initPid === null ? [target.pid, ...readChildren(target.pid)] : treeMembers(target.initPid);
      const extra = again.filter((m) => !frozen.has(m));
      if (extra.length > 0) throw unsupported(extra[0]!, 'process tree', 'a process was created while the tree was being frozen; try again');
    });
    // Frozen processes, but a live network: stop it so that every connection is read at one moment.
    if (tcp.ownNetns) netLock = runner.run('net-lock', () => lockNetwork(target.members));
    const procs: ProcessImage[] = [];
    for (const m of target.members) {
      const ctx = newContext(m, frozen.get(m)!, target, writer, warnings, tcp);
      ctx.pageTracking = tracking;
      runner.run(`inject:${ctx.nsPid}`, () => injectionWindow(ctx));
      await runner.runAsync(`collect:${ctx.nsPid}`, async () => {
        for (const k of KINDS) {
          if (k.name !== 'memory') await k.dump?.(ctx);
          for (const slot of ctx.threads) k.dumpThread?.(ctx, slot);
        }
      });
      await runner.runAsync(`memory:${ctx.nsPid}`, async () => KINDS.find((k) => k.name === 'memory')!.dump!(ctx));
      procs.push(finishProcess(ctx, target.initPid));
    }
    const manifest = runner.run('manifest', () =>
      writer.commit({
        magic: IMAGE_MAGIC,
        formatVersion: FORMAT_VERSION,
        crestVersion: CREST_VERSION,
        createdAt: new Date().toISOString(),
        source: {
          kernel: native().unameRelease(),
          arch: 'x86_64',
          pageSize: 4096,
          hostname: hostname(),
          vdso: [...vdsoSizes(pid)].map(([kind, size]) => ({ kind: kind as 'vdso' | 'vvar' | 'vvar_vclock', size })),
        },
        job: { name: target.record?.name ?? null, pidMode, uid: process.getuid!(), gid: process.getgid!(), ...(tcp.ownNetns ? { net: true } : {}) },
        ...(parentRef(tracking ?? null) ? { parent: parentRef(tracking ?? null) } : {}),
        processes: procs,
      }),
    );
    committed = true;
    // Past the commit point the checkpoint is complete: finish it whatever arrives.
    runner.interrupted = null;
    const stopped = !opts.leaveRunning;
    runner.run('finish', () => {
      if (stopped) {
        if (target.record) {
          saveJob({ ...target.record, checkpointed: { dir: opts.dir, at: new Date().toISOString() } });
        }
        netLock?.drop();
        // The whole job goes: its processes, then its init (which takes the namespace with it).
        // Other threads first: a traced group leader's exit is reported only after every other thread's.
        for (const threads of frozen.values()) for (const th of [...threads].reverse()) th.kill({ reap: opts.reap !== false });
        try {
          if (target.initPid !== null) native().kill(target.initPid, SIG.SIGKILL);
        } catch {
          /* the init already went with its last process */
        }
      } else {
        const why = netLock?.release();
        if (why) warnings.push(why);
        for (const threads of frozen.values()) {
          for (const th of threads) {
            th.restoreOriginal();
            th.detach();
            requeueCaught(th);
          }
        }
      }
    });
    return {
      dir: opts.dir,
      jobName: target.record?.name ?? null,
      pid,
      nsPid: procs[0]!.pid,
      processes: procs.length,
      pidMode,
      pagesBytes: Object.values(manifest.files).reduce((a, f) => a + f.size, 0),
      durationMs: runner.totalMs(),
      stages: runner.stages,
      warnings,
      stopped,
    };
  } catch (e) {
    // Never leave a half image that looks complete, and never leave a process stopped or changed.
    if (!committed) writer.abort();
    netLock?.release();
    for (const threads of frozen.values()) for (const th of threads) th.release();
    const gone = target.members.find((m) => !processExists(m));
    if (gone !== undefined) {
      throw new CrestError('PROCESS_VANISHED', `pid ${gone} exited during the checkpoint (${(e as Error).message}); no image was written`, { cause: e });
    }
    throw e;
  }
}

/** A dump context for one frozen process of the tree. */
function newContext(pid: number, threads: Thread[], target: Target, writer: ImageWriter, warnings: string[], tcp: TcpPolicy): DumpContext {
  const status = readStatus(pid);
  const stat = readStat(pid);
  const nsPid = status.nspid[status.nspid.length - 1]!;
  const ctx: DumpContext = {
    hostPid: pid,
    nsPid,
    initHostPid: target.initPid,
    tcp,
    status,
    stat,
    thread: threads[0]!,
    scratch: 0,
    scratchSize: SCRATCH_SIZE,
    mem: null as unknown as ScratchAllocator,
    proc: { pid: nsPid, ppid: 0, pgid: 0, sid: 0 },
    thr: {},
    threads: threads.map((th) => ({ thread: th, thr: { tid: nsTid(th.tid) } })),
    writer,
    warnings,
  };
  ctx.thr = ctx.threads[0]!.thr;
  return ctx;
}

/** Every process of the job below its init, parents before children. */
function treeMembers(initPid: number): number[] {
  const out: number[] = [];
  const walk = (p: number): void => {
    for (const c of readChildren(p)) {
      out.push(c);
      walk(c);
    }
  };
  walk(initPid);
  return out;
}

/** The thread's id inside the job's pid namespace. */
function nsTid(hostTid: number): number {
  const st = readStatus(hostTid);
  return st.nspid[st.nspid.length - 1]!;
}

/**
 * Freezes every thread of the process. Threads created while we freeze are
 * caught by listing the tasks again until a listing brings nothing new (a
 * frozen thread cannot create more).
 */
function freeze(pid: number): Thread[] {
  const threads = new Map<number, Thread>();
  try {
    for (let round = 0; ; round++) {
      if (round > 1000) throw new CrestError('FREEZE_FAILED', `pid ${pid} keeps creating threads faster than they can be frozen`);
      let added = false;
      for (const tid of readTasks(pid)) {
        if (threads.has(tid)) continue;
        try {
          threads.set(tid, Thread.seize(tid));
          added = true;
        } catch (e) {
          if (isErrno(e, 'ESRCH') && tid !== pid) continue; // the thread exited meanwhile
          if (isErrno(e, 'ESRCH')) throw new CrestError('NO_SUCH_PROCESS', `pid ${pid} exited before it could be frozen`, { cause: e });
          if (isErrno(e, 'EPERM')) {
            throw new CrestError('PTRACE_DENIED', `the kernel refused to trace pid ${pid} (EPERM): it may be privileged, non-dumpable or already traced`, { cause: e });
          }
          throw e;
        }
      }
      if (!added) break;
    }
    // Threads that exited after we seized them leave their Thread behind.
    for (const [tid, th] of threads) {
      if (!existsSync(`/proc/${pid}/task/${tid}`)) {
        th.markDetached();
        threads.delete(tid);
      }
    }
  } catch (e) {
    for (const th of threads.values()) th.release();
    throw e;
  }
  const main = threads.get(pid);
  if (!main) throw new CrestError('NO_SUCH_PROCESS', `pid ${pid} has no main thread left`);
  return [main, ...[...threads.values()].filter((t) => t !== main)];
}

/**
 * The injection window: borrow the task's registers to run system calls
 * that read state only the task itself can report (signal actions, brk,
 * timers ...). A `syscall` instruction in the vDSO serves as the site; a
 * scratch page holds the results. Everything is put back before the long
 * memory copy starts, so crest dying later leaves the task intact.
 */
function injectionWindow(ctx: DumpContext): void {
  const t = ctx.thread;
  const vdso = readMaps(ctx.hostPid).find((e) => e.path === '[vdso]');
  if (!vdso) throw new CrestError('NO_VDSO', `pid ${ctx.hostPid} has no vDSO to run injected calls from`);
  const code = t.readMem(vdso.start, vdso.end - vdso.start);
  const at = findSyscallInsn(code);
  if (at < 0) throw new CrestError('NO_VDSO', 'no syscall instruction in the vDSO');
  for (const slot of ctx.threads) slot.thread.setSyscallSite(vdso.start + at);
  const scratch = Number(
    t.syscall('mmap', 'map a scratch area', SYS.mmap, 0, SCRATCH_SIZE, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS, -1, 0),
  );
  ctx.scratch = scratch;
  ctx.mem = new ScratchAllocator(t, scratch, SCRATCH_SIZE);
  try {
    for (const k of KINDS) {
      ctx.mem.reset();
      k.dumpInjected?.(ctx);
      for (const slot of ctx.threads) {
        ctx.mem.reset();
        k.dumpThreadInjected?.(ctx, slot);
      }
    }
  } finally {
    t.syscallRaw(SYS.munmap, scratch, SCRATCH_SIZE);
    ctx.scratch = 0;
    for (const slot of ctx.threads) slot.thread.endInjection();
  }
}

function finishProcess(ctx: DumpContext, initPid: number | null): ProcessImage {
  const s = ctx.stat;
  // Outside a job the parent is not given back (the restored process is crest-pidhelper's child): 0.
  ctx.proc.ppid = initPid === null ? 0 : ctx.status.ppid === initPid ? 1 : nsOf(ctx, ctx.status.ppid);
  ctx.proc.pgid = s.pgrp > 0 ? nsOf(ctx, s.pgrp) : 0;
  ctx.proc.sid = s.session > 0 ? nsOf(ctx, s.session) : 0;
  return { ...(ctx.proc as ProcessImage), threads: ctx.threads.map((s) => s.thr as ThreadImage) };
}

/** Translates a host pgid/sid to the job's namespace (0 when it lies outside the job). */
function nsOf(ctx: DumpContext, hostId: number): number {
  try {
    const st = readStatus(hostId);
    if (st.nspid.length === ctx.status.nspid.length) return st.nspid[st.nspid.length - 1]!;
  } catch {
    /* outside or gone */
  }
  return 0;
}

/** Signals we took out of the way while freezing go back to the running process. */
function requeueCaught(t: Thread): void {
  for (const si of t.caughtSignals) {
    try {
      native().tgkill(t.tid, t.tid, si.readInt32LE(0));
    } catch {
      /* gone */
    }
  }
}
