// What the two host modes (cap and cycle) share: an image of a process that
// ran outside any crest job gets its PID and TIDs back in the host's pid
// namespace (the one crest runs in), from crest-pidhelper. Such an image
// holds one process; it must be the restoring user's, hold no capability,
// and every ID it needs must be free.
import { readFileSync, readdirSync } from 'node:fs';
import type { Manifest } from '../image/schema.js';
import { Helper } from '../jobs/supervise.js';
import { readStatus } from '../proc/index.js';
import { CrestError } from '../sys/errors.js';
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

/** Every ID the image's process needs: its PID, then its other threads' TIDs. */
export function idsOf(m: Manifest): { pid: number; tids: number[] } {
  const p = m.processes[0]!;
  return { pid: p.pid, tids: p.threads.slice(1).map((t) => t.tid) };
}

const hexMask = (s: string): bigint => BigInt(s);

/** What a host-mode image must be for the restoring user: checked before any process exists. */
export function preflightHostImage(m: Manifest, mode: string): void {
  if (m.job.pidMode !== 'host') {
    throw new CrestError('MODE_MISMATCH', `--mode ${mode} restores processes dumped outside a crest job; this image is of a crest job (its PIDs live in the job's own pid namespace): restore it without --mode, or with --mode userns`);
  }
  if (m.processes.length !== 1) throw new CrestError('IMAGE_INVALID', `an image of a process outside a crest job holds one process, not ${m.processes.length}`);
  const p = m.processes[0]!;
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
  const max = pidMax();
  const { pid, tids } = idsOf(m);
  for (const id of [pid, ...tids]) {
    if (id < MIN_HOST_ID || id >= max) {
      throw new CrestError(
        'PID_OUT_OF_RANGE',
        `${id === pid ? 'PID' : 'thread ID'} ${id} cannot be given back here: this machine hands out IDs ${MIN_HOST_ID} to ${max - 1} (kernel.pid_max is ${max})`,
      );
    }
  }
}

/** The refusal for a taken ID: who holds it, and what to do next time. */
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
  const { pid, tids } = idsOf(m);
  const start = Date.now();
  for (;;) {
    const taken = [pid, ...tids].map((id) => ({ id, h: holderOf(id) })).filter((x) => x.h !== null);
    if (taken.length === 0) return;
    const elapsed = Date.now() - start;
    const live = taken.find((x) => !x.h!.transient);
    if ((live && elapsed > LIVE_WAIT_MS) || elapsed > FREE_WAIT_MS) {
      const x = live ?? taken[0]!;
      throw takenError(x.id, pid, x.h!);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Starts crest-pidhelper `verb` for the image's process. */
export function spawnPidHelper(verb: 'husk' | 'cycle', m: Manifest, opts: SpawnOptions): Helper {
  const { pid, tids } = idsOf(m);
  const args = ['--pid', String(pid), ...tids.flatMap((t) => ['--tid', String(t)])];
  if (verb === 'cycle') args.push('--within', String(opts.cycleTimeoutMs ?? 30_000));
  return new Helper(verb, args, { detached: opts.detached, path: pidHelperPath() });
}

/** Reads crest-pidhelper's report (husk, thread..., cycled, ready | error). */
export async function awaitHostHusks(helper: Helper, m: Manifest, mode: 'cap' | 'cycle', timeoutMs: number): Promise<Husks> {
  const { pid, tids } = idsOf(m);
  const threads = new Map<number, number>();
  let husk = 0;
  let cycled: Husks['cycled'];
  return readUntil<Husks>(helper, 'crest-pidhelper', timeoutMs, (word, [a, b]) => {
    switch (word) {
      case 'husk':
        husk = Number(a);
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
        if (husk !== pid || tids.some((t) => !threads.has(t))) {
          throw new CrestError('HELPER_FAILED', `crest-pidhelper reported pid ${husk} and threads ${[...threads.keys()].join(',')}, not ${pid} and ${tids.join(',')}`);
        }
        return { initPid: helper.child.pid ?? 0, pids: new Map([[pid, pid]]), threads, ...(cycled ? { cycled } : {}) };
      case 'error':
        throw helperError(Number(a), b ?? '?', pid, mode);
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
 * The process's session, as far as an ordinary process can make it: a
 * session leader (a daemon, a process started detached) leads a new session
 * again (setsid; the husk, the helper's child, leads nothing yet).
 * Otherwise the process joins crest restore's session and process group, as
 * a restored job does (kinds/fds/stdio.ts): in the foreground of crest
 * restore's terminal exactly when crest restore is.
 */
export function restoreSession(ctx: RestoreContext): void {
  const p = ctx.proc;
  if (p.sid === p.pid) ctx.thread.syscall('setsid', 'lead a new session again', SYS.setsid);
}
