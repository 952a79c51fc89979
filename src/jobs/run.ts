// `crest run`: start a command as a restorable job - in its own user, pid and
// mount namespace owned by the invoking user - and supervise it until it
// ends or is checkpointed.
import { CrestError } from '../sys/errors.js';
import { readStat } from '../proc/index.js';
import { Helper, forwardSignals, type HelperExit } from './supervise.js';
import { checkJobName, freeJobName, loadJob, removeJob, saveJob, type JobRecord } from './registry.js';

/** `crest run` exits with this status when its job was checkpointed and stopped: "requeue me". */
export const EXIT_CHECKPOINTED = 75;

export interface RunOptions {
  command: string[];
  name?: string;
  /** The job also gets its own network namespace (loopback only): its TCP connections can be checkpointed. */
  net?: boolean;
  /** Called once the job has started, with its name and host PIDs. */
  onStart?: (info: { name: string; initPid: number; pid: number }) => void;
}

export interface RunResult {
  name: string;
  exit: HelperExit;
  /** Set when the job ended because `crest dump` checkpointed it. */
  checkpointedTo: string | null;
}

/** A job started by startJob(), running. */
export interface StartedJob {
  name: string;
  helper: Helper;
  /** Host PIDs of the job's init and of the job itself (0 when it ended before it could be seen). */
  initPid: number;
  pid: number;
}

/**
 * Picks the job's name, starts the helper and waits for the job to exist;
 * records the job (with `record` fields added) for `crest dump --job`.
 */
export async function startJob(
  opts: Pick<RunOptions, 'command' | 'name' | 'net'> & {
    record?: Partial<JobRecord>;
    /** Called as soon as the helper exists (install signal handling here, before any await). */
    onHelper?: (helper: Helper) => void;
  },
): Promise<StartedJob> {
  if (opts.command.length === 0) throw new CrestError('USAGE', 'crest run needs a command: crest run [--name N] -- CMD [ARGS...]');
  let name: string;
  if (opts.name !== undefined) {
    checkJobName(opts.name);
    if (loadJob(opts.name)) throw new CrestError('JOB_EXISTS', `a job named ${opts.name} is already running`);
    name = opts.name;
  } else {
    name = freeJobName(defaultName(opts.command[0]!));
  }
  const helper = new Helper('run', [...(opts.net ? ['--net'] : []), '--', ...opts.command]);
  opts.onHelper?.(helper);
  let initPid = 0;
  let pid = 0;
  const line = await helper.nextLine();
  if (line !== null && line.startsWith('started ')) {
    const [, init, job] = line.split(' ');
    initPid = Number(init);
    pid = Number(job);
    saveJob({
      name,
      supervisorPid: process.pid,
      helperPid: helper.child.pid ?? 0,
      initPid,
      initStart: startTimeOf(initPid),
      createdAt: new Date().toISOString(),
      ...opts.record,
    });
  }
  return { name, helper, initPid, pid };
}

/** Waits for a started job to end; says whether it ended by being checkpointed, and forgets its record. */
export async function waitJob(name: string, helper: Helper): Promise<{ exit: HelperExit; checkpointedTo: string | null }> {
  const exit = await helper.exited;
  const rec = loadJob(name, { includeEnded: true });
  const checkpointedTo = rec?.checkpointed?.dir ?? null;
  removeJob(name);
  return { exit, checkpointedTo };
}

/** Runs the job to its end. */
export async function run(opts: RunOptions): Promise<RunResult> {
  let unforward = (): void => {};
  // Signals that arrive while the job starts already go to the helper.
  const job = await startJob({ ...opts, onHelper: (h) => (unforward = forwardSignals(h)) });
  try {
    if (job.initPid) opts.onStart?.({ name: job.name, initPid: job.initPid, pid: job.pid });
    const { exit, checkpointedTo } = await waitJob(job.name, job.helper);
    return { name: job.name, exit, checkpointedTo };
  } finally {
    unforward();
  }
}

/** Start time of a process, or 0 when it is already gone (a job that ended at once). */
function startTimeOf(pid: number): number {
  try {
    return readStat(pid).starttime;
  } catch {
    return 0;
  }
}

function defaultName(cmd: string): string {
  const base = cmd.split('/').pop() ?? 'job';
  const clean = base.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^[._-]+/, '');
  return (clean || 'job').slice(0, 48);
}
