// The PID modes for processes that did not start under `crest run`: a target
// spawned by the test itself (detached, as the same user) is dumped by its
// PID and restored with the same PID and thread IDs in the host's pid
// namespace - by crest-pidhelper holding CAP_CHECKPOINT_RESTORE (cap) or by
// PID cycling (cycle). Also: a taken PID refused naming its holder, --mode
// forced and refused where it cannot work, the default agreeing with
// `crest check`, a restored process checkpointed again by job name, and
// process trees (a multi-threaded parent and its child) in both modes.
//
// The cap mode needs an administrator's setcap on crest-pidhelper; CI does it
// (.ci/run), so with CI=true a missing capability fails instead of skipping.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  IS_ROOT,
  PYTHON,
  REPO_ROOT,
  assertOk,
  assertPass,
  assertRefused,
  crest,
  createGo,
  describeResult,
  dump,
  readManifest,
  readyPid,
  registerCleanup,
  restore,
  sleep,
  spawnCrest,
  spawnTracked,
  startJob,
  targetArgv,
  tmpImageDir,
  tmpWorkDir,
  uniqueName,
  waitForFile,
  waitGone,
  withTimeout,
  type ExitResult,
  type Proc,
} from '../harness.js';

registerCleanup();

const TIMEOUT = 180_000;
const PIDHELPER = process.env.CREST_PIDHELPER ?? path.join(REPO_ROOT, 'helper', 'crest-pidhelper');

function pidHelperProbe(): Record<string, string> {
  const out = execFileSync(PIDHELPER, ['probe'], { encoding: 'utf8' });
  return Object.fromEntries(out.trim().split('\n').map((l) => l.split(' ') as [string, string]));
}
const CAPABLE = pidHelperProbe().capability === 'yes';

/** The cap-mode tests run wherever crest-pidhelper holds the capability, and must in CI. */
function needCap(t: { skip: (why: string) => void }): boolean {
  if (CAPABLE) return true;
  if (process.env.CI === 'true') {
    assert.fail(`CI=true but ${PIDHELPER} lacks CAP_CHECKPOINT_RESTORE (its probe: ${JSON.stringify(pidHelperProbe())}): .ci/run must setcap it between npm ci and npm test`);
  }
  t.skip(`crest-pidhelper does not hold CAP_CHECKPOINT_RESTORE here (an administrator runs: sudo setcap cap_checkpoint_restore+ep ${PIDHELPER})`);
  return false;
}

/** A target started by the test, not by crest run. */
interface Outside {
  workDir: string;
  argv: string[];
  proc: Proc;
  pid: number;
  /** Its thread IDs, main thread first. */
  tids: number[];
}

function tasksOf(pid: number): number[] {
  const main = [pid];
  return main.concat(
    fs
      .readdirSync(`/proc/${pid}/task`)
      .map(Number)
      .filter((t) => t !== pid)
      .sort((a, b) => a - b),
  );
}

/**
 * Spawns `target` detached (its own session), as we are, and waits for it to
 * be ready. Root's processes hold every capability, which no host-mode
 * restore gives back: as root the target runs with none (securebits noroot).
 */
async function startOutside(target: 'threads2' | 'counter' | 'forker' | 'threads_forker', extra: string[] = []): Promise<Outside> {
  const workDir = tmpWorkDir(`outside-${target}`);
  const argv = targetArgv(target, workDir, extra);
  // Through a tiny exec wrapper that closes every fd above 2: whatever leaked into the test runner must not become the target's.
  const clean = [PYTHON, '-c', 'import os, sys; os.closerange(3, 65536); os.execvp(sys.argv[1], sys.argv[1:])'];
  const full = [...clean, ...(IS_ROOT ? ['setpriv', '--securebits', '+noroot,+noroot_locked', '--'] : []), ...argv];
  const proc = spawnTracked(full, { timeoutMs: TIMEOUT });
  await waitForFile(path.join(workDir, 'ready'), 30_000, proc);
  const pid = readyPid(workDir);
  assert.equal(pid, proc.pid, 'the target is the spawned process itself');
  const end = Date.now() + 5000;
  let tids = tasksOf(pid);
  while (target === 'threads2' && tids.length < 2 && Date.now() < end) {
    await sleep(10);
    tids = tasksOf(pid);
  }
  return { workDir, argv, proc, pid, tids };
}

/** Dumps it by PID (stopping it) and checks the image is a host-mode one with its IDs. */
async function dumpOutside(o: Outside, opts: { leaveRunning?: boolean } = {}): Promise<string> {
  const img = tmpImageDir('host');
  const d = await dump({ pid: o.pid, dir: img, leaveRunning: opts.leaveRunning });
  assertOk(d, `crest dump --pid ${o.pid} of a process outside crest run`);
  assert.match(d.stderr, /outside any job: PID mode host/);
  const m = readManifest(img) as { job: { pidMode: string }; processes: Array<{ pid: number; ppid: number; threads: Array<{ tid: number }> }> };
  assert.equal(m.job.pidMode, 'host');
  assert.equal(m.processes.length, 1);
  assert.equal(m.processes[0]!.pid, o.pid);
  assert.equal(m.processes[0]!.ppid, 0);
  assert.deepEqual(m.processes[0]!.threads.map((t) => t.tid), o.tids);
  if (!opts.leaveRunning) {
    await withTimeout(o.proc.exited, 30_000, 'the dumped target to end');
    assert.ok(await waitGone(o.pid, 10_000), `pid ${o.pid} still exists after the dump`);
  }
  return img;
}

/** `crest restore --detach --json [--mode M]`: the JSON result, the live restore process (its stdout is the job's). */
async function restoreDetached(img: string, mode?: string): Promise<{ json: Record<string, unknown>; rs: Proc; r: ExitResult }> {
  const rs = spawnCrest(['restore', '-D', img, '--detach', '--json', ...(mode ? ['--mode', mode] : [])]);
  const r = await withTimeout(rs.exited, 120_000, 'crest restore --detach');
  assertOk(r, `crest restore --detach${mode ? ` --mode ${mode}` : ''}`);
  const line = r.stdout.split('\n').find((l) => l.startsWith('{'));
  assert.ok(line, describeResult('no JSON line from crest restore --json', r));
  return { json: JSON.parse(line) as Record<string, unknown>, rs, r };
}

/** The restored process: its PID, thread IDs, owner; then go, and it must finish with PASS on crest restore's stdout. */
async function expectBackAndPass(o: Outside, rs: Proc, target: string): Promise<void> {
  assert.ok(fs.existsSync(`/proc/${o.pid}`), `no process with the original pid ${o.pid} after the restore`);
  assert.deepEqual(tasksOf(o.pid), o.tids, 'the restored process has its original thread IDs');
  const st = fs.readFileSync(`/proc/${o.pid}/status`, 'utf8');
  assert.match(st, new RegExp(`^Uid:\\s+${process.getuid!()}\\s`, 'm'));
  for (const k of ['CapPrm', 'CapEff', 'CapAmb']) assert.match(st, new RegExp(`^${k}:\\s+0+$`, 'm'), `${k} of the restored process`);
  assert.deepEqual(fs.readFileSync(`/proc/${o.pid}/cmdline`, 'latin1').split('\0').filter(Boolean), o.argv);
  createGo(o.workDir);
  assert.ok(await waitGone(o.pid, 60_000), `restored pid ${o.pid} did not finish after go`);
  const end = Date.now() + 10_000;
  while (!rs.stdout().includes(`PASS ${target}`) && Date.now() < end) await sleep(50);
  assert.ok(rs.stdout().includes(`PASS ${target}`), `no PASS ${target} on crest restore's stdout: ${rs.stdout()}`);
  assert.ok(!rs.stdout().includes('FAIL'), rs.stdout());
  assert.equal(fs.readFileSync(path.join(o.workDir, 'resumed'), 'utf8').trim(), String(o.pid), 'the target saw its own pid after the restore');
}

test('cap: a process started outside crest comes back with its PID and thread IDs', { timeout: TIMEOUT }, async (t) => {
  if (!needCap(t)) return;
  const o = await startOutside('threads2');
  assert.equal(o.tids.length, 2);
  const img = await dumpOutside(o);
  const { json, rs, r } = await restoreDetached(img, 'cap');
  assert.equal(json.pidMode, 'cap');
  assert.equal(json.pid, o.pid);
  assert.equal(json.cycled, undefined);
  assert.match(r.stderr, /crest: PID mode cap: asked for \(--mode cap\)/);
  assert.match(r.stderr, /\/proc\/self\/exe stays crest-pidhelper's/);
  await expectBackAndPass(o, rs, 'threads2');
});

test('cycle: the same process comes back by PID cycling, reporting the rate', { timeout: TIMEOUT }, async () => {
  const o = await startOutside('threads2');
  const img = await dumpOutside(o);
  const { json, rs, r } = await restoreDetached(img, 'cycle');
  assert.equal(json.pidMode, 'cycle');
  assert.equal(json.pid, o.pid);
  const c = json.cycled as { ids: number; ms: number; rate: number };
  assert.ok(c && c.ids > 0 && c.ms > 0 && c.rate > 0, JSON.stringify(json));
  assert.match(r.stderr, /crest: PID mode cycle: asked for \(--mode cycle\); cycled \d+ IDs in \d+ ms \(\d+ PIDs\/s\)/);
  await expectBackAndPass(o, rs, 'threads2');
});

test('default mode agrees with crest check; foreground restore returns the exit status; crest dump --job of it stops the restore with 75', { timeout: TIMEOUT }, async () => {
  const check = await crest(['check', '--json']);
  assertOk(check, 'crest check --json');
  const report = JSON.parse(check.stdout) as { modes: Array<{ mode: string; usable: boolean }>; pidHelperPath: string };
  const usable = (m: string): boolean => report.modes.find((x) => x.mode === m)!.usable;
  assert.equal(usable('cap'), CAPABLE, 'crest check and the helper\'s own probe agree on the cap mode');
  assert.equal(usable('cycle'), true);
  assert.equal(report.pidHelperPath, PIDHELPER);
  const expected = usable('cap') ? 'cap' : 'cycle';

  const o = await startOutside('counter', ['4']);
  const img = await dumpOutside(o);
  // Restored in the foreground under a name; then checkpointed again by that name.
  const name = uniqueName('host');
  const rs = spawnCrest(['restore', '-D', img, '--name', name]);
  const end = Date.now() + 60_000;
  while (!fs.existsSync(`/proc/${o.pid}`) && Date.now() < end) await sleep(20);
  while (!rs.stderr().includes('PID mode') && Date.now() < end) await sleep(20);
  assert.match(rs.stderr(), new RegExp(`crest: PID mode ${expected}: `));
  const img2 = tmpImageDir('again');
  const d2 = await dump({ job: name, dir: img2 });
  assertOk(d2, `crest dump --job ${name} of the restored process`);
  const first = await withTimeout(rs.exited, 30_000, 'crest restore after its process was checkpointed');
  assert.equal(first.code, 75, describeResult('the foreground restore after crest dump --job (expected 75)', first));
  assert.ok(await waitGone(o.pid, 10_000));
  createGo(o.workDir);
  const second = await restore(img2);
  assertPass(second, 'counter', 'restore of the second image, foreground, default mode');
  assert.match(second.stderr, new RegExp(`crest: PID mode ${expected}: `));
  assert.equal(fs.readFileSync(path.join(o.workDir, 'resumed'), 'utf8').trim(), String(o.pid));
});

test('a taken PID is refused, naming the process that holds it and suggesting crest run', { timeout: TIMEOUT }, async () => {
  const o = await startOutside('threads2');
  const img = await dumpOutside(o, { leaveRunning: true });
  const modes = CAPABLE ? ['cycle', 'cap'] : ['cycle'];
  for (const mode of modes) {
    const r = await restore(img, { extra: ['--mode', mode] });
    assertRefused(r, `restore --mode ${mode} while pid ${o.pid} still runs`, new RegExp(`PID ${o.pid} is taken by pid ${o.pid} \\(${o.argv.join(' ').replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}\\)`));
    assert.match(r.stderr, /crest run -- CMD/);
    assert.ok(fs.existsSync(`/proc/${o.pid}`), 'the holder was left alone');
  }
  // Its other thread is gone once it finishes: the image then restores.
  createGo(o.workDir);
  await withTimeout(o.proc.exited, 30_000, 'the original to finish');
});

test('--mode forced where it cannot work is refused before any process exists', { timeout: TIMEOUT }, async () => {
  // An image of a crest job: its PIDs live in the job's namespace.
  const job = await startJob('counter', { extra: ['4'] });
  const jobImg = tmpImageDir('job');
  assertOk(await dump({ job: job.name, dir: jobImg, leaveRunning: true }), 'dump of a job');
  for (const mode of ['cap', 'cycle']) {
    const r = await restore(jobImg, { extra: ['--mode', mode] });
    assertRefused(r, `--mode ${mode} on a job's image`, /is of a crest job/);
  }
  // An image of a process outside crest: no job namespace to put it in.
  const o = await startOutside('counter', ['4']);
  const hostImg = await dumpOutside(o, { leaveRunning: true });
  const r = await restore(hostImg, { extra: ['--mode', 'userns'] });
  assertRefused(r, '--mode userns on a host image', /outside any crest job/);
  const bad = await restore(hostImg, { extra: ['--mode', 'fork'] });
  assert.equal(bad.code, 2, describeResult('--mode fork', bad));
  assert.match(bad.stderr, /Allowed choices are userns, cap, cycle/);
  createGo(o.workDir);
  createGo(job.workDir);
});

/** Status fields of a live process: its parent, session and process group (from /proc/PID/stat). */
function statIds(pid: number): { ppid: number; pgrp: number; session: number } {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { ppid: Number(f[1]), pgrp: Number(f[2]), session: Number(f[3]) };
}

/**
 * A tree outside any job (threads_forker: a parent with 4 threads and a
 * child; both in the session the parent leads) dumped by the parent's PID,
 * restored in `mode`: every PID and TID back, the child the parent's child
 * again and in its session, the parent crest-pidhelper's child; after go the
 * parent reaps the child (exit 42) and checks its threads: PASS.
 */
async function treeRoundTrip(mode: 'cap' | 'cycle', t: { diagnostic: (s: string) => void }): Promise<void> {
  // Cycling races every other process of the machine for each ID (a thread
  // of some service may take one just before the helper does: refused,
  // naming it). On a busy machine, try again with a new tree.
  for (let attempt = 1; ; attempt++) {
    const r = await treeAttempt(mode);
    if (r === null) return;
    if (mode !== 'cycle' || attempt === 3) assert.fail(r);
    t.diagnostic(`attempt ${attempt}: ${r.split('\n')[0]}`);
  }
}

/** One tree round trip; the refusal when an ID was taken meanwhile by a process not of this test, else null. */
async function treeAttempt(mode: 'cap' | 'cycle'): Promise<string | null> {
  const o = await startOutside('threads_forker');
  const child = Number(fs.readFileSync(path.join(o.workDir, 'child'), 'utf8').trim());
  assert.equal(o.tids.length, 4);
  const before = statIds(child);
  assert.equal(before.ppid, o.pid);
  assert.equal(statIds(o.pid).session, o.pid, 'the outside target leads its session');
  const img = tmpImageDir(`tree-${mode}`);
  const d = await dump({ pid: o.pid, dir: img });
  assertOk(d, `crest dump --pid ${o.pid} of a tree outside crest run`);
  const m = readManifest(img) as { job: { pidMode: string }; processes: Array<{ pid: number; ppid: number; sid: number; threads: Array<{ tid: number }> }> };
  assert.equal(m.job.pidMode, 'host');
  assert.deepEqual(m.processes.map((p) => [p.pid, p.ppid, p.sid, p.threads.length]), [[o.pid, 0, o.pid, 4], [child, o.pid, o.pid, 1]]);
  await withTimeout(o.proc.exited, 30_000, 'the dumped tree to end');
  assert.ok(await waitGone(o.pid, 10_000) && (await waitGone(child, 10_000)), 'the dumped tree still exists');

  const rs = spawnCrest(['restore', '-D', img, '--detach', '--json', '--mode', mode]);
  const r = await withTimeout(rs.exited, 120_000, 'crest restore --detach');
  if (r.code !== 0 && /is taken by/.test(r.stderr) && [o.pid, child].every((p) => !fs.existsSync(`/proc/${p}`))) return r.stderr;
  assertOk(r, `crest restore --detach --mode ${mode} of a tree`);
  const json = JSON.parse(r.stdout.split('\n').find((l) => l.startsWith('{'))!) as Record<string, unknown>;
  assert.equal(json.pidMode, mode);
  assert.equal(json.pid, o.pid);
  const after = statIds(child);
  assert.equal(after.ppid, o.pid, 'the restored child is the restored parent\'s child');
  assert.equal(after.session, o.pid, 'the restored child is in the session its parent leads again');
  assert.deepEqual(tasksOf(child), [child]);
  const top = statIds(o.pid);
  assert.equal(top.session, o.pid, 'the restored parent leads a session again');
  assert.match(fs.readFileSync(`/proc/${top.ppid}/comm`, 'utf8'), /^crest-pidhelper/, 'the top process is crest-pidhelper\'s child');
  for (const k of ['CapPrm', 'CapEff', 'CapAmb']) assert.match(fs.readFileSync(`/proc/${child}/status`, 'utf8'), new RegExp(`^${k}:\\s+0+$`, 'm'), `${k} of the restored child`);
  await expectBackAndPass(o, rs, 'threads_forker');
  return null;
}

test('cap: a process tree outside crest (a threaded parent and its child) comes back with every PID and TID, parent and session', { timeout: TIMEOUT }, async (t) => {
  if (!needCap(t)) return;
  await treeRoundTrip('cap', t);
});

test('cycle: the same tree comes back by PID cycling', { timeout: TIMEOUT }, async (t) => {
  await treeRoundTrip('cycle', t);
});

test('a tree outside a job with a taken child PID is refused before any process exists, naming the holder', { timeout: TIMEOUT }, async () => {
  const o = await startOutside('forker');
  const child = Number(fs.readFileSync(path.join(o.workDir, 'child'), 'utf8').trim());
  const img = tmpImageDir('tree-taken');
  assertOk(await dump({ pid: o.pid, dir: img, leaveRunning: true }), 'dump --leave-running of a tree');
  const m = readManifest(img) as { processes: Array<{ pid: number; ppid: number }> };
  assert.deepEqual(m.processes.map((p) => [p.pid, p.ppid]), [[o.pid, 0], [child, o.pid]]);
  // The parent goes (its PID is free again once reaped); the child, orphaned, runs on and holds its PID.
  process.kill(o.pid, 'SIGKILL');
  assert.ok(await waitGone(o.pid, 10_000), 'the killed parent is still there');
  assert.ok(fs.existsSync(`/proc/${child}`), 'the orphaned child runs on');
  for (const mode of CAPABLE ? ['cycle', 'cap'] : ['cycle']) {
    const r = await restore(img, { extra: ['--mode', mode] });
    assertRefused(r, `restore --mode ${mode} while pid ${child} is taken`, new RegExp(`PID ${child} is taken by pid ${child} \\(`));
    assert.ok(fs.existsSync(`/proc/${child}`), 'the holder was left alone');
    assert.ok(!fs.existsSync(`/proc/${o.pid}`), `restore --mode ${mode} left a process with pid ${o.pid}`);
  }
  createGo(o.workDir);
  assert.ok(await waitGone(child, 30_000), 'the orphaned child did not finish after go');
});
