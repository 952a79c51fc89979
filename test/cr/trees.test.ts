// Process trees in crest jobs: sessions and process groups made inside the
// job, orphans (of the init and of a subreaper), zombies, stopped children,
// exit signals and the parent-death signal; a restored tree checkpointed
// again; and failures: a dump refused or killed half-way leaves every
// process as it was (running, or stopped, untraced), a restore that fails
// on the tree's second process leaves no process behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  type ExitResult,
  type Job,
  type TargetName,
  assertOk,
  assertPass,
  assertRefused,
  cmdline,
  createGo,
  describeResult,
  dump,
  dumpArgs,
  expectCheckpointed,
  expectKilled,
  flipByte,
  imageBytes,
  jobTargetPids,
  procState,
  processesInGroup,
  processesMentioning,
  readManifest,
  registerCleanup,
  restore,
  resumed,
  roundTrip,
  sleep,
  spawnCrest,
  startJob,
  tmpImageDir,
  tracerPid,
  waitGone,
  waitJobPid,
  withTimeout,
} from '../harness.js';

registerCleanup();

const TIMEOUT = 180_000;

/** Host pids of every process of the job's tree (the target's argv, forked children included). */
function treePids(job: Job): number[] {
  return jobTargetPids(job);
}

/** One round trip, judged: PASS, only the top process saw go, nothing left behind. */
async function checkRoundTrip(target: TargetName, extra: string[] = []): Promise<void> {
  const rt = await roundTrip(target, { extra });
  assertPass(rt.restore, target, `crest restore of ${target}`);
  const seen = fs.readFileSync(path.join(rt.job.workDir, 'resumed'), 'utf8').trim().split('\n');
  assert.deepEqual(seen, [String(rt.job.nsPid)]);
  await sleep(200);
  assert.deepEqual(treePids(rt.job), [], 'a process of the tree outlived crest restore');
}

test('tree_session: sessions and groups made in the job, leaders gone, born before setsid', { timeout: TIMEOUT }, async () => {
  await checkRoundTrip('tree_session');
});

test('tree_orphan: a grandchild whose parent exited (init adopts it), and one adopted by a subreaper', { timeout: TIMEOUT }, async () => {
  await checkRoundTrip('tree_orphan');
});

test('tree_wait: zombies keep their status, stopped children stay stopped and report once', { timeout: TIMEOUT }, async () => {
  await checkRoundTrip('tree_wait');
});

test('tree_exitsig: exit signals SIGUSR2 and 0, and the parent-death signal', { timeout: TIMEOUT }, async () => {
  await checkRoundTrip('tree_exitsig');
});

test('the image says what the tree was', { timeout: TIMEOUT }, async () => {
  const job = await startJob('tree_wait');
  const dir = tmpImageDir('wait-image');
  assertOk(await dump({ job: job.name, dir, leaveRunning: true }), 'dump --leave-running');
  const m = readManifest(dir) as {
    processes: Array<{ pid: number; stopped?: { signal: number; reported: boolean }; exitSignal?: number }>;
    zombies?: Array<{ pid: number; status: number }>;
  };
  const [zExit, zSig, stopped, tstp] = fs.readFileSync(path.join(job.workDir, 'children'), 'utf8').trim().split(' ').map(Number);
  assert.deepEqual(
    (m.zombies ?? []).map((z) => [z.pid, z.status]).sort(),
    [
      [zExit, 7 << 8],
      [zSig, 15],
    ].sort(),
  );
  const byPid = new Map(m.processes.map((p) => [p.pid, p]));
  assert.deepEqual(byPid.get(stopped!)?.stopped, { signal: 19, reported: false });
  assert.deepEqual(byPid.get(tstp!)?.stopped, { signal: 20, reported: true });
  // --leave-running: the stopped children went back to their stop, the zombies are still there.
  const pids = treePids(job);
  assert.ok(pids.length >= 4, `tree: ${pids}`);
  for (const p of pids) assert.equal(tracerPid(p), 0, `pid ${p} is still traced`);
  assert.deepEqual(
    pids.map(procState).filter((s) => s === 'T').length,
    2,
    `states: ${pids.map((p) => `${p}:${procState(p)}`).join(' ')}`,
  );
  createGo(job.workDir);
  assertPass(await withTimeout(job.run.exited, 60_000, 'crest run after go'), 'tree_wait', 'the job after dump --leave-running');
});

test('a restored tree checkpointed again, then restored', { timeout: TIMEOUT }, async () => {
  for (const target of ['tree_session', 'tree_wait'] as const) {
    const job = await startJob(target);
    const img1 = tmpImageDir(`${target}-1`);
    assertOk(await dump({ job: job.name, dir: img1 }), 'first dump');
    await expectCheckpointed(job);
    await expectKilled(job);
    assertOk(await restore(img1, { detach: true }), 'restore --detach');
    const top = await waitJobPid(job);
    await sleep(300);
    const img2 = tmpImageDir(`${target}-2`);
    assertOk(await dump({ job: job.name, dir: img2 }), `second dump of the restored ${target}`);
    assert.ok(await waitGone(top, 10_000), 'the restored tree outlived the second dump');
    assert.ok(!resumed(job.workDir));
    createGo(job.workDir);
    assertPass(await restore(img2), target, `restore of the second image of ${target}`);
    await sleep(200);
    assert.deepEqual(treePids(job), []);
  }
});

test('a check that fails: sabotaged targets report FAIL through crest restore', { timeout: TIMEOUT }, async () => {
  for (const target of ['tree_session', 'tree_wait'] as const) {
    const rt = await roundTrip(target, { env: { CREST_TEST_SABOTAGE: '1' } });
    assert.ok(rt.restore.code !== 0 && rt.restore.stdout.includes(`FAIL ${target}`), describeResult(`sabotaged ${target}`, rt.restore));
  }
});

/** Every process of the tree untraced, in the state it had (stopped ones stopped, zombies zombies). */
function expectTreeAsBefore(before: Map<number, string>, what: string): void {
  for (const [pid, state] of before) {
    assert.equal(tracerPid(pid), 0, `${what}: pid ${pid} is traced`);
    const now = procState(pid);
    const same = now === state || (state !== 'T' && state !== 'Z' && now !== 'T' && now !== 't' && now !== 'Z');
    assert.ok(same, `${what}: pid ${pid} was ${state}, now ${now}`);
  }
}

/** The tree as it was, no image left in `dir`; let go, the job runs to PASS under its crest run. */
async function expectUntouchedThenPass(job: Job, before: Map<number, string>, dir: string, what: string): Promise<void> {
  expectTreeAsBefore(before, what);
  assert.ok(!fs.existsSync(path.join(dir, 'manifest.json')), `${what}: an image was left`);
  createGo(job.workDir);
  assertPass(await withTimeout(job.run.exited, 60_000, 'crest run after go'), job.target, `the job ${what}`);
}

function states(job: Job): Map<number, string> {
  return new Map(treePids(job).map((p) => [p, procState(p) ?? '?']));
}

test("a dump refused half-way (a child's POSIX timer on its parent's CPU clock): every process as it was", { timeout: TIMEOUT }, async () => {
  const job = await startJob('tree_wait', { extra: ['timer'] });
  const before = states(job);
  assert.equal([...before.values()].filter((s) => s === 'T').length, 2);
  const dir = tmpImageDir('refused');
  const r = await dump({ job: job.name, dir });
  assertRefused(r, "dump of a tree with a POSIX timer on another process's clock", /POSIX timer \d+: it counts the CPU time of process \d+, not one of this process/);
  await sleep(100);
  await expectUntouchedThenPass(job, before, dir, 'after the refused dump');
});

test('a dump killed half-way: every process as it was, untraced', { timeout: TIMEOUT }, async () => {
  const job = await startJob('tree_wait', { extra: ['384'] });
  const before = states(job);
  const dir = tmpImageDir('killed');
  const p = spawnCrest(dumpArgs({ job: job.name, dir }));
  // Kill it while it copies memory: every process is in its hands, and the
  // injection windows (all before any memory is read; killing crest inside
  // one leaves a thread at borrowed registers) are over.
  const end = Date.now() + 30_000;
  while (p.result === null && Date.now() < end && imageBytes(dir) < 4 << 20) await sleep(2);
  if (p.result) assert.fail(describeResult('crest dump ended before it was copying memory', p.result));
  assert.ok([...before.keys()].every((x) => (tracerPid(x) ?? 0) !== 0), 'crest dump is copying memory but does not trace every process');
  process.kill(p.pid, 'SIGKILL');
  const pr = await withTimeout(p.exited, 10_000, 'the killed crest dump');
  assert.equal(pr.signal, 'SIGKILL');
  await sleep(200);
  await expectUntouchedThenPass(job, before, dir, 'after the killed dump');
});

test("a restore failing on the tree's second process leaves no process behind", { timeout: TIMEOUT }, async () => {
  const job = await startJob('tree_session');
  const dir = tmpImageDir('corrupt');
  assertOk(await dump({ job: job.name, dir }), 'dump');
  await expectCheckpointed(job);
  await expectKilled(job);
  const m = readManifest(dir) as { processes: Array<{ pid: number; pagesFile: string }> };
  assert.ok(m.processes.length > 2);
  flipByte(path.join(dir, m.processes[1]!.pagesFile));
  createGo(job.workDir);
  const r: ExitResult = await restore(dir, { timeoutMs: 60_000 });
  assertRefused(r, 'restore with a corrupt pages file of the second process', /checksum|crc|corrupt|damaged/i);
  await sleep(300);
  const left = processesInGroup(r.pid);
  assert.deepEqual(left, [], `crest restore left processes: ${left.map((x) => `${x} (${cmdline(x).join(' ')})`).join(', ')}`);
  assert.deepEqual(processesMentioning(job.workDir), [], 'a process of the tree exists');
  assert.ok(!resumed(job.workDir), 'a restored process ran');
});
