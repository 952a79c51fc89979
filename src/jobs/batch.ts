// `crest run --checkpoint-dir D`: a job for batch systems. The first run
// starts the command; every later run with the same D resumes the newest
// complete checkpoint instead (so one batch script serves the first run and
// every requeue). While the job runs, crest checkpoints it into D on a timer
// (the job keeps running), and on the resource manager's warning signal it
// checkpoints, stops the job and exits with 75, "checkpointed, requeue me".
// The warning signal is crest's: it is never passed on to the job.
import { restore } from '../restore/index.js';
import { CrestError } from '../sys/errors.js';
import { CheckpointDir, newestUsable, type CheckpointEntry, type DirLock } from './ckptdir.js';
import { takeCheckpoint, type CheckpointReason, type CheckpointTaken } from './checkpoint.js';
import { loadJob, saveJob } from './registry.js';
import { startJob, waitJob } from './run.js';
import { forwardSignals, type Helper, type HelperExit } from './supervise.js';
import { setProgressSink, type ProgressSink } from '../progress.js';
import { describeCompression, trackerWords } from '../image/show.js';

export interface BatchRunOptions {
  command: string[];
  name?: string;
  checkpointDir: string;
  /** Checkpoint this often (ms), the job running on. */
  everyMs?: number;
  /** On this signal: checkpoint, stop the job, end with "checkpointed" (75). */
  onSignal?: NodeJS.Signals;
  /** Keep this many complete checkpoints (and what they depend on). */
  keep?: number;
  /** A full checkpoint after this many (the others are incremental); 1: all full. */
  fullEvery?: number;
  /** Compress the checkpoints' pages (zstd). */
  compress?: boolean;
  /** A new job gets its own network namespace (crest run --net); a resumed one has what its checkpoint says. */
  net?: boolean;
  /** One line for the person watching (crest prints them on stderr). */
  log?: (line: string) => void;
  /** Shows the resume's progress (a bar on a terminal); timer checkpoints show none (the job's output shares the terminal). */
  resumeProgress?: ProgressSink | null;
  /** After each checkpoint (tests and the bench use it). */
  onCheckpoint?: (t: CheckpointTaken) => void;
}

export interface BatchRunResult {
  name: string;
  exit: HelperExit;
  /** The checkpoint the job was stopped in, or null when it ended otherwise. */
  checkpointedTo: string | null;
  /** The checkpoint this run resumed, or null when it started the command afresh. */
  resumedFrom: string | null;
  checkpoints: string[];
}

const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`;

/** Why a checkpoint the resume passed over could not be used, in one line. */
function skipLine(e: CheckpointEntry): string {
  return `${e.name} is ${e.status}${e.problem ? `: ${e.problem}` : ''}`;
}

/** Runs (or resumes) the job with checkpoints in opts.checkpointDir, to its end. */
export async function runWithCheckpoints(opts: BatchRunOptions): Promise<BatchRunResult> {
  const log = opts.log ?? (() => {});
  const cd = CheckpointDir.open(opts.checkpointDir, { create: true, command: opts.command });
  const runLock: DirLock = await cd.lockRun({ job: opts.name ?? null });
  try {
    cd.adopt(opts.command);
  } catch (e) {
    runLock.release();
    throw e;
  }
  const except = opts.onSignal ? [opts.onSignal] : [];
  let stopRequests = 0;
  let wake: (() => void) | null = null;
  const onWarning = (): void => {
    stopRequests++;
    wake?.();
  };
  if (opts.onSignal) process.on(opts.onSignal, onWarning);
  let unforward = (): void => {};
  try {
    const fin = cd.finished();
    if (fin) {
      throw new CrestError(
        'JOB_FINISHED',
        `the job of ${cd.dir} already ran to its end (exit ${fin.exitCode} at ${fin.at}); to run it again use a new --checkpoint-dir (or remove ${cd.dir}); to resume its newest checkpoint anyway remove ${cd.dir}/finished.json`,
      );
    }

    // Resume the newest complete checkpoint, or start afresh when there is none.
    const point = newestUsable(cd);
    const damaged = point.skipped.filter((e) => e.status === 'damaged');
    let name: string;
    let helper: Helper;
    let resumedFrom: string | null = null;
    if (point.entry) {
      for (const s of point.skipped) log(`passing over ${skipLine(s)}`);
      const e = point.entry;
      log(`resuming from ${e.name} (taken ${e.createdAt ?? '?'})${point.skipped.length ? ', the newest usable checkpoint' : ''}`);
      let r;
      const prev = opts.resumeProgress ? setProgressSink(opts.resumeProgress) : undefined;
      try {
        r = await restore({ dir: e.path, name: opts.name, trackPages: true });
      } catch (err) {
        cd.event('resume-failed', { checkpoint: e.name, code: (err as CrestError).code ?? null, error: (err as Error).message });
        throw new CrestError((err as CrestError).code ?? 'RESTORE_FAILED', `cannot resume from ${e.path}: ${(err as Error).message}`, { cause: err });
      } finally {
        if (prev !== undefined) {
          opts.resumeProgress?.done();
          setProgressSink(prev);
        }
      }
      for (const w of r.warnings) log(`warning: ${w}`);
      name = r.jobName;
      helper = r.helper;
      unforward = forwardSignals(helper, { except });
      const rec = loadJob(name, { includeEnded: true });
      if (rec) saveJob({ ...rec, checkpointDir: cd.dir, checkpointKeep: opts.keep, checkpointFullEvery: opts.fullEvery, checkpointCompress: opts.compress });
      resumedFrom = e.name;
      cd.event('resume', { checkpoint: e.name, job: name, pid: r.pid, durationMs: Math.round(r.durationMs), skipped: point.skipped.map((s) => s.name) });
    } else {
      if (damaged.length > 0) {
        throw new CrestError(
          'NO_USABLE_CHECKPOINT',
          `no checkpoint in ${cd.dir} can be resumed (${damaged.map(skipLine).join('; ')}); starting afresh would throw the job's progress away: remove ${cd.dir} to do that`,
        );
      }
      for (const s of point.skipped) log(`passing over ${skipLine(s)}`);
      const j = await startJob({
        command: opts.command,
        name: opts.name,
        net: opts.net,
        record: { checkpointDir: cd.dir, checkpointKeep: opts.keep, checkpointFullEvery: opts.fullEvery, checkpointCompress: opts.compress },
        onHelper: (h) => (unforward = forwardSignals(h, { except })),
      });
      name = j.name;
      helper = j.helper;
      cd.event('start', { job: name, pid: j.pid, command: opts.command });
    }

    // Supervise: timer checkpoints, the warning signal, the job's end.
    const checkpoints: string[] = [];
    let ended = false;
    const exitSeen = helper.exited.then(() => {
      ended = true;
      wake?.();
    });
    const take = async (reason: CheckpointReason, stop: boolean): Promise<CheckpointTaken | null> => {
      try {
        const t = await takeCheckpoint({ cd, job: name, stop, reason, keep: opts.keep, fullEvery: opts.fullEvery, compress: opts.compress });
        checkpoints.push(t.name);
        const what = (t.parent ? `incremental on ${t.parent}, ${trackerWords(t.tracker)}` : 'full') + (t.compression ? `, ${describeCompression(t.compression)}` : '');
        log(
          `checkpoint ${t.name} (${reason}, ${what}): ${mib(t.bytes)} in ${t.durationMs.toFixed(0)} ms; ` +
            (t.stopped ? 'job stopped' : `the job was paused ${t.pauseMs!.toFixed(0)} ms`),
        );
        for (const r of t.gc?.removed ?? []) log(`removed ${r.name} (${r.why})`);
        opts.onCheckpoint?.(t);
        return t;
      } catch (err) {
        // The job ending while it was being checkpointed is no failure: its end follows.
        await Promise.race([exitSeen, new Promise((r) => setTimeout(r, 500))]);
        if (ended) return null;
        log(`warning: the ${reason} checkpoint failed, the job keeps running: ${(err as Error).message}`);
        return null;
      }
    };
    let due = opts.everyMs ? Date.now() + opts.everyMs : Infinity;
    let stopping = false;
    while (!ended) {
      if (stopRequests > 0 && !stopping) {
        stopRequests = 0;
        log(`${opts.onSignal}: checkpointing job ${name} and stopping it`);
        // Once stopped, the job's end follows; later warnings have nothing left to do.
        stopping = (await take('signal', true)) !== null;
        continue;
      }
      if (Date.now() >= due && !stopping) {
        await take('timer', false);
        // The next interval counts from the end of this checkpoint: a slow one never queues up another.
        due = Date.now() + opts.everyMs!;
        continue;
      }
      await new Promise<void>((resolve) => {
        const ms = due === Infinity || stopping ? 2 ** 31 - 1 : Math.max(0, due - Date.now());
        const timer = setTimeout(resolve, Math.min(ms, 2 ** 31 - 1));
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      wake = null;
    }
    await exitSeen;
    const { exit, checkpointedTo } = await waitJob(name, helper);
    if (checkpointedTo) {
      cd.event('stopped', { job: name, checkpoint: checkpointedTo });
    } else if (exit.code !== null) {
      // Ended on its own: a requeue of this batch job must not run it again
      // from an old checkpoint (without any, a rerun just starts afresh).
      if (cd.nextSeq() > 1) cd.markFinished({ at: new Date().toISOString(), job: name, exitCode: exit.code });
      cd.event('finished', { job: name, exitCode: exit.code });
    } else {
      cd.event('killed', { job: name, signal: exit.signal });
    }
    return { name, exit, checkpointedTo, resumedFrom, checkpoints };
  } finally {
    unforward();
    if (opts.onSignal) process.off(opts.onSignal, onWarning);
    runLock.release();
  }
}
