// Helpers of the end-to-end tests: where things are, running the crest CLI,
// starting jobs of the targets in test/targets (their ready/go protocol is in
// test/targets/common.h), full checkpoint/restore round trips, and cleanup
// that never leaves a process behind, whatever a test did.
//
// Every process a test starts through here is tracked: spawned children
// (crest run/dump/restore, targets) in their own process group, and every
// work or image directory. cleanupProcesses() kills the tracked groups and
// any process whose command line names a tracked directory (a restored job
// belongs to no spawned child), by pid; registerCleanup() hooks it to
// node:test's afterEach/after.
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, afterEach } from 'node:test';
import { fileURLToPath } from 'node:url';

// ---------------------------------------------------------------- places

function findRepoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pj = path.join(dir, 'package.json');
    if (fs.existsSync(pj)) {
      try {
        if ((JSON.parse(fs.readFileSync(pj, 'utf8')) as { name?: string }).name === 'crest') return dir;
      } catch {
        // not ours: keep going up
      }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`no package.json of crest above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}

/** The repository (the directory of crest's package.json). */
export const REPO_ROOT = findRepoRoot();
/** The crest command: run with `node CREST_CLI ...`. */
export const CREST_CLI = path.join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');
/** Where `make -C test/targets` puts the target programs. */
export const TARGETS_BIN = path.join(REPO_ROOT, 'test', 'targets', 'bin');
export const SCRIPTS_DIR = path.join(REPO_ROOT, 'test', 'fixtures', 'scripts');
/** A python3 every user can run (root's may be a pyenv shim). */
export const PYTHON = ['/usr/bin/python3', '/usr/local/bin/python3'].find((p) => fs.existsSync(p)) ?? 'python3';
export const IS_ROOT = process.geteuid?.() === 0;
export const MY_UID = process.geteuid?.() ?? -1;

/** The C targets (one kind of state each), built into TARGETS_BIN. */
export const C_TARGETS = [
  'counter',
  'static_counter',
  'mmap_file',
  'layout',
  'fpu',
  'signals',
  'vdso_time',
  'files',
  'itimer',
  'itimer_pending',
  'posix_timers',
  'threads2',
  'forker',
  'tree_mem',
  'sockfd',
  'threads_locks',
  'threads_blocked',
  'threads_churn',
  'threads_mem',
  'threads_forker',
  'threads_signals',
  'threads_attrs',
  'tree_session',
  'tree_orphan',
  'tree_wait',
  'tree_exitsig',
] as const;
/** Every target: the C ones and the Python scripts (test/fixtures/scripts/NAME.py). */
export const TARGETS = [...C_TARGETS, 'py_loop', 'py_threads'] as const;
export type TargetName = (typeof TARGETS)[number];

/** The argv of `target` working in `workDir` (extra arguments after the directory). */
export function targetArgv(target: TargetName, workDir: string, extra: readonly string[] = []): string[] {
  if (target.startsWith('py_')) return [PYTHON, path.join(SCRIPTS_DIR, `${target}.py`), workDir, ...extra];
  return [path.join(TARGETS_BIN, target), workDir, ...extra];
}

/** Environment for everything the tests start: no sabotage leaking in from outside. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra };
  if (!('CREST_TEST_SABOTAGE' in extra)) delete env.CREST_TEST_SABOTAGE;
  return env;
}

let seq = 0;
/** A job name unique to this test process and call: t<pid>-<n>-<label>. */
export function uniqueName(label: string): string {
  seq += 1;
  const clean = label.replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 30);
  return `t${process.pid}-${seq}-${clean}`;
}

// ---------------------------------------------------------------- tracking

const trackedChildren = new Set<ChildProcess>();
const trackedDirs = new Set<string>();

/** A fresh directory under the system's temporary directory, removed by cleanupAll(). */
export function tmpWorkDir(label = 'w'): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `crest-test-${label.replace(/[^A-Za-z0-9_-]/g, '-')}-`));
  trackedDirs.add(d);
  return d;
}

/** A fresh, empty image directory (same as tmpWorkDir, named for what it holds). */
export function tmpImageDir(label = 'img'): string {
  return tmpWorkDir(`img-${label}`);
}

// ---------------------------------------------------------------- processes

export interface ExitResult {
  /** Its pid, which is also its process group's id (every process is spawned in its own group). */
  pid: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** True when we killed it because it overran its time. */
  timedOut: boolean;
  durationMs: number;
}

/** A spawned process with its output collected. */
export interface Proc {
  readonly child: ChildProcess;
  readonly pid: number;
  /** Output so far. */
  stdout(): string;
  stderr(): string;
  /** Settles when it has exited and its pipes are closed. */
  readonly exited: Promise<ExitResult>;
  /** Set once exited. */
  result: ExitResult | null;
}

export interface SpawnOptions {
  env?: NodeJS.ProcessEnv;
  /** Kill (SIGKILL, whole group) after this long; the result says timedOut. Default: none. */
  timeoutMs?: number;
  cwd?: string;
}

/** Spawns argv[0] with argv[1..] in its own process group, tracked for cleanup, stdin closed. */
export function spawnTracked(argv: readonly string[], opts: SpawnOptions = {}): Proc {
  const [cmd, ...args] = argv;
  if (cmd === undefined) throw new Error('spawnTracked: empty argv');
  const started = Date.now();
  const child = spawn(cmd, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
    env: opts.env ?? cleanEnv(),
    cwd: opts.cwd,
  });
  trackedChildren.add(child);
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (s: string) => (out += s));
  child.stderr?.setEncoding('utf8').on('data', (s: string) => (err += s));
  let timedOut = false;
  let timer: NodeJS.Timeout | undefined;
  if (opts.timeoutMs !== undefined) {
    timer = setTimeout(() => {
      timedOut = true;
      killGroup(child, 'SIGKILL');
    }, opts.timeoutMs);
  }
  const proc: Proc = {
    child,
    pid: child.pid ?? -1,
    stdout: () => out,
    stderr: () => err,
    result: null,
    exited: new Promise<ExitResult>((resolve) => {
      let spawnError: Error | null = null;

      let settled = false;
      const settle = (code: number | null, signal: NodeJS.Signals | null) => {
        if (settled) return;
        settled = true;
        if (timer) clearTimeout(timer);
        const r: ExitResult = {
          pid: child.pid ?? -1,
          code,
          signal,
          stdout: out,
          stderr: spawnError ? `${err}\n[spawn error: ${spawnError.message}]` : err,
          timedOut,
          durationMs: Date.now() - started,
        };
        proc.result = r;
        resolve(r);
      };
      child.on('close', settle);
      child.on('error', (e) => {
        spawnError = e;
        setTimeout(() => settle(null, null), 200);
      });
      // A process that leaves something behind holding its pipes (crest
      // restore --detach: the job keeps crest restore's stdout/stderr) never
      // closes them: take its exit, after a grace period for the output.
      child.on('exit', (code, signal) => {
        setTimeout(() => settle(code, signal), 1000);
      });
    }),
  };
  return proc;
}

function killGroup(child: ChildProcess, sig: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, sig);
  } catch {
    // group gone
  }
  try {
    process.kill(child.pid, sig);
  } catch {
    // gone
  }
}

/** Options of crest(). */
export interface CrestOptions extends SpawnOptions {}

/** Runs `crest ARGS...` to completion (default timeout 120 s). */
export function crest(args: readonly string[], opts: CrestOptions = {}): Promise<ExitResult> {
  return spawnCrest(args, { timeoutMs: 120_000, ...opts }).exited;
}

/** Starts `crest ARGS...` and returns it running. */
export function spawnCrest(args: readonly string[], opts: CrestOptions = {}): Proc {
  return spawnTracked([process.execPath, CREST_CLI, ...args], opts);
}

/** A one-line account of a result, for assertion messages. */
export function describeResult(what: string, r: ExitResult): string {
  const status = r.timedOut ? 'timed out' : r.signal ? `killed by ${r.signal}` : `exit ${r.code}`;
  const cut = (s: string) => (s.length > 3000 ? `${s.slice(0, 1500)}\n...\n${s.slice(-1500)}` : s);
  return `${what}: ${status} after ${r.durationMs} ms\n--- stdout ---\n${cut(r.stdout)}\n--- stderr ---\n${cut(r.stderr)}`;
}

/** Resolves `p`, or rejects after `ms` naming `what`. */
export async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, t]);
  } finally {
    if (timer) clearTimeout(timer);
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- /proc

/** argv of a process (empty when it is gone or unreadable). */
export function cmdline(pid: number): string[] {
  try {
    const s = fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1');
    const parts = s.split('\0');
    if (parts.length > 0 && parts[parts.length - 1] === '') parts.pop();
    return parts;
  } catch {
    return [];
  }
}

/** State letter of /proc/PID/stat (R, S, D, T, t, Z ...), or null when gone. */
export function procState(pid: number): string | null {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    return s.slice(s.lastIndexOf(')') + 2).split(' ')[0] ?? null;
  } catch {
    return null;
  }
}

function ppidOf(pid: number): number {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    return Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return 0;
  }
}

/** A field of /proc/PID/status ("TracerPid", "Uid" ...), or null. */
export function statusField(pid: number, field: string): string | null {
  try {
    const s = fs.readFileSync(`/proc/${pid}/status`, 'latin1');
    const m = new RegExp(`^${field}:\\s*(.*)$`, 'm').exec(s);
    return m?.[1] ?? null;
  } catch {
    return null;
  }
}

/** TracerPid of a process (0 = not traced), or null when it is gone. */
export function tracerPid(pid: number): number | null {
  const v = statusField(pid, 'TracerPid');
  return v === null ? null : Number(v);
}

/** True while the process exists and is not a zombie. */
export function processAlive(pid: number): boolean {
  const st = procState(pid);
  return st !== null && st !== 'Z' && st !== 'X';
}

/** Waits until `pid` is gone (or a zombie); false on timeout. */
export async function waitGone(pid: number, timeoutMs = 5000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (processAlive(pid)) {
    if (Date.now() > end) return false;
    await sleep(20);
  }
  return true;
}

function allPids(): number[] {
  return fs
    .readdirSync('/proc')
    .filter((n) => /^[0-9]+$/.test(n))
    .map(Number);
}

/** Live processes of process group `pgid` (what a spawned process left behind, even re-parented). */
export function processesInGroup(pgid: number): number[] {
  return allPids().filter((p) => {
    try {
      const s = fs.readFileSync(`/proc/${p}/stat`, 'latin1');
      return Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[2]) === pgid && processAlive(p);
    } catch {
      return false;
    }
  });
}

/** Live processes (ours or not) one of whose arguments contains `needle`. */
export function processesMentioning(needle: string): number[] {
  return allPids().filter((p) => p !== process.pid && processAlive(p) && cmdline(p).some((a) => a.includes(needle)));
}

/**
 * Host pids of live processes whose argv is exactly `argv` (argv[0] compared
 * by basename, since a launcher may exec by path or by name).
 */
export function processesWithArgv(argv: readonly string[]): number[] {
  return allPids().filter((p) => {
    const c = cmdline(p);
    if (c.length !== argv.length || c.length === 0) return false;
    if (path.basename(c[0] as string) !== path.basename(argv[0] as string)) return false;
    for (let i = 1; i < c.length; i++) if (c[i] !== argv[i]) return false;
    return processAlive(p);
  });
}

/** Our own pid and its ancestors: never killed by cleanup. */
function ourAncestry(): Set<number> {
  const s = new Set<number>();
  for (let p = process.pid; p > 1 && !s.has(p); p = ppidOf(p)) s.add(p);
  s.add(1);
  return s;
}

// ---------------------------------------------------------------- files

/** Waits for `file` to exist; rejects on timeout, or early when `orExit` exits first. */
export async function waitForFile(file: string, timeoutMs: number, orExit?: Proc): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (fs.existsSync(file)) return;
    if (orExit?.result) {
      throw new Error(`${file} never appeared: ${describeResult('the process exited first', orExit.result)}`);
    }
    if (Date.now() > end) {
      const extra = orExit ? `\n--- stdout so far ---\n${orExit.stdout()}\n--- stderr so far ---\n${orExit.stderr()}` : '';
      throw new Error(`${file} did not appear within ${timeoutMs} ms${extra}`);
    }
    await sleep(10);
  }
}

/** Lets the target in `workDir` go on past its wait loop. */
export function createGo(workDir: string): void {
  fs.writeFileSync(path.join(workDir, 'go'), '');
}

/** The pid a target wrote to W/ready (its pid as it sees it: 2 in a crest job). */
export function readyPid(workDir: string): number {
  return Number(fs.readFileSync(path.join(workDir, 'ready'), 'utf8').trim());
}

/** Whether any process of the target in `workDir` reached "go" (W/resumed). */
export function resumed(workDir: string): boolean {
  return fs.existsSync(path.join(workDir, 'resumed'));
}

// ---------------------------------------------------------------- targets without crest

/** Runs a target directly (no crest): waits for ready, creates go at once, waits for its exit. */
export async function runTargetDirect(
  target: TargetName,
  opts: { extra?: string[]; env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<ExitResult & { workDir: string }> {
  const workDir = tmpWorkDir(target);
  const p = spawnTracked(targetArgv(target, workDir, opts.extra), {
    env: cleanEnv(opts.env),
    timeoutMs: opts.timeoutMs ?? 60_000,
  });
  await waitForFile(path.join(workDir, 'ready'), opts.timeoutMs ?? 60_000, p);
  createGo(workDir);
  const r = await p.exited;
  return { ...r, workDir };
}

// ---------------------------------------------------------------- jobs

/** A target running under `crest run`. */
export interface Job {
  name: string;
  target: TargetName;
  workDir: string;
  /** The argv of the target itself (what /proc/PID/cmdline shows, before and after restore). */
  argv: string[];
  /** The `crest run` process. */
  run: Proc;
  /** The target's pid on the host, once ready. */
  hostPid: number;
  /** The target's own getpid() (from W/ready). */
  nsPid: number;
}

export interface StartJobOptions {
  /** Arguments after the work directory (e.g. the counter's buffer size in MiB). */
  extra?: string[];
  name?: string;
  workDir?: string;
  env?: Record<string, string>;
  /** Time for the job to become ready (default 60 s). */
  readyTimeoutMs?: number;
}

/** Host pids of the processes of the target of `job` (a forked child has the same argv). */
export function jobTargetPids(job: Pick<Job, 'argv'>): number[] {
  return processesWithArgv(job.argv);
}

/** The pids of `pids` whose parent is not among them (the target, not its forked children). */
export function topmost(pids: readonly number[]): number[] {
  const set = new Set(pids);
  return pids.filter((p) => !set.has(ppidOf(p)));
}

/**
 * The pids of `pids` whose parent is not among them, and when `nsPid` is
 * given, only the one that is `nsPid` in its job (orphans of a tree have the
 * job's init as parent too).
 */
function topOfJob(pids: readonly number[], nsPid?: number): number[] {
  const top = topmost(pids);
  if (nsPid === undefined || top.length <= 1) return top;
  return top.filter((p) => statusField(p, 'NSpid')?.split(/\s+/).pop() === String(nsPid));
}

/** Host pid of the (topmost) target process of `job`, waiting up to `timeoutMs` for it to appear. */
export async function waitJobPid(job: Pick<Job, 'argv'> & { nsPid?: number }, timeoutMs = 10_000): Promise<number> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const pids = topOfJob(processesWithArgv(job.argv), job.nsPid);
    if (pids.length === 1) return pids[0] as number;
    if (Date.now() > end) assert.fail(`expected one process running ${job.argv.join(' ')}, found ${JSON.stringify(pids)}`);
    await sleep(20);
  }
}

/**
 * Starts `crest run --name <unique> -- target W [extra]` and waits until the
 * target has written W/ready; finds its host pid.
 */
export async function startJob(target: TargetName, opts: StartJobOptions = {}): Promise<Job> {
  const name = opts.name ?? uniqueName(target);
  const workDir = opts.workDir ?? tmpWorkDir(target);
  const argv = targetArgv(target, workDir, opts.extra);
  const run = spawnCrest(['run', '--name', name, '--', ...argv], { env: cleanEnv(opts.env) });
  await waitForFile(path.join(workDir, 'ready'), opts.readyTimeoutMs ?? 60_000, run);
  // W/ready is renamed into place: its content is complete.
  const nsPid = readyPid(workDir);
  let hostPids: number[] = [];
  const end = Date.now() + 5000;
  while ((hostPids = topOfJob(processesWithArgv(argv), nsPid)).length === 0 && Date.now() < end) await sleep(10);
  assert.equal(hostPids.length, 1, `expected one host process running ${argv.join(' ')}, found ${JSON.stringify(hostPids)}`);
  return { name, target, workDir, argv, run, hostPid: hostPids[0] as number, nsPid };
}

export interface DumpOptions {
  job?: string;
  pid?: number;
  dir: string;
  leaveRunning?: boolean;
  force?: boolean;
  timeoutMs?: number;
}

/** `crest dump (--job N | --pid P) -D DIR [--leave-running] [--force]`. */
export function dumpArgs(o: DumpOptions): string[] {
  const a = ['dump'];
  if (o.job !== undefined) a.push('--job', o.job);
  if (o.pid !== undefined) a.push('--pid', String(o.pid));
  a.push('-D', o.dir);
  if (o.leaveRunning) a.push('--leave-running');
  if (o.force) a.push('--force');
  return a;
}

export function dump(o: DumpOptions): Promise<ExitResult> {
  return crest(dumpArgs(o), { timeoutMs: o.timeoutMs ?? 120_000 });
}

/** `crest restore -D DIR [--detach]`, in the foreground unless detach. */
export function restore(
  dir: string,
  opts: { detach?: boolean; timeoutMs?: number; extra?: string[]; env?: Record<string, string> } = {},
): Promise<ExitResult> {
  const a = ['restore', '-D', dir, ...(opts.detach ? ['--detach'] : []), ...(opts.extra ?? [])];
  return crest(a, { timeoutMs: opts.timeoutMs ?? 120_000, ...(opts.env ? { env: cleanEnv(opts.env) } : {}) });
}

/** Asserts a crest command succeeded (exit 0), showing its output otherwise. */
export function assertOk(r: ExitResult, what: string): void {
  assert.ok(!r.timedOut && r.code === 0, describeResult(what, r));
}

/** Asserts a crest command failed cleanly: exit 1 (or another non-zero code), "crest: " message. */
export function assertRefused(r: ExitResult, what: string, message?: RegExp): void {
  assert.ok(!r.timedOut, describeResult(`${what} (expected a refusal)`, r));
  assert.ok(r.code !== null && r.code !== 0, describeResult(`${what} (expected a non-zero exit)`, r));
  assert.match(r.stderr, /(^|\n)crest: /, describeResult(`${what} (expected a "crest: " message)`, r));
  if (message) assert.match(r.stderr, message, describeResult(`${what} (message)`, r));
}

/** Asserts a target's run ended in PASS (exit 0, "PASS <target>" on stdout). */
export function assertPass(r: ExitResult, target: TargetName, what: string): void {
  assert.ok(!r.timedOut && r.code === 0 && r.stdout.includes(`PASS ${target}`), describeResult(what, r));
  assert.ok(!r.stdout.includes('FAIL'), describeResult(what, r));
}

/** Asserts `p` (e.g. a job's `crest run`) has not exited. */
export function assertStillRunning(p: Proc, what: string): void {
  if (p.result) assert.fail(describeResult(`${what}: it exited`, p.result));
}

/** Waits for `crest run` of `job` to exit after a dump; asserts it says "checkpointed" (75). */
export async function expectCheckpointed(job: Job, timeoutMs = 30_000): Promise<ExitResult> {
  const r = await withTimeout(job.run.exited, timeoutMs, `crest run of ${job.name} after its dump`);
  assert.equal(r.code, 75, describeResult(`crest run of ${job.name} after the dump (expected exit 75)`, r));
  return r;
}

/** Asserts the (pre-checkpoint) host process of `job` is gone. */
export async function expectKilled(job: Job): Promise<void> {
  assert.ok(await waitGone(job.hostPid, 10_000), `job ${job.name}: host pid ${job.hostPid} still exists after the dump`);
}

/** Asserts the host process `pid` runs, untraced and not stopped. */
export async function expectRunningUntraced(pid: number, what: string, settleMs = 5000): Promise<void> {
  const end = Date.now() + settleMs;
  for (;;) {
    const alive = processAlive(pid);
    const tracer = tracerPid(pid);
    const st = procState(pid);
    const ok = alive && tracer === 0 && st !== 'T' && st !== 't';
    if (ok) return;
    if (!alive) assert.fail(`${what}: pid ${pid} is gone`);
    if (Date.now() > end) assert.fail(`${what}: pid ${pid} is traced or stopped: TracerPid ${tracer}, state ${st}`);
    await sleep(20);
  }
}

/** A target's check keys (`target --sabotage-list`). */
export function sabotageKeys(t: TargetName): string[] {
  const [cmd, ...args] = targetArgv(t, '--sabotage-list');
  return execFileSync(cmd as string, args, { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.length > 0);
}

/** The target passes alone, and each of its checks fails when its state is corrupted (CREST_TEST_SABOTAGE). */
export async function checksCanFail(t: TargetName, extra: string[] = []): Promise<void> {
  const ok = await runTargetDirect(t, { extra });
  assert.ok(ok.code === 0 && ok.stdout.trim() === `PASS ${t}`, describeResult(`${t} without crest`, ok));
  for (const key of sabotageKeys(t)) {
    const r = await runTargetDirect(t, { extra, env: { CREST_TEST_SABOTAGE: key } });
    const what = `${t} with CREST_TEST_SABOTAGE=${key}`;
    assert.equal(r.code, 1, describeResult(what, r));
    assert.ok(r.stdout.startsWith(`FAIL ${t}: `) && r.stdout.includes(`${key}: `), describeResult(what, r));
  }
}

/**
 * Dumping `job` is refused with `message`, naming the job's first process;
 * no image is left, every process of the target runs on untraced, and,
 * let go, the job finishes with PASS.
 */
export async function checkRefused(job: Job, message: RegExp): Promise<void> {
  const dir = tmpImageDir(`${job.target}-refused`);
  const r = await dump({ job: job.name, dir });
  assertRefused(r, `dump of ${job.target}`, message);
  assert.match(r.stderr, new RegExp(`pid ${job.hostPid}\\b`), describeResult('the refusal names the pid', r));
  assert.ok(!fs.existsSync(path.join(dir, 'manifest.json')), 'a refused dump left a manifest');
  assertStillRunning(job.run, `${job.target} after the refused dump`);
  for (const pid of jobTargetPids(job)) await expectRunningUntraced(pid, `${job.target} after the refused dump`);
  assert.ok(!resumed(job.workDir), 'the job went past its wait');
  createGo(job.workDir);
  const fin = await withTimeout(job.run.exited, 60_000, `crest run of ${job.name}`);
  assertPass(fin, job.target, `${job.target} let go after the refused dump`);
}

export interface RoundTripOptions extends StartJobOptions {
  /** Dump by --pid (the host pid) instead of --job. */
  byPid?: boolean;
  restoreTimeoutMs?: number;
  /** Extra environment of `crest restore` (CREST_FAULT ...). */
  restoreEnv?: Record<string, string>;
}

export interface RoundTrip {
  job: Job;
  imageDir: string;
  dump: ExitResult;
  run: ExitResult;
  restore: ExitResult;
}

/**
 * The whole cycle: start the job, wait for ready, dump it (killing it) into a
 * fresh directory, check `crest run` exited 75 and the process is gone,
 * create go, restore in the foreground; returns every result (the restore's
 * is not judged here).
 */
export async function roundTrip(target: TargetName, opts: RoundTripOptions = {}): Promise<RoundTrip> {
  const job = await startJob(target, opts);
  const imageDir = tmpImageDir(target);
  const d = await dump(opts.byPid ? { pid: job.hostPid, dir: imageDir } : { job: job.name, dir: imageDir });
  assertOk(d, `crest dump of ${job.name}`);
  const run = await expectCheckpointed(job);
  await expectKilled(job);
  assert.ok(!resumed(job.workDir), `${target} saw go before it was created`);
  createGo(job.workDir);
  const r = await restore(imageDir, { timeoutMs: opts.restoreTimeoutMs ?? 120_000, ...(opts.restoreEnv ? { env: opts.restoreEnv } : {}) });
  return { job, imageDir, dump: d, run, restore: r };
}

// ---------------------------------------------------------------- cleanup

/**
 * Kills every process the tests started that still runs: tracked children's
 * process groups, then any process whose argv names a tracked directory
 * (targets, restored or not, and crest processes working on them), then
 * their parents that are crest's (a job's init, a helper), never ourselves or
 * our ancestors. Waits (up to 5 s) for them to go.
 */
export async function cleanupProcesses(): Promise<void> {
  const victims = new Set<number>();
  for (const c of trackedChildren) {
    if (c.exitCode === null && c.signalCode === null) killGroup(c, 'SIGKILL');
    if (c.pid !== undefined) victims.add(c.pid);
  }
  trackedChildren.clear();
  const keep = ourAncestry();
  const dirs = [...trackedDirs];
  if (dirs.length > 0) {
    for (const pid of allPids()) {
      if (keep.has(pid)) continue;
      const argv = cmdline(pid);
      if (!argv.some((a) => dirs.some((d) => a.includes(d)))) continue;
      victims.add(pid);
      // The parent of a target is crest's (a job's init): it goes too, when it is crest's.
      const parent = ppidOf(pid);
      const pargv = parent > 1 && !keep.has(parent) ? cmdline(parent) : [];
      if (pargv.some((a) => /crest/.test(a))) victims.add(parent);
    }
  }
  for (const pid of victims) {
    if (keep.has(pid)) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  for (const pid of victims) await waitGone(pid, 5000);
}

/** Kills what is left and removes the tracked directories (kept when CREST_TEST_KEEP is set). */
export async function cleanupAll(): Promise<void> {
  await cleanupProcesses();
  if (!process.env.CREST_TEST_KEEP) {
    for (const d of trackedDirs) fs.rmSync(d, { recursive: true, force: true });
  }
  trackedDirs.clear();
}

/** Hooks cleanup to the calling test file: processes after each test, everything after the file. */
export function registerCleanup(): void {
  afterEach(async () => {
    await cleanupProcesses();
  });
  after(async () => {
    await cleanupAll();
  });
}

// ---------------------------------------------------------------- images

/** The manifest of an image, parsed (no validation). */
export function readManifest(imageDir: string): Record<string, unknown> {
  return JSON.parse(fs.readFileSync(path.join(imageDir, 'manifest.json'), 'utf8')) as Record<string, unknown>;
}

/** The data files an image lists (its manifest's `files`), name -> size. */
export function imageDataFiles(imageDir: string): Map<string, number> {
  const m = readManifest(imageDir);
  const files = (m.files ?? {}) as Record<string, { size: number }>;
  return new Map(Object.entries(files).map(([k, v]) => [k, v.size]));
}

/** The first process's pages file of an image (the biggest data file when the manifest does not say). */
export function pagesFile(imageDir: string): string {
  const m = readManifest(imageDir);
  const procs = m.processes as Array<{ pagesFile?: string }> | undefined;
  const named = procs?.[0]?.pagesFile;
  if (named) return path.join(imageDir, named);
  const biggest = [...imageDataFiles(imageDir).entries()].sort((a, b) => b[1] - a[1])[0];
  assert.ok(biggest, `image ${imageDir} lists no data file`);
  return path.join(imageDir, biggest[0]);
}

/** Bytes written so far into an image directory (0 when it does not exist). */
export function imageBytes(dir: string): number {
  try {
    return fs.readdirSync(dir).reduce((a, f) => a + fs.statSync(path.join(dir, f)).size, 0);
  } catch {
    return 0;
  }
}

/** Damages `file` by one bit pattern in one byte past its middle (a checksum must catch it). */
export function flipByte(file: string): void {
  const fd = fs.openSync(file, 'r+');
  const pos = Math.floor(fs.fstatSync(fd).size / 2) + 17;
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, pos);
  b[0] = (b[0] as number) ^ 0x5a;
  fs.writeSync(fd, b, 0, 1, pos);
  fs.closeSync(fd);
}

/** Copies an image directory (flat) into a fresh tracked directory. */
export function copyImage(imageDir: string, label: string): string {
  const dst = tmpImageDir(label);
  for (const f of fs.readdirSync(imageDir)) fs.copyFileSync(path.join(imageDir, f), path.join(dst, f));
  return dst;
}
