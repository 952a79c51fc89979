// Checkpoint/restore beyond one round trip: two restores of one image, a
// restored job checkpointed again, and a checkpoint that leaves the job running.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  CREST_CLI,
  assertOk,
  cleanEnv,
  assertPass,
  assertStillRunning,
  createGo,
  dump,
  expectCheckpointed,
  expectKilled,
  expectRunningUntraced,
  jobTargetPids,
  registerCleanup,
  restore,
  resumed,
  roundTrip,
  sleep,
  spawnCrest,
  startJob,
  tmpImageDir,
  tmpWorkDir,
  uniqueName,
  waitGone,
  waitJobPid,
  withTimeout,
} from '../harness.js';

registerCleanup();

const TIMEOUT = 240_000;

function appendLines(workDir: string): number {
  return fs.readFileSync(path.join(workDir, 'append.log'), 'utf8').split('\n').length - 1;
}

test('one image restored twice: both restores run to PASS', { timeout: TIMEOUT }, async () => {
  const rt = await roundTrip('files');
  assertPass(rt.restore, 'files', 'first restore');
  const linesAfterFirst = appendLines(rt.job.workDir);
  const second = await restore(rt.imageDir);
  assertPass(second, 'files', 'second restore of the same image');
  // The second restore wrote after what the first one left (its image-time offset was behind the end).
  assert.ok(appendLines(rt.job.workDir) > linesAfterFirst, 'the second restore appended nothing to append.log');
  const pids = fs.readFileSync(path.join(rt.job.workDir, 'resumed'), 'utf8').trim().split('\n');
  assert.deepEqual(pids, [String(rt.job.nsPid), String(rt.job.nsPid)], 'both restored processes had the original pid');
});

test('a restored job checkpointed again, then restored', { timeout: TIMEOUT }, async () => {
  const job = await startJob('files');
  const img1 = tmpImageDir('first');
  assertOk(await dump({ job: job.name, dir: img1 }), 'first dump');
  await expectCheckpointed(job);
  await expectKilled(job);

  const det = await restore(img1, { detach: true });
  assertOk(det, 'restore --detach');
  const pid2 = await waitJobPid(job);
  assert.notEqual(pid2, job.hostPid, 'the restored process has a new host pid');
  await expectRunningUntraced(pid2, 'the detached restored job');
  // Let it run (and append) a while in its restored life.
  const linesBefore = appendLines(job.workDir);
  await sleep(200);
  assert.ok(appendLines(job.workDir) > linesBefore, 'the restored job does not run: append.log did not grow');
  assert.ok(!resumed(job.workDir), 'the job saw go before it was created');

  // The restored job keeps its name.
  const img2 = tmpImageDir('second');
  assertOk(await dump({ job: job.name, dir: img2 }), 'second dump (of the restored job, by name)');
  assert.ok(await waitGone(pid2, 10_000), `restored process ${pid2} still exists after the second dump`);

  createGo(job.workDir);
  const r = await restore(img2);
  assertPass(r, 'files', 'restore of the second image');
  assert.deepEqual(jobTargetPids(job), []);
});

test('--leave-running: the job goes on and finishes under crest run; the image restores too', { timeout: TIMEOUT }, async () => {
  const job = await startJob('counter', { extra: ['16'] });
  const img = tmpImageDir('leave');
  assertOk(await dump({ job: job.name, dir: img, leaveRunning: true }), 'dump --leave-running');
  assertStillRunning(job.run, 'crest run after dump --leave-running');
  await expectRunningUntraced(job.hostPid, 'the job after dump --leave-running');
  assert.ok(!resumed(job.workDir));

  createGo(job.workDir);
  const run = await withTimeout(job.run.exited, 60_000, 'crest run after go');
  assertPass(run, 'counter', 'the original job after dump --leave-running');

  // The image taken while it ran is a complete one: restoring it runs to PASS as well.
  const r = await restore(img);
  assertPass(r, 'counter', 'restore of the --leave-running image');
  const pids = fs.readFileSync(path.join(job.workDir, 'resumed'), 'utf8').trim().split('\n');
  assert.deepEqual(pids, [String(job.nsPid), String(job.nsPid)]);
});

test("restore --detach of a job writing only to its own files: crest restore's output ends with crest restore (a $(...) caller is not held by the job)", { timeout: TIMEOUT }, async () => {
  const w = tmpWorkDir('detach-out');
  const name = uniqueName('detach-out');
  const loop = 'exec > "$1/log" 2>&1 < /dev/null; i=0; while :; do i=$((i+1)); echo $i > "$1/n.tmp"; mv "$1/n.tmp" "$1/n"; sleep 0.05; done';
  const run = spawnCrest(['run', '--name', name, '--', '/bin/sh', '-c', loop, 'sh', w]);
  const n = (): number => {
    try {
      return Number(fs.readFileSync(path.join(w, 'n'), 'utf8'));
    } catch {
      return 0;
    }
  };
  const end = Date.now() + 60_000;
  while (n() < 3 && run.result === null && Date.now() < end) await sleep(20);
  assert.ok(n() >= 3, `the job did not get going: ${run.stderr()}`);
  const img = tmpImageDir('detach-out');
  assertOk(await dump({ job: name, dir: img }), 'dump');
  await withTimeout(run.exited, 60_000, 'crest run after the dump');
  // execFile calls back once crest restore's stdout and stderr are closed,
  // not when it exits (and, past its timeout, with no error if it had exited 0).
  const t0 = Date.now();
  const out = await new Promise<string>((resolve, reject) => {
    execFile(process.execPath, [CREST_CLI, 'restore', '-D', img, '--detach', '--json'], { timeout: 30_000, env: cleanEnv() }, (err, stdout, stderr) =>
      err ? reject(new Error(`crest restore --detach --json: ${err.message}\n${stderr}`)) : resolve(stdout),
    );
  });
  assert.ok(Date.now() - t0 < 20_000, `crest restore --detach's output stayed open ${Date.now() - t0} ms: the detached job holds it`);
  const res = JSON.parse(out) as { pid: number };
  try {
    const at = n();
    const until = Date.now() + 30_000;
    while (n() <= at && Date.now() < until) await sleep(20);
    assert.ok(n() > at, 'the detached job made no progress');
  } finally {
    process.kill(res.pid, 'SIGKILL');
  }
});
