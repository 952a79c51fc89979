// A checkpoint directory (`crest run --checkpoint-dir D`): numbered images
// D/ckpt-0001, D/ckpt-0002 ..., each complete only once its manifest is in
// place (the image writer's commit protocol). "The newest checkpoint" is
// always found by looking - the highest-numbered image that reads back
// complete, with every parent it needs - never through a pointer file that
// could lie after a crash. Two flock(2) locks keep writers apart: run.lock,
// held by the one `crest run` that supervises D for as long as it lives, and
// checkpoint.lock, held while a checkpoint is written or old ones removed.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readImage } from '../image/reader.js';
import { trackerOf, type Tracker } from '../image/show.js';
import { MANIFEST_NAME, type Manifest } from '../image/schema.js';
import { CrestError } from '../sys/errors.js';
import { native } from '../sys/native.js';

/** The file that makes a directory a checkpoint directory (and names the command it belongs to). */
export const DIR_MARKER = 'crest-checkpoints.json';
/** The JSON-lines event log of a checkpoint directory. */
export const EVENTS_NAME = 'events.jsonl';
/** Written when the job ended on its own: a later `crest run` on D refuses instead of running it again. */
export const FINISHED_NAME = 'finished.json';
const RUN_LOCK = 'run.lock';
const CKPT_LOCK = 'checkpoint.lock';
const CKPT_RE = /^ckpt-([0-9]{4,9})$/;
const MARKER_MAGIC = 'crest-checkpoint-dir';
const OWN_NAMES = new Set([DIR_MARKER, EVENTS_NAME, FINISHED_NAME, RUN_LOCK, CKPT_LOCK, `${DIR_MARKER}.tmp`, `${FINISHED_NAME}.tmp`]);

const LOCK_EX = 2;
const LOCK_NB = 4;

/** What D/crest-checkpoints.json holds. */
export interface DirMarker {
  magic: typeof MARKER_MAGIC;
  version: 1;
  /** The command the checkpoints are of (crest run's argv after --). */
  command: string[];
  createdAt: string;
}

/** How the job in a checkpoint directory ended on its own (D/finished.json). */
export interface FinishedRecord {
  at: string;
  job: string;
  exitCode: number;
}

/** One checkpoint of a directory, as `crest ls` shows it. */
export interface CheckpointEntry {
  /** ckpt-0003 */
  name: string;
  seq: number;
  path: string;
  /**
   * complete: reads back whole (with its parents); incomplete: never finished
   * (no manifest: crest was interrupted or the disk filled); damaged: finished
   * but fails its checks now, or a parent it needs does; in-progress: being
   * written right now (the checkpoint lock is held).
   */
  status: 'complete' | 'incomplete' | 'damaged' | 'in-progress';
  /** Why it is not complete. */
  problem?: string;
  createdAt?: string;
  /** Bytes of its own files (an incremental checkpoint holds only what changed). */
  bytes: number;
  /** The checkpoint it is incremental on (its name), or null for a full one. */
  parent: string | null;
  /** How an incremental one found what changed (uffd-wp, page-hash, mixed); null for a full one. */
  tracker: Tracker | null;
  manifest?: Manifest;
}

function isDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** `ckpt-0007` for 7. */
export function checkpointName(seq: number): string {
  return `ckpt-${String(seq).padStart(4, '0')}`;
}

function writeJsonAtomic(file: string, value: unknown): void {
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    fs.writeSync(fd, JSON.stringify(value, null, 1) + '\n');
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}

function fmtCommand(cmd: readonly string[]): string {
  return cmd.map((a) => (/^[A-Za-z0-9_./=:,+-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
}

/** A checkpoint directory that was checked to be one (or created). */
export class CheckpointDir {
  private constructor(
    readonly dir: string,
    public marker: DirMarker,
  ) {}

  /**
   * Opens D, refusing anything that is not a checkpoint directory with a
   * message that says what it is instead. With `create`, a missing or empty
   * D becomes one for `command`; an existing one must be of the same command.
   */
  static open(dir: string, opts: { create?: boolean; command?: string[] } = {}): CheckpointDir {
    const d = path.resolve(dir);
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(d);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') throw new CrestError('CKPT_DIR_INVALID', `cannot use ${d} as a checkpoint directory: ${(e as Error).message}`, { cause: e });
    }
    if (st && !st.isDirectory()) {
      throw new CrestError('CKPT_DIR_INVALID', `${d} is not a directory; --checkpoint-dir wants a directory (new, empty, or one crest run made)`);
    }
    if (!st) {
      if (!opts.create) throw new CrestError('CKPT_DIR_NOT_FOUND', `${d} does not exist; give the directory crest run --checkpoint-dir wrote to`);
      fs.mkdirSync(d, { recursive: true, mode: 0o700 });
    }
    const markerPath = path.join(d, DIR_MARKER);
    let marker: DirMarker | undefined;
    if (fs.existsSync(markerPath)) {
      marker = readMarker(markerPath);
    } else {
      const entries = fs.readdirSync(d).filter((e) => !OWN_NAMES.has(e));
      if (entries.length > 0 || !opts.create || !opts.command) {
        if (entries.includes(MANIFEST_NAME)) {
          throw new CrestError(
            'CKPT_DIR_INVALID',
            `${d} holds a single checkpoint image (crest dump -D), not a checkpoint directory of crest run; restore it with crest restore -D ${d}, or give --checkpoint-dir a new directory`,
          );
        }
        if (entries.length === 0) {
          throw new CrestError('CKPT_DIR_INVALID', `${d} is not a checkpoint directory (it has no ${DIR_MARKER}); no crest run --checkpoint-dir wrote there`);
        }
        const shown = entries.slice(0, 3).map((e) => JSON.stringify(e)).join(', ') + (entries.length > 3 ? ', ...' : '');
        throw new CrestError(
          'CKPT_DIR_INVALID',
          `${d} is not a checkpoint directory: it has ${shown} but no ${DIR_MARKER}; give --checkpoint-dir a new or empty directory (crest does not write into unrelated ones)`,
        );
      }
      marker = { magic: MARKER_MAGIC, version: 1, command: opts.command, createdAt: new Date().toISOString() };
      writeJsonAtomic(markerPath, marker);
    }
    // Without any checkpoint there is nothing of the old command to resume: crest run adopts it (adopt(), under its lock).
    const hasCheckpoints = fs.readdirSync(d).some((n) => CKPT_RE.test(n));
    if (opts.command && hasCheckpoints && JSON.stringify(opts.command) !== JSON.stringify(marker.command)) {
      throw new CrestError(
        'CKPT_DIR_OTHER_COMMAND',
        `${d} holds checkpoints of \`${fmtCommand(marker.command)}\`, not of \`${fmtCommand(opts.command)}\`; resuming them would run another program: give this command its own --checkpoint-dir`,
      );
    }
    return new CheckpointDir(d, marker);
  }

  /**
   * Makes the directory the checkpoint directory of `command` when it holds
   * no checkpoint yet (an earlier command never got as far as one). Call
   * with run.lock held.
   */
  adopt(command: string[]): void {
    if (JSON.stringify(command) === JSON.stringify(this.marker.command)) return;
    if (fs.readdirSync(this.dir).some((n) => CKPT_RE.test(n))) {
      throw new CrestError('CKPT_DIR_OTHER_COMMAND', `${this.dir} holds checkpoints of \`${fmtCommand(this.marker.command)}\`, not of \`${fmtCommand(command)}\``);
    }
    this.marker = { ...this.marker, command };
    writeJsonAtomic(path.join(this.dir, DIR_MARKER), this.marker);
    fs.rmSync(path.join(this.dir, FINISHED_NAME), { force: true });
  }

  /** Every ckpt-NNNN subdirectory, oldest first, with its status (sizes checked; data too when verifyData). */
  list(opts: { verifyData?: boolean; lockHeld?: boolean } = {}): CheckpointEntry[] {
    const names = fs
      .readdirSync(this.dir)
      .map((n) => ({ n, m: CKPT_RE.exec(n) }))
      .filter((x): x is { n: string; m: RegExpExecArray } => x.m !== null && isDir(path.join(this.dir, x.n)))
      .map(({ n, m }) => ({ name: n, seq: Number(m[1]) }))
      .sort((a, b) => a.seq - b.seq);
    const holder = opts.lockHeld ? null : this.checkpointLockHolder();
    const out: CheckpointEntry[] = [];
    const byName = new Map<string, CheckpointEntry>();
    for (const { name, seq } of names) {
      const p = path.join(this.dir, name);
      const e: CheckpointEntry = { name, seq, path: p, status: 'complete', bytes: dirBytes(p), parent: null, tracker: null };
      try {
        const m = readImage(p, { verifyData: !!opts.verifyData });
        e.manifest = m;
        e.createdAt = m.createdAt;
        e.parent = parentName(m);
        e.tracker = trackerOf(m);
      } catch (err) {
        const code = (err as CrestError).code;
        e.status = code === 'IMAGE_INCOMPLETE' || code === 'IMAGE_NOT_AN_IMAGE' ? 'incomplete' : 'damaged';
        e.problem = (err as Error).message;
        try {
          e.createdAt = fs.statSync(p).mtime.toISOString();
        } catch {
          /* gone meanwhile */
        }
      }
      out.push(e);
      byName.set(name, e);
    }
    // A checkpoint is only as good as the chain it needs (oldest first, so parents are settled).
    for (const e of out) {
      if (e.status !== 'complete' || e.parent === null) continue;
      const p = byName.get(e.parent);
      if (!p) {
        e.status = 'damaged';
        e.problem = `its parent ${e.parent} is missing`;
      } else if (p.status !== 'complete') {
        e.status = 'damaged';
        e.problem = `its parent ${e.parent} is ${p.status}${p.problem ? ` (${p.problem})` : ''}`;
      } else if (p.manifest && e.manifest && !parentMatches(e.manifest, p.manifest)) {
        e.status = 'damaged';
        e.problem = `its parent ${e.parent} is not the checkpoint it was taken on (replaced since)`;
      }
    }
    // The one the holder of the checkpoint lock says it writes is in progress, not interrupted.
    if (holder) {
      const e = byName.get(String(holder.checkpoint));
      if (e && e.status === 'incomplete') e.status = 'in-progress';
    }
    return out;
  }

  /** The number the next checkpoint gets: above every existing one, finished or not. */
  nextSeq(): number {
    let max = 0;
    for (const n of fs.readdirSync(this.dir)) {
      const m = CKPT_RE.exec(n);
      if (m) max = Math.max(max, Number(m[1]));
    }
    return max + 1;
  }

  /** Appends one event to D/events.jsonl (best effort: a full disk must not stop the job). */
  event(kind: string, fields: Record<string, unknown> = {}): void {
    try {
      fs.appendFileSync(path.join(this.dir, EVENTS_NAME), JSON.stringify({ time: new Date().toISOString(), event: kind, ...fields }) + '\n', { mode: 0o600 });
    } catch {
      /* best effort */
    }
  }

  /** How the job ended on its own, if it did. */
  finished(): FinishedRecord | null {
    try {
      return JSON.parse(fs.readFileSync(path.join(this.dir, FINISHED_NAME), 'utf8')) as FinishedRecord;
    } catch {
      return null;
    }
  }

  markFinished(rec: FinishedRecord): void {
    writeJsonAtomic(path.join(this.dir, FINISHED_NAME), rec);
  }

  /**
   * Takes run.lock for this process's lifetime, or refuses naming who holds
   * it. A few tries: `crest ls` probes the lock for a moment now and then.
   */
  async lockRun(info: Record<string, unknown>): Promise<DirLock> {
    let l: DirLock | Record<string, unknown> | null = null;
    for (let i = 0; i < 10; i++) {
      l = DirLock.try(path.join(this.dir, RUN_LOCK), info);
      if (l instanceof DirLock) return l;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new CrestError(
      'CKPT_DIR_BUSY',
      `${this.dir} is in use by another crest run${describeHolder(l)}; two runs on one checkpoint directory would resume the same job twice: wait for it to end or use another directory`,
    );
  }

  /** Who holds run.lock, or null when nobody does. */
  runLockHolder(): Record<string, unknown> | null {
    return DirLock.holder(path.join(this.dir, RUN_LOCK));
  }

  /** Who holds checkpoint.lock, or null. */
  checkpointLockHolder(): Record<string, unknown> | null {
    return DirLock.holder(path.join(this.dir, CKPT_LOCK));
  }

  /** Takes checkpoint.lock, waiting up to waitMs for whoever holds it; refuses after that. */
  async lockCheckpoint(info: Record<string, unknown>, waitMs: number): Promise<DirLock> {
    const end = Date.now() + waitMs;
    for (;;) {
      const l = DirLock.try(path.join(this.dir, CKPT_LOCK), info);
      if (l instanceof DirLock) return l;
      if (Date.now() >= end) {
        throw new CrestError('CHECKPOINT_BUSY', `another checkpoint of ${this.dir} is being written${describeHolder(l)}; try again when it is done`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

function readMarker(p: string): DirMarker {
  let m: DirMarker;
  try {
    m = JSON.parse(fs.readFileSync(p, 'utf8')) as DirMarker;
  } catch (e) {
    throw new CrestError('CKPT_DIR_INVALID', `${p} is damaged (${(e as Error).message}); it is not a checkpoint directory crest can use`, { cause: e });
  }
  if (m?.magic !== MARKER_MAGIC || !Array.isArray(m.command) || !m.command.every((a) => typeof a === 'string')) {
    throw new CrestError('CKPT_DIR_INVALID', `${p} is not crest's (no "magic": "${MARKER_MAGIC}" and command)`);
  }
  if (m.version !== 1) {
    throw new CrestError('CKPT_DIR_INVALID', `${p} has version ${JSON.stringify(m.version)}; this crest knows checkpoint directories of version 1 (upgrade crest)`);
  }
  return m;
}

function describeHolder(h: Record<string, unknown> | null): string {
  if (!h) return '';
  const parts: string[] = [];
  if (typeof h.pid === 'number') parts.push(`pid ${h.pid}`);
  if (typeof h.job === 'string') parts.push(`job ${h.job}`);
  if (typeof h.since === 'string') parts.push(`since ${h.since}`);
  return parts.length ? ` (${parts.join(', ')})` : '';
}

/** Sum of the sizes of the regular files directly in `dir`. */
function dirBytes(dir: string): number {
  let n = 0;
  try {
    for (const f of fs.readdirSync(dir)) {
      try {
        const st = fs.lstatSync(path.join(dir, f));
        if (st.isFile()) n += st.size;
      } catch {
        /* gone */
      }
    }
  } catch {
    /* gone */
  }
  return n;
}

/** The name of the checkpoint an image is incremental on (its `parent.dir` is ../ckpt-NNNN), or null. */
export function parentName(m: Manifest): string | null {
  const p = (m as { parent?: { dir: string } }).parent;
  if (!p) return null;
  return path.basename(p.dir);
}

/** The parent found is the one the child was taken on (same manifest checksum). */
function parentMatches(child: Manifest, parent: Manifest): boolean {
  const p = (child as { parent?: { checksum: string } }).parent;
  return !p || p.checksum === parent.checksum;
}

/** A held flock(2) lock on a file; released by release() or by the holder's death. */
export class DirLock {
  private constructor(
    private fd: number | null,
    readonly path: string,
  ) {}

  /** Takes the lock without waiting; when it is held, returns what the holder wrote (or null). */
  static try(p: string, info: Record<string, unknown>): DirLock | Record<string, unknown> | null {
    const fd = fs.openSync(p, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600);
    try {
      native().flock(fd, LOCK_EX | LOCK_NB);
    } catch (e) {
      fs.closeSync(fd);
      if ((e as { errnoName?: string }).errnoName === 'EAGAIN' || (e as { errnoName?: string }).errnoName === 'EWOULDBLOCK') {
        return DirLock.holder(p) ?? {};
      }
      throw e;
    }
    try {
      fs.ftruncateSync(fd, 0);
      fs.writeSync(fd, JSON.stringify({ pid: process.pid, since: new Date().toISOString(), ...info }) + '\n', 0);
    } catch {
      /* the lock is what counts; the note is for messages */
    }
    return new DirLock(fd, p);
  }

  /** What the holder of the lock at `p` wrote, or null when nobody holds it. */
  static holder(p: string): Record<string, unknown> | null {
    let fd: number;
    try {
      fd = fs.openSync(p, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    } catch {
      return null;
    }
    try {
      try {
        native().flock(fd, LOCK_EX | LOCK_NB);
        return null; // nobody holds it (ours is released with the fd)
      } catch {
        /* held */
      }
      try {
        return JSON.parse(fs.readFileSync(p, 'utf8')) as Record<string, unknown>;
      } catch {
        return {};
      }
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Replaces the note in the lock file (what the holder is doing now). */
  note(info: Record<string, unknown>): void {
    if (this.fd === null) return;
    try {
      fs.ftruncateSync(this.fd, 0);
      fs.writeSync(this.fd, JSON.stringify({ pid: process.pid, since: new Date().toISOString(), ...info }) + '\n', 0);
    } catch {
      /* the note is for messages */
    }
  }

  release(): void {
    if (this.fd === null) return;
    try {
      fs.closeSync(this.fd);
    } catch {
      /* closing releases the lock; nothing else to do */
    }
    this.fd = null;
  }
}

/** What a checkpoint directory's newest usable checkpoint is, and what was passed over on the way. */
export interface ResumePoint {
  entry: CheckpointEntry | null;
  /** Newer checkpoints that could not be used, with why (newest first). */
  skipped: CheckpointEntry[];
}

/**
 * The newest checkpoint that reads back complete, every byte checked, with
 * the whole chain of parents it needs. Incomplete ones (interrupted) are
 * passed over silently-ish (reported in `skipped`), damaged ones too.
 */
export function newestUsable(cd: CheckpointDir): ResumePoint {
  const all = cd.list({ verifyData: false });
  const skipped: CheckpointEntry[] = [];
  const byName = new Map(all.map((e) => [e.name, e]));
  for (const e of [...all].reverse()) {
    if (e.status !== 'complete') {
      skipped.push(e);
      continue;
    }
    // Sizes were checked for all; now every byte of this one and its chain.
    let bad: string | null = null;
    for (let cur: CheckpointEntry | undefined = e; cur && !bad; cur = cur.parent ? byName.get(cur.parent) : undefined) {
      try {
        readImage(cur.path, { verifyData: true });
      } catch (err) {
        bad = cur === e ? (err as Error).message : `its parent ${cur.name} is damaged: ${(err as Error).message}`;
      }
    }
    if (bad) {
      skipped.push({ ...e, status: 'damaged', problem: bad });
      continue;
    }
    return { entry: e, skipped };
  }
  return { entry: null, skipped };
}

/** What gc removed (or would remove) and why, and what it kept. */
export interface GcResult {
  kept: string[];
  removed: { name: string; why: string; bytes: number }[];
}

/**
 * Keeps the newest `keep` complete checkpoints and every parent they need;
 * removes the rest (older complete ones, damaged and interrupted ones).
 * Must be called with the checkpoint lock held. Newest first, and each
 * image's manifest goes first, so that a crash half-way leaves incomplete
 * directories, never a complete-looking one missing its files or a kept one
 * missing its parent.
 */
export function collectGarbage(cd: CheckpointDir, keep: number, opts: { dryRun?: boolean; lockHeld?: boolean } = {}): GcResult {
  if (!Number.isInteger(keep) || keep < 1) throw new CrestError('USAGE', `--keep must be a whole number of checkpoints, at least 1 (got ${keep})`);
  const all = cd.list({ verifyData: false, lockHeld: opts.lockHeld });
  const byName = new Map(all.map((e) => [e.name, e]));
  const kept = new Set<string>();
  const complete = all.filter((e) => e.status === 'complete').reverse();
  for (const e of complete.slice(0, keep)) {
    for (let cur: CheckpointEntry | undefined = e; cur && !kept.has(cur.name); cur = cur.parent ? byName.get(cur.parent) : undefined) {
      kept.add(cur.name);
    }
  }
  const removed: GcResult['removed'] = [];
  for (const e of [...all].reverse()) {
    if (kept.has(e.name) || e.status === 'in-progress') continue;
    const why = e.status === 'complete' ? `older than the ${keep} kept` : `${e.status}${e.problem ? `: ${e.problem}` : ''}`;
    removed.push({ name: e.name, why, bytes: e.bytes });
    if (!opts.dryRun) removeCheckpoint(e.path);
  }
  return { kept: all.filter((e) => kept.has(e.name)).map((e) => e.name), removed };
}

/** Removes one checkpoint directory: the manifest first (from then on it is incomplete), then the rest. */
export function removeCheckpoint(p: string): void {
  fs.rmSync(path.join(p, MANIFEST_NAME), { force: true });
  try {
    const fd = fs.openSync(p, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
  } catch {
    /* best effort */
  }
  fs.rmSync(p, { recursive: true, force: true });
}
