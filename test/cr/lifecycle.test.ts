// Checkpoint/restore beyond one round trip: two restores of one image, a
// restored job checkpointed again, and a checkpoint that leaves the job running.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  assertOk,
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
  startJob,
  tmpImageDir,
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
