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
import { FRAME_ROOM, SAFE_RETURN_CODE, Thread, awaitGroupStop, findSyscallInsn, sleepMs } from '../tracer/tracer.js';
import { ImageWriter } from '../image/writer.js';
import { FORMAT_VERSION, IMAGE_MAGIC, type ProcessImage, type ThreadImage, type ZombieImage } from '../image/schema.js';
import { planTree, type TreeNode } from '../restore/treeplan.js';
import { KINDS } from '../kinds/registry.js';
import { ScratchAllocator, unsupported, type DumpContext, type TcpPolicy } from '../kinds/types.js';
import { lockNetwork, ownNetns, type NetLock } from '../kinds/fds/netlock.js';
import { jobOfPid, listJobs, loadJob, saveJob, type JobRecord } from '../jobs/registry.js';
import { pidHelperCapability, setcapCommand } from '../pids/index.js';
import { vdsoSizes } from '../kinds/memory.js';
import { resumeRegs } from '../kinds/registers.js';
import { openPageTracking, parentRef, type PageTrackingOptions } from '../kinds/pagetrack.js';
import { rearmTrackers } from '../kinds/uffdwp.js';
import { CREST_VERSION } from '../version.js';
import { StageRunner } from '../stages.js';
import { faultArg } from '../fault.js';

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
  /** Every live process of the job (host PIDs), parents before children. */
  members: number[];
  /** Exited children of members not yet reaped (host PIDs; in a job only). */
  zombies: number[];
  /** The job's init; null for a process outside any job (dumped with its descendants, PID mode host). */
  initPid: number | null;
  record: JobRecord | null;
}

/** The dump's scratch area: a page for the safe-return trampoline, the data, the safe-return frame. */
const SCRATCH_CODE = 4096;
const SCRATCH_SIZE = 16384;
const SCRATCH_MAP = SCRATCH_CODE + SCRATCH_SIZE + FRAME_ROOM;

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
  const { live: members, zombies } = treeMembers(job.initPid);
  if (members.length === 0) throw new CrestError('NO_SUCH_PROCESS', `job of pid ${pid} has no process left`);
  return { pid: members[0]!, members, zombies, initPid: job.initPid, record: record ?? job.record };
}

/**
 * A process outside any crest job: dumped with its descendants, with their
 * host PIDs and TIDs (PID mode host), when crest-pidhelper can give them
 * back (the cap or the cycle mode). The job record is the one of a `crest
 * restore` that made it, if any (its helper is the parent), so that the
 * restore learns of the dump.
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
  const members = [pid, ...treeMembers(pid).live];
  checkHostTree(pid, members);
  return { pid, members, zombies: [], initPid: null, record };
}

/**
 * Outside a job: every descendant is the user's, and none is a zombie (a
 * zombie is given back only in a job, whose init can hold it).
 */
function checkHostTree(pid: number, members: readonly number[]): void {
  const uid = process.getuid!();
  for (const m of members) {
    let st: ProcStatus;
    try {
      st = readStatus(m);
    } catch {
      throw unsupported(pid, 'process tree', `its child ${m} exited while being looked at; try again`);
    }
    if (uid !== 0 && st.uid.some((u) => u !== uid)) {
      throw new CrestError('NOT_YOURS', `pid ${pid} has a descendant, pid ${m} (${st.name}), that belongs to uid ${st.uid[0]}; you (uid ${uid}) can only checkpoint your own processes`);
    }
    for (const c of readChildren(m)) {
      let state = '';
      try {
        state = readStatus(c).state;
      } catch {
        continue; // reaped meanwhile
      }
      if (state === 'Z' || state === 'X') {
        throw unsupported(c, 'zombie', `it has exited and its parent (pid ${m}) has not reaped it yet; outside a crest job zombies are not given back (start the program with \`crest run -- CMD\`: a job keeps them)`);
      }
    }
  }
}

/** Refusals that need only /proc (the process keeps running untouched). */
function refuseUnsupported(pid: number, initPid: number | null, tcp: TcpPolicy): void {
  const status = readStatus(pid);
  const stat = readStat(pid);
  if (status.tracerPid !== 0) {
    throw unsupported(pid, 'tracer', `it is already traced by pid ${status.tracerPid}`);
  }
  // In a job, stopped processes and zombies are part of the tree (kinds/tree.ts, restore/treeplan.ts).
  if (initPid === null && (status.state === 'T' || status.state === 't')) {
    throw unsupported(pid, 'state', 'it is stopped; resume it (kill -CONT) first, or start it with `crest run -- CMD`: a job keeps stopped processes stopped');
  }
  if (status.state === 'Z' || status.state === 'X') throw unsupported(pid, 'zombie', 'it has exited and its parent has not reaped it yet');
  const nsPid = status.nspid[status.nspid.length - 1]!;
  for (const k of KINDS) k.check?.({ hostPid: pid, nsPid, status, stat, initHostPid: initPid, tcp });
}

/**
 * refuseUnsupported on a process that still runs: it may close an fd or exec
 * while we read /proc (an fd gone between listing and reading it, /proc/PID/fd
 * unreadable for a moment inside execve). Such a read is tried again (a few
 * times, briefly); a refusal is final. In a job, a process that exits
 * meanwhile is left out: false.
 */
function checkRunning(pid: number, initPid: number | null, tcp: TcpPolicy): boolean {
  for (let attempt = 0; ; attempt++) {
    try {
      refuseUnsupported(pid, initPid, tcp);
      return true;
    } catch (e) {
      if (initPid !== null && exitedMeanwhile(pid, e)) return false;
      if ((e instanceof CrestError && e.code === 'UNSUPPORTED') || attempt >= 4) throw e;
      sleepMs(5);
    }
  }
}

/** A zombie of the tree comes back as a zombie, unless it is the exited main thread of a process whose other threads run. */
function refuseZombie(pid: number): void {
  const tasks = readTasks(pid);
  if (tasks.length > 1) {
    throw unsupported(pid, 'zombie', `its main thread exited while ${tasks.length - 1} other thread(s) run; not supported`);
  }
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
    // Processes the job starts meanwhile are checked when the freeze finds
    // them; those that end meanwhile are left out (in a job).
    for (const m of target.members) checkRunning(m, target.initPid, tcp);
    for (const z of target.zombies) {
      try {
        refuseZombie(z);
      } catch (e) {
        if (!processExists(z)) continue; // reaped meanwhile
        throw e;
      }
    }
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
    // A job's processes are also tracked by the kernel (kinds/uffdwp.ts): its record keys the tracker state.
    const job = target.record ? { name: target.record.name, initPid: target.record.initPid, initStart: target.record.initStart } : null;
    const tracking = opts.pages ? runner.run('parent', () => openPageTracking(opts.pages!, opts.dir, job)) : undefined;
    runner.run('freeze', () => freezeTree(target, frozen, tcp));
    // Frozen processes, but a live network: stop it so that every connection is read at one moment.
    if (tcp.ownNetns) netLock = runner.run('net-lock', () => lockNetwork(target.members));
    const contexts = target.members.map((m) => newContext(m, frozen.get(m)!, target, writer, warnings, tcp));
    // Which stops each parent has yet to collect: asked in the parent's injection window.
    const nsOfHost = new Map(contexts.map((c) => [c.hostPid, c.nsPid]));
    const treeOf = (parentHost: number): NonNullable<DumpContext['tree']> | undefined => {
      const parent = contexts.find((p) => p.hostPid === parentHost);
      if (parent) parent.tree ??= { stoppedChildren: [], unreported: new Set(), zombies: [], status: new Map() };
      return parent?.tree;
    };
    for (const c of contexts) if (c.thread.groupStop) treeOf(c.status.ppid)?.stoppedChildren.push(c.nsPid);
    for (const z of target.zombies) {
      const st = readStatus(z);
      treeOf(st.ppid)?.zombies.push(st.nspid[st.nspid.length - 1]!);
    }
    for (const ctx of contexts) {
      ctx.pageTracking = tracking;
      runner.run(`inject:${ctx.nsPid}`, () => injectionWindow(ctx));
    }
    const waitStatus = new Map(contexts.flatMap((c) => [...(c.tree?.status ?? [])]));
    const zombies = target.initPid === null ? [] : target.zombies.map((z) => zombieImage(z, nsOfHost, waitStatus));
    // A tree restore could not rebuild is refused now, before any memory is read.
    if (target.initPid !== null) runner.run('tree', () => checkTree(contexts, zombies));
    const unreported = new Set(contexts.flatMap((c) => [...(c.tree?.unreported ?? [])]));
    const procs: ProcessImage[] = [];
    for (const ctx of contexts) {
      await runner.runAsync(`collect:${ctx.nsPid}`, async () => {
        for (const k of KINDS) {
          if (k.name !== 'memory') await k.dump?.(ctx);
          for (const slot of ctx.threads) k.dumpThread?.(ctx, slot);
        }
      });
      await runner.runAsync(`memory:${ctx.nsPid}`, async () => KINDS.find((k) => k.name === 'memory')!.dump!(ctx));
      procs.push(finishProcess(ctx, target, unreported));
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
          vdso: [...vdsoSizes(target.pid)].map(([kind, size]) => ({ kind: kind as 'vdso' | 'vvar' | 'vvar_vclock', size })),
        },
        job: { name: target.record?.name ?? null, pidMode, uid: process.getuid!(), gid: process.getgid!(), ...(tcp.ownNetns ? { net: true } : {}) },
        ...(parentRef(tracking ?? null) ? { parent: parentRef(tracking ?? null) } : {}),
        processes: procs,
        ...(zombies.length > 0 ? { zombies } : {}),
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
        // Still frozen: the kernel's write tracking counts from this image on (a failure only costs the next checkpoint its speed).
        try {
          rearmTrackers(tracking?.uffd, manifest.checksum);
        } catch (e) {
          warnings.push(`write tracking could not be re-armed (the next checkpoint compares page hashes): ${(e as Error).message}`);
        }
        const why = netLock?.release();
        if (why) warnings.push(why);
        // Children before parents, each stopped one back in its stop before its parent runs on.
        for (const threads of [...frozen.values()].reverse()) {
          for (const th of [...threads].reverse()) {
            th.restoreOriginal();
            th.detach();
          }
          if (threads[0]?.groupStop) awaitGroupStop(threads[0].tid);
        }
      }
    });
    return {
      dir: opts.dir,
      jobName: target.record?.name ?? null,
      pid: target.pid,
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
    for (const threads of [...frozen.values()].reverse()) {
      for (const th of [...threads].reverse()) th.release();
      if (threads[0]?.groupStop) awaitGroupStop(threads[0].tid);
    }
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
    members: target.members,
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

/**
 * Every process below `initPid` (a job's init, or the top of a tree outside a
 * job), parents before children, and the
 * zombies among them. A zombie child of the init is left out: a job's init reaps
 * it at once (it is no one's to wait for).
 */
function treeMembers(initPid: number): { live: number[]; zombies: number[] } {
  const live: number[] = [];
  const zombies: number[] = [];
  const walk = (p: number): void => {
    let kids: number[];
    try {
      kids = readChildren(p);
    } catch (e) {
      // It exited while we looked (its children go to a reaper: the next walk finds them there).
      if (p !== initPid && e instanceof CrestError && e.code === 'PROC_GONE') return;
      throw e;
    }
    for (const c of kids) {
      let state: string;
      try {
        state = readStatus(c).state;
      } catch {
        continue; // reaped meanwhile
      }
      if (state === 'Z' || state === 'X') {
        if (p !== initPid) zombies.push(c);
        continue;
      }
      live.push(c);
      walk(c);
    }
  };
  walk(initPid);
  return { live, zombies };
}

/** The image of a zombie of the tree (its parent is frozen: it stays as it is). */
function zombieImage(hostPid: number, nsOfHost: Map<number, number>, waitStatus: Map<number, number>): ZombieImage {
  const st = readStatus(hostPid);
  const stat = readStat(hostPid);
  const last = (a: number[]): number => a[a.length - 1] ?? 0;
  const status = waitStatus.get(last(st.nspid));
  if (status === undefined) throw unsupported(hostPid, 'zombie', 'its parent does not see its exit (waitid); try again');
  return {
    pid: last(st.nspid),
    ppid: nsOfHost.get(st.ppid) ?? 0,
    pgid: last(st.nspgid),
    sid: last(st.nssid),
    exitSignal: stat.exit_signal,
    status,
  };
}

/** Refuses a tree that restore could not rebuild (restore/treeplan.ts), naming the process. */
function checkTree(contexts: DumpContext[], zombies: ZombieImage[]): void {
  const last = (a: number[]): number => a[a.length - 1] ?? 0;
  const nodes: TreeNode[] = contexts.map((c) => ({
    pid: c.nsPid,
    ppid: c.status.ppid === c.initHostPid ? 1 : (contexts.find((p) => p.hostPid === c.status.ppid)?.nsPid ?? 0),
    pgid: last(c.status.nspgid),
    sid: last(c.status.nssid),
    exitSignal: c.stat.exit_signal,
    subreaper: c.proc.prctl?.childSubreaper ?? false,
    zombie: false,
  }));
  nodes.push(...zombies.map((z) => ({ ...z, subreaper: false, zombie: true })));
  try {
    planTree(nodes, { usedIds: contexts.flatMap((c) => c.threads.map((t) => t.thr.tid!)) });
  } catch (e) {
    if (e instanceof CrestError) throw new CrestError(e.code, `${e.message}; the processes were left running untouched`, { cause: e });
    throw e;
  }
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
/**
 * Freezes the whole tree and settles what it is. A job goes on living while
 * it is frozen one process at a time: a build starts compilers, a shell its
 * commands, and some of them exit. So the tree is walked again and again,
 * each process not yet frozen checked (still running and untouched) and
 * frozen, one that exited before it could be frozen left out, until a walk
 * finds nothing new: every process is frozen then, none can fork or exit,
 * and the members and zombies found by that last walk are the image's.
 * Outside a job the top process must stay; inside one, any may go (the
 * first one left is then the image's main process).
 */
function freezeTree(target: Target, frozen: Map<number, Thread[]>, tcp: TcpPolicy): void {
  const walk = (): { live: number[]; zombies: number[] } =>
    target.initPid === null ? { live: [target.pid, ...treeMembers(target.pid).live], zombies: [] } : treeMembers(target.initPid);
  for (let round = 0; ; round++) {
    if (round > 200) throw unsupported(target.pid, 'process tree', 'it keeps creating processes faster than they can be frozen; try again');
    const now = walk();
    let changed = false;
    for (const m of now.live) {
      if (frozen.has(m)) continue;
      changed = true;
      try {
        if (!target.members.includes(m) && !checkRunning(m, target.initPid, tcp)) continue;
        frozen.set(m, freeze(m));
      } catch (e) {
        if (m !== (target.initPid === null ? target.pid : -1) && exitedMeanwhile(m, e)) continue;
        throw e;
      }
    }
    if (changed) continue;
    // Frozen processes that exited anyway (killed from outside) are not the tree's any more.
    for (const [m, threads] of frozen) {
      if (now.live.includes(m)) continue;
      for (const th of threads) th.markDetached();
      frozen.delete(m);
    }
    if (target.initPid === null) checkHostTree(target.pid, now.live);
    else for (const z of now.zombies) if (!target.zombies.includes(z)) refuseZombie(z);
    if (now.live.length === 0) throw new CrestError('NO_SUCH_PROCESS', 'every process of the job exited while it was being frozen');
    target.members = now.live;
    target.zombies = now.zombies;
    target.pid = now.live[0]!;
    return;
  }
}

/**
 * Whether `pid` failing to be checked or frozen with `e` is just its exit.
 * An exiting process is not a zombie at once: it has let go of its memory
 * (its /proc/PID/exe reads ENOENT) a moment before; such a failure waits
 * (briefly) to see it become one.
 */
function exitedMeanwhile(pid: number, e: unknown): boolean {
  const ended = (): boolean => {
    try {
      const state = readStatus(pid).state;
      return state === 'Z' || state === 'X';
    } catch {
      return true;
    }
  };
  if (ended()) return true;
  if (e instanceof CrestError && (e.code === 'NO_SUCH_PROCESS' || e.code === 'PROCESS_VANISHED')) return true;
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (code !== 'ENOENT' && code !== 'ESRCH' && code !== 'PROC_GONE') return false;
  for (let i = 0; i < 100; i++) {
    sleepMs(2);
    if (ended()) return true;
  }
  return false;
}

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
          // A thread that exited before or while we seized it is gone: list the threads again.
          const gone = isErrno(e, 'ESRCH') || (e instanceof CrestError && e.code === 'TASK_GONE');
          if (gone && tid !== pid) {
            added = true;
            continue;
          }
          if (isErrno(e, 'ESRCH')) throw new CrestError('NO_SUCH_PROCESS', `pid ${pid} exited before it could be frozen`, { cause: e });
          if (gone) throw new CrestError('PROCESS_VANISHED', `pid ${pid}: its main thread ended while being frozen (${(e as Error).message}); no image was written`, { cause: e });
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
 * timers ...). A scratch area mapped in the task holds the results, and its
 * first page the safe-return trampoline: each thread's window is armed with
 * an rt_sigreturn frame of its own registers (Thread.armSafeReturn), so that
 * crest dying in the middle of it (SIGKILL, the OOM killer) leaves the
 * thread where it was, not at borrowed registers. Only the two calls that
 * set this up (mapping the area, making its first page executable) and the
 * final unmap run without it. Everything is put back before the long
 * memory copy starts; a scratch area left behind is only a leaked mapping.
 */
function injectionWindow(ctx: DumpContext): void {
  const t = ctx.thread;
  const vdso = readMaps(ctx.hostPid).find((e) => e.path === '[vdso]');
  if (!vdso) throw new CrestError('NO_VDSO', `pid ${ctx.hostPid} has no vDSO to run injected calls from`);
  const code = t.readMem(vdso.start, vdso.end - vdso.start);
  const at = findSyscallInsn(code);
  if (at < 0) throw new CrestError('NO_VDSO', 'no syscall instruction in the vDSO');
  const vdsoSite = vdso.start + at;
  for (const slot of ctx.threads) {
    slot.thread.setSyscallSite(vdsoSite);
    slot.thread.useSyscallStops();
  }
  const base = Number(
    t.syscall('mmap', 'map a scratch area', SYS.mmap, 0, SCRATCH_MAP, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS, -1, 0),
  );
  const frameAt = base + SCRATCH_CODE + SCRATCH_SIZE;
  const fault = faultArg('kill-after-thread-window');
  try {
    t.writeMem(base, SAFE_RETURN_CODE);
    t.syscall('mprotect', 'make the trampoline page executable', SYS.mprotect, base, SCRATCH_CODE, PROT.READ | PROT.EXEC);
    ctx.scratch = base + SCRATCH_CODE;
    ctx.mem = new ScratchAllocator(t, ctx.scratch, SCRATCH_SIZE, 0);
    // Unarmed (see armSafeReturn), a thread runs its calls from the vDSO as before.
    const arm = (th: Thread): void => {
      th.setSyscallSite(th.armSafeReturn(frameAt, base, resumeRegs(th.origRegs, { restartBlock: 'again' })) ? base : vdsoSite);
    };
    arm(t);
    for (const k of KINDS) {
      ctx.mem.reset();
      k.dumpInjected?.(ctx);
    }
    // Each thread's window ends as soon as that thread is done: one frame
    // serves them all, armed again for each.
    ctx.threads.forEach((slot, i) => {
      if (slot.thread !== t) arm(slot.thread);
      for (const k of KINDS) {
        ctx.mem.reset();
        k.dumpThreadInjected?.(ctx, slot);
      }
      slot.thread.endInjection();
      if (fault !== null && i === Number(fault)) process.kill(process.pid, 'SIGKILL');
    });
  } finally {
    // The main thread, borrowed once more for the unmap (or still borrowed
    // after a failure), from the vDSO: the trampoline goes with the area.
    for (const slot of ctx.threads) slot.thread.setSyscallSite(vdsoSite);
    t.syscallRaw(SYS.munmap, base, SCRATCH_MAP);
    ctx.scratch = 0;
    for (const slot of ctx.threads) slot.thread.endInjection();
  }
}

function finishProcess(ctx: DumpContext, target: Target, unreported: Set<number>): ProcessImage {
  const s = ctx.stat;
  const initPid = target.initPid;
  // Outside a job the top process's parent is not given back (the restored
  // process is crest-pidhelper's child): 0. Its descendants' parents are in the tree.
  const ppid = ctx.status.ppid;
  ctx.proc.ppid = initPid === null ? (target.members.includes(ppid) ? ppid : 0) : ppid === initPid ? 1 : nsOf(ctx, ppid);
  if (initPid === null) {
    ctx.proc.pgid = s.pgrp > 0 ? nsOf(ctx, s.pgrp) : 0;
    ctx.proc.sid = s.session > 0 ? nsOf(ctx, s.session) : 0;
  } else {
    // As the job sees them (0: outside it), also when the group's or session's leader has exited.
    ctx.proc.pgid = ctx.status.nspgid[ctx.status.nspgid.length - 1] ?? 0;
    ctx.proc.sid = ctx.status.nssid[ctx.status.nssid.length - 1] ?? 0;
  }
  if (ctx.thread.groupStop) ctx.proc.stopped = { signal: ctx.thread.groupStop, reported: !unreported.has(ctx.nsPid) && ctx.proc.ppid !== 1 };
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
