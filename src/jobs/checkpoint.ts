// One checkpoint of a running job into its checkpoint directory: the next
// number, under the directory's checkpoint lock, so that the timer of
// `crest run`, its warning signal and `crest checkpoint` from another shell
// never write at once. Used by the supervisor in-process and by
// `crest checkpoint`; both go through the same dump().
import * as fs from 'node:fs';
import * as path from 'node:path';
import { dump, type DumpResult } from '../dump/index.js';
import { CrestError } from '../sys/errors.js';
import { readImage } from '../image/reader.js';
import { compressionOf, trackerOf, type CompressionSummary, type Tracker } from '../image/show.js';
import { CheckpointDir, checkpointName, collectGarbage, parentName, type CheckpointEntry, type GcResult } from './ckptdir.js';

/** Default length of a chain of incremental checkpoints (the full one included). */
export const DEFAULT_FULL_EVERY = 8;

/** The checkpoint to be incremental on, or null for a full one. */
function chooseParent(cd: CheckpointDir, fullEvery: number): CheckpointEntry | null {
  if (fullEvery <= 1) return null;
  const list = cd.list({ lockHeld: true });
  const byName = new Map(list.map((e) => [e.name, e]));
  const newest = [...list].reverse().find((e) => e.status === 'complete');
  if (!newest) return null;
  let length = 1;
  for (let e: CheckpointEntry | undefined = newest; e?.parent; e = byName.get(e.parent)) length++;
  return length < fullEvery ? newest : null;
}

/** Why a checkpoint is taken (recorded in the event log). */
export type CheckpointReason = 'timer' | 'signal' | 'request';

export interface CheckpointOptions {
  cd: CheckpointDir;
  /** The job's name (its record finds the process). */
  job: string;
  /** Stop the job once the checkpoint is complete (it ends with "checkpointed", exit 75). */
  stop: boolean;
  reason: CheckpointReason;
  /** After a complete checkpoint, keep only this many (and what they depend on). */
  keep?: number;
  /**
   * Incremental checkpoints: each one stores only the pages that changed
   * since the newest complete one, until a chain would be this long; then a
   * full one starts the next chain (1: every checkpoint full). Default 8.
   */
  fullEvery?: number;
  /** Compress the pages (zstd). */
  compress?: boolean;
  /** How long to wait for a checkpoint already being written (default 10 minutes). */
  lockWaitMs?: number;
  onStage?: (name: string, ms: number) => void;
}

export interface CheckpointTaken {
  name: string;
  path: string;
  /** The checkpoint it is incremental on, or null. */
  parent: string | null;
  /** How it found what changed since its parent (uffd-wp, page-hash, mixed); null for a full one. */
  tracker: Tracker | null;
  /** With --compress: how much was compressed (a busy machine stores blocks plain rather than wait). */
  compression: CompressionSummary | null;
  /** Bytes written (all data files). */
  bytes: number;
  durationMs: number;
  /** How long the job was frozen (from the freeze to its resumption); null when it was stopped. */
  pauseMs: number | null;
  stopped: boolean;
  gc: GcResult | null;
  dump: DumpResult;
}

/** The stages during which the job is frozen: from the freeze to the end of finish (resume or kill). */
export function frozenMs(stages: { name: string; ms: number }[]): number {
  const from = stages.findIndex((s) => s.name === 'freeze');
  if (from < 0) return 0;
  let ms = 0;
  for (let i = from; i < stages.length; i++) {
    ms += stages[i]!.ms;
    if (stages[i]!.name === 'finish') break;
  }
  return ms;
}

/** Takes one checkpoint into cd (the next ckpt-NNNN); removes the directory again if it fails. */
export async function takeCheckpoint(opts: CheckpointOptions): Promise<CheckpointTaken> {
  const { cd } = opts;
  const lock = await cd.lockCheckpoint({ job: opts.job, reason: opts.reason }, opts.lockWaitMs ?? 600_000);
  const seq = cd.nextSeq();
  const name = checkpointName(seq);
  const dir = path.join(cd.dir, name);
  lock.note({ job: opts.job, reason: opts.reason, checkpoint: name });
  try {
    cd.event('checkpoint-start', { checkpoint: name, reason: opts.reason, stop: opts.stop, job: opts.job });
    let d: DumpResult;
    const parent = chooseParent(cd, opts.fullEvery ?? DEFAULT_FULL_EVERY);
    try {
      d = await dump({ job: opts.job, dir, leaveRunning: !opts.stop, reap: true, onStage: opts.onStage, pages: { parentDir: parent?.path, compress: !!opts.compress } });
    } catch (e) {
      // The writer removed what it wrote; the empty directory goes too (a crash would leave an incomplete one).
      try {
        fs.rmdirSync(dir);
      } catch {
        /* not empty or gone: an incomplete checkpoint, which gc removes */
      }
      const code = (e as CrestError).code ?? null;
      // A job that ends while it is being checkpointed leaves nothing to checkpoint: not a failure.
      const ended = code === 'PROCESS_VANISHED' || code === 'NO_SUCH_JOB' || code === 'NO_SUCH_PROCESS';
      cd.event(ended ? 'checkpoint-abandoned' : 'checkpoint-failed', { checkpoint: name, reason: opts.reason, code, error: (e as Error).message });
      throw e;
    }
    const image = readImage(dir, { verifyData: false });
    const taken: CheckpointTaken = {
      name,
      path: dir,
      // The image names its parent only when it inherited pages from it.
      parent: parentName(image),
      tracker: trackerOf(image),
      compression: compressionOf(image),
      bytes: d.pagesBytes,
      durationMs: d.durationMs,
      pauseMs: d.stopped ? null : frozenMs(d.stages),
      stopped: d.stopped,
      gc: null,
      dump: d,
    };
    cd.event('checkpoint', {
      checkpoint: name,
      reason: opts.reason,
      parent: taken.parent,
      tracker: taken.tracker,
      bytes: taken.bytes,
      ...(taken.compression ? { compression: taken.compression } : {}),
      durationMs: Math.round(taken.durationMs),
      pauseMs: taken.pauseMs === null ? null : Math.round(taken.pauseMs),
      stopped: taken.stopped,
    });
    if (opts.keep !== undefined) {
      taken.gc = collectGarbage(cd, opts.keep, { lockHeld: true });
      for (const r of taken.gc.removed) cd.event('removed', { checkpoint: r.name, why: r.why, bytes: r.bytes });
    }
    return taken;
  } finally {
    lock.release();
  }
}
