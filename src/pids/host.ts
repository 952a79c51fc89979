// What the two host modes (cap and cycle) share: an image of a process (or a
// process tree) that ran outside any crest job gets its PIDs and TIDs back
// in the host's pid namespace (the one crest runs in), from crest-pidhelper.
// Its processes must be the restoring user's and hold no capability, and
// every ID it needs must be free. The top process becomes the child of
// crest-pidhelper (itself crest restore's child); every other process is
// the child of its original parent again.
import { readFileSync, readdirSync } from 'node:fs';
import type { Manifest } from '../image/schema.js';
import { Helper, restoreStdio } from '../jobs/supervise.js';
import { readStat, readStatus } from '../proc/index.js';
import { CrestError, isErrno } from '../sys/errors.js';
import { SYS } from '../sys/constants.js';
import type { RestoreContext } from '../kinds/types.js';
import { readUntil } from './lines.js';
import { pidHelperPath } from './pidhelper.js';
import type { Husks, SpawnOptions } from './types.js';

/** The kernel's counter wraps to 300: lower IDs belong to the boot. */
export const MIN_HOST_ID = 300;
/** How long a PID held by a dying process or an unreaped zombie is waited for. */
const FREE_WAIT_MS = 5000;
/** ... and by a live process (it may be on its way out: the dump just killed it). */
const LIVE_WAIT_MS = 1000;

export function pidMax(): number {
  try {
    return Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8').trim()) || 4194304;
  } catch {
    return 4194304;
  }
}

/** A process's command line for people: argv joined, or [comm] when it has none. */
export function commandLine(pid: number): string {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0').filter((a, i, all) => a !== '' || i < all.length - 1);
    if (argv.length > 0) return argv.join(' ');
  } catch {
    /* gone or hidden */
  }
  try {
    return `[${readFileSync(`/proc/${pid}/comm`, 'utf8').trim()}]`;
  } catch {
    return '?';
  }
}

/** Who holds `id` as a PID now; null when it is free. */
export interface Holder {
  /** The process holding it (the thread group, for a thread ID). */
  pid: number;
  text: string;
  /** A zombie, or an ID kept only by a process group or session: it frees itself soon. */
  transient: boolean;
}

/** Finds what holds `id`: a process, a thread, a zombie, or a process group or session that outlived its leader. */
export function holderOf(id: number): Holder | null {
  try {
    const st = readStatus(id);
    if (st.tgid !== id) {
      return { pid: st.tgid, text: `thread ${id} of pid ${st.tgid} (${commandLine(st.tgid)})`, transient: false };
    }
    if (st.state === 'Z' || st.state === 'X') {
      return { pid: id, text: `pid ${id}, a process that exited and is waiting for its parent (pid ${st.ppid}) to reap it`, transient: true };
    }
    return { pid: id, text: `pid ${id} (${commandLine(id)}), owned by uid ${st.uid[0]}`, transient: false };
  } catch {
    /* no such task */
  }
  for (const name of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(name)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'latin1');
    } catch {
      continue;
    }
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const what = Number(f[2]) === id ? 'process group' : Number(f[3]) === id ? 'session' : null;
    if (what) return { pid: Number(name), text: `${what} ${id}, whose leader exited; pid ${name} (${commandLine(Number(name))}) is in it`, transient: true };
  }
  return null;
}

/** Every ID the image needs: its processes' PIDs, their other threads' TIDs, and which process each ID belongs to. */
export function idsOf(m: Manifest): { pids: number[]; tids: number[]; owner: Map<number, number> } {
  const owner = new Map<number, number>();
  for (const p of m.processes) for (const t of p.threads) owner.set(t.tid, p.pid);
  return { pids: m.processes.map((p) => p.pid), tids: m.processes.flatMap((p) => p.threads.slice(1).map((t) => t.tid)), owner };
}

const hexMask = (s: string): bigint => BigInt(s);

/** What a host-mode image must be for the restoring user: checked before any process exists. */
export function preflightHostImage(m: Manifest, mode: string): void {
  if (m.job.pidMode !== 'host') {
    throw new CrestError('MODE_MISMATCH', `--mode ${mode} restores processes dumped outside a crest job; this image is of a crest job (its PIDs live in the job's own pid namespace): restore it without --mode, or with --mode userns`);
  }
  m.processes.forEach((p, i) => {
    // The top process has no parent in the image; every other one is the child of an earlier one.
    if (i === 0 ? p.ppid !== 0 : !m.processes.slice(0, i).some((q) => q.pid === p.ppid)) {
      throw new CrestError('IMAGE_INVALID', `process ${p.pid}: parent ${p.ppid} is not ${i === 0 ? 'none (the top of a tree dumped outside a job)' : 'an earlier process of the image'}`);
    }
    preflightHostProcess(p, mode);
  });
  const max = pidMax();
  const { pids, tids, owner } = idsOf(m);
  for (const id of [...pids, ...tids]) {
    if (id < MIN_HOST_ID || id >= max) {
      throw new CrestError(
        'PID_OUT_OF_RANGE',
        `${pids.includes(id) ? 'PID' : `thread ID (of pid ${owner.get(id)})`} ${id} cannot be given back here: this machine hands out IDs ${MIN_HOST_ID} to ${max - 1} (kernel.pid_max is ${max})`,
      );
    }
  }
}

/** One process of a host-mode image: the restoring user's, holding no capability. */
function preflightHostProcess(p: Manifest['processes'][number], mode: string): void {
  const uid = process.getuid!();
  const gid = process.getgid!();
  if (p.creds.uid.some((u) => u !== uid) || p.creds.gid.some((g) => g !== gid)) {
    throw new CrestError(
      'NOT_YOURS',
      `pid ${p.pid} ran as uid ${p.creds.uid[0]} gid ${p.creds.gid[0]}; you are uid ${uid} gid ${gid}: a process comes back only as the user and group it was`,
    );
  }
  const held = [p.creds.capEff, p.creds.capPrm, p.creds.capInh, p.creds.capAmb].map(hexMask).reduce((a, b) => a | b, 0n);
  if (held !== 0n) {
    throw new CrestError(
      'UNSUPPORTED',
      `pid ${p.pid} held capabilities (effective ${p.creds.capEff}, permitted ${p.creds.capPrm}); in the ${mode} mode a restored process gets none back (crest-pidhelper drops every capability before the process is rebuilt)`,
    );
  }
  const ours = readStatus('self').capBnd;
  const extra = ours & ~hexMask(p.creds.capBnd);
  if (extra !== 0n) {
    throw new CrestError(
      'UNSUPPORTED',
      `pid ${p.pid} had a smaller capability bounding set (${p.creds.capBnd}) than yours (0x${ours.toString(16)}); shrinking it needs CAP_SETPCAP, which a restored process never holds in the ${mode} mode`,
    );
  }
}

/** The refusal for a taken ID (of process `pid`): who holds it, and what to do next time. */
export function takenError(id: number, pid: number, holder: Holder): CrestError {
  const which = id === pid ? `PID ${id}` : `thread ID ${id} (of pid ${pid})`;
  return new CrestError(
    'PID_TAKEN',
    `${which} is taken by ${holder.text}; the process can come back only with its own IDs. ` +
      'Stop that process and try again; next time, start the program with `crest run -- CMD`: a job has its own PID namespace, so its PIDs are always free to give back',
  );
}

/**
 * Waits (bounded) until every ID is free. A zombie or a leftover process
 * group is waited for up to 5 s (PID 1 reaps orphans slowly), a live
 * process up to 1 s (it may be the one the dump just killed).
 */
export async function awaitIdsFree(m: Manifest): Promise<void> {
  const { pids, tids, owner } = idsOf(m);
  const start = Date.now();
  for (;;) {
    const taken = [...pids, ...tids].map((id) => ({ id, h: holderOf(id) })).filter((x) => x.h !== null);
    if (taken.length === 0) return;
    const elapsed = Date.now() - start;
    const live = taken.find((x) => !x.h!.transient);
    if ((live && elapsed > LIVE_WAIT_MS) || elapsed > FREE_WAIT_MS) {
      const x = live ?? taken[0]!;
      throw takenError(x.id, owner.get(x.id)!, x.h!);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Starts crest-pidhelper `verb` for the image's processes: the top one,
 * then each under its parent, with their threads. A session leader leads
 * a new session again before its children are made, so that they are in it.
 */
export function spawnPidHelper(verb: 'husk' | 'cycle', m: Manifest, opts: SpawnOptions): Helper {
  const args = m.processes.flatMap((p, i) => [
    '--pid',
    i === 0 ? String(p.pid) : `${p.pid}:${p.ppid}`,
    ...(p.sid === p.pid ? ['--setsid'] : []),
    ...p.threads.slice(1).flatMap((t) => ['--tid', String(t.tid)]),
  ]);
  if (verb === 'cycle') args.push('--within', String(opts.cycleTimeoutMs ?? 30_000));
  return new Helper(verb, args, { detached: opts.detached, path: pidHelperPath(), stdio: restoreStdio(m, !!opts.detached) });
}

/** Reads crest-pidhelper's report (husk, thread..., cycled, ready | error). */
export async function awaitHostHusks(helper: Helper, m: Manifest, mode: 'cap' | 'cycle', timeoutMs: number): Promise<Husks> {
  const { pids, tids, owner } = idsOf(m);
  const threads = new Map<number, number>();
  const husks = new Map<number, number>();
  let cycled: Husks['cycled'];
  return readUntil<Husks>(helper, 'crest-pidhelper', timeoutMs, (word, [a, b]) => {
    switch (word) {
      case 'husk':
        husks.set(Number(a), Number(a));
        return undefined;
      case 'thread':
        threads.set(Number(a), Number(a));
        return undefined;
      case 'cycled': {
        const ids = Number(a);
        const ms = Number(b) / 1000;
        cycled = { ids, ms, rate: ms > 0 ? Math.round((ids * 1000) / ms) : 0 };
        return undefined;
      }
      case 'ready':
        if (pids.some((p) => !husks.has(p)) || tids.some((t) => !threads.has(t))) {
          throw new CrestError('HELPER_FAILED', `crest-pidhelper reported pids ${[...husks.keys()].join(',')} and threads ${[...threads.keys()].join(',')}, not ${pids.join(',')} and ${tids.join(',')}`);
        }
        return { initPid: helper.child.pid ?? 0, pids: husks, threads, ...(cycled ? { cycled } : {}) };
      case 'error':
        throw helperError(Number(a), b ?? '?', owner.get(Number(a)) ?? Number(a), mode);
      default:
        return undefined;
    }
  });
}

function helperError(id: number, err: string, pid: number, mode: 'cap' | 'cycle'): CrestError {
  const which = id === pid ? `PID ${id}` : `thread ID ${id}`;
  if (err === 'EEXIST') {
    const h = holderOf(id);
    if (h) return takenError(id, pid, h);
    return new CrestError('PID_TAKEN', `${which} was taken by another process while crest-pidhelper created it; try again`);
  }
  if (err === 'EPERM' && mode === 'cap') {
    return new CrestError('CAP_MISSING', `crest-pidhelper could not choose ${which}: it does not hold CAP_CHECKPOINT_RESTORE here (see its message above; crest check says how to enable it), or your pid namespace is not yours`);
  }
  if (err === 'ETIMEDOUT') {
    return new CrestError('CYCLE_TIMEOUT', `cycling did not reach ${which} in time: other processes kept taking IDs first, or the machine is slow; try again, or use the cap mode (crest check says how to enable it)`);
  }
  if (err === 'EINVAL') return new CrestError('PID_OUT_OF_RANGE', `${which} is beyond this machine's kernel.pid_max (${pidMax()})`);
  return new CrestError('HELPER_FAILED', `crest-pidhelper could not create ${which}: ${err}`);
}

/**
 * The process's session and group, as far as an ordinary process can make
 * them. A session leader (a daemon, a process started detached) leads a new
 * session again: crest-pidhelper made its husk do so before creating its
 * children (--setsid), which so are in it. Otherwise the top process joins
 * crest restore's session and process group, as a restored job does
 * (kinds/fds/stdio.ts): in the foreground of crest restore's terminal
 * exactly when crest restore is; the processes below it are in the top
 * one's group, unless they led a group of their own or were in one that a
 * process of the tree leads (made again, parents and earlier siblings
 * first). What cannot be made again is said in a warning.
 */
export function restoreSession(ctx: RestoreContext): void {
  const p = ctx.proc;
  const top = ctx.manifest.processes[0]!;
  if (p.sid === p.pid) {
    if (readStat(ctx.huskHostPid).session !== ctx.huskHostPid) ctx.thread.syscall('setsid', 'lead a new session again', SYS.setsid);
    return;
  }
  if (p === top || p.pgid === top.pgid || p.pgid <= 0) return;
  const leader = ctx.manifest.processes.find((q) => q.pid === p.pgid);
  if (!leader) {
    ctx.warnings.push(`pid ${p.pid} was in process group ${p.pgid}, led by a process outside the image; it is in pid ${top.pid}'s group now`);
    return;
  }
  try {
    ctx.thread.syscall('setpgid', `join process group ${p.pgid}`, SYS.setpgid, 0, p.pgid === p.pid ? 0 : p.pgid);
  } catch (e) {
    if (!isErrno(e, 'EPERM') && !isErrno(e, 'ESRCH')) throw e;
    ctx.warnings.push(`pid ${p.pid} could not join process group ${p.pgid} again (${(e as Error).message}); it is in its parent's group`);
  }
}
