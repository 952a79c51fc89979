// Records of running crest jobs, so that `crest dump --job NAME` can find a
// job, and so that `crest run` can tell "checkpointed" from "killed" when its
// job ends. One JSON file per job in the user's runtime directory.
import { readFileSync, readdirSync, realpathSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { helperPath, runtimeDir } from '../paths.js';
import { readChildren, readStat, readStatus } from '../proc/index.js';
import { CrestError } from '../sys/errors.js';

/** One running job. PIDs are as seen from the host. */
export interface JobRecord {
  name: string;
  /** The crest process supervising the job (crest run / crest restore), or 0 once detached. */
  supervisorPid: number;
  /** The helper's outer process (parent of the job's init). */
  helperPid: number;
  /** The job's init: PID 1 of its pid namespace. */
  initPid: number;
  /** The init's start time (clock ticks, /proc/PID/stat field 22), to spot a reused PID. */
  initStart: number;
  createdAt: string;
  /** Set by `crest dump` right before it stops the job after a complete checkpoint. */
  checkpointed?: { dir: string; at: string };
  /** crest run --checkpoint-dir: where `crest checkpoint --job` writes, and how many it keeps. */
  checkpointDir?: string;
  checkpointKeep?: number;
  checkpointFullEvery?: number;
  checkpointCompress?: boolean;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function checkJobName(name: string): void {
  if (!NAME_RE.test(name)) {
    throw new CrestError('BAD_JOB_NAME', `job name ${JSON.stringify(name)} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  }
}

function recordPath(name: string): string {
  return join(runtimeDir(), 'jobs', `${name}.json`);
}

function alive(rec: JobRecord): boolean {
  try {
    return readStat(rec.initPid).starttime === rec.initStart;
  } catch {
    return false;
  }
}

export function saveJob(rec: JobRecord): void {
  const p = recordPath(rec.name);
  writeFileSync(p + '.tmp', JSON.stringify(rec, null, 1) + '\n', { mode: 0o600 });
  renameSync(p + '.tmp', p);
}

/** The record of job `name`, or null. Records of jobs that ended are ignored. */
export function loadJob(name: string, opts: { includeEnded?: boolean } = {}): JobRecord | null {
  checkJobName(name);
  let rec: JobRecord;
  try {
    rec = JSON.parse(readFileSync(recordPath(name), 'utf8')) as JobRecord;
  } catch {
    return null;
  }
  if (!opts.includeEnded && !alive(rec)) return null;
  return rec;
}

export function removeJob(name: string): void {
  rmSync(recordPath(name), { force: true });
  // Its page trackers' state (kinds/uffdwp.ts) goes with it.
  rmSync(join(runtimeDir(), 'jobs', `${name}.uffd-track`), { force: true });
}

/** Every live job record. */
export function listJobs(): JobRecord[] {
  const dir = join(runtimeDir(), 'jobs');
  const out: JobRecord[] = [];
  for (const f of readdirSync(dir)) {
    if (!f.endsWith('.json')) continue;
    const rec = loadJob(f.slice(0, -5));
    if (rec) out.push(rec);
  }
  return out;
}

/** A name no live job has: base, base-2, base-3 ... */
export function freeJobName(base: string): string {
  for (let i = 1; ; i++) {
    const name = i === 1 ? base : `${base}-${i}`;
    if (!loadJob(name)) return name;
  }
}

/** The job a process belongs to. */
export interface JobOfPid {
  initPid: number;
  /** The job's processes directly under init (host PIDs). */
  members: number[];
  record: JobRecord | null;
}

let helperReal: string | undefined;
function isCrestInit(pid: number): boolean {
  try {
    helperReal ??= realpathSync(helperPath());
    return realpathSync(`/proc/${pid}/exe`) === helperReal;
  } catch {
    return false;
  }
}

/**
 * Finds the crest job that `pid` (a host PID) belongs to: walks up the parent
 * chain to the PID 1 of the process's pid namespace and checks that it is
 * crest's init. null when the process is not in a crest job.
 */
export function jobOfPid(pid: number): JobOfPid | null {
  let cur = pid;
  const depth = readStatus(pid).nspid.length;
  if (depth < 2) return null;
  for (let guard = 0; guard < 4096; guard++) {
    const st = readStatus(cur);
    if (st.nspid.length !== depth) return null;
    if (st.nspid[st.nspid.length - 1] === 1) {
      if (!isCrestInit(cur)) return null;
      const rec = listJobs().find((r) => r.initPid === cur) ?? null;
      return { initPid: cur, members: readChildren(cur), record: rec };
    }
    cur = st.ppid;
    if (cur <= 1) return null;
  }
  return null;
}
