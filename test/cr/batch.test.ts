// crest run --checkpoint-dir: periodic checkpoints of a running job, the
// warning signal (checkpoint, stop, exit 75), resume after a requeue or a
// node failure, checkpoints that fail half-way, crest checkpoint/ls/gc, and
// the refusals (not a checkpoint dir, two runs at once, a damaged newest
// checkpoint). The job is test/targets/steps: a computation whose result
// depends only on its arguments, logging every step to W/progress.log.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  IS_ROOT,
  TARGETS_BIN,
  assertOk,
  assertRefused,
  cleanEnv,
  crest,
  describeResult,
  processAlive,
  registerCleanup,
  sleep,
  spawnCrest,
  tmpWorkDir,
  uniqueName,
  waitGone,
  withTimeout,
  type Proc,
} from '../harness.js';

registerCleanup();

const TIMEOUT = 180_000;
const STEPS = path.join(TARGETS_BIN, 'steps');

interface Job {
  work: string;
  dir: string;
  argv: string[];
  name: string;
}

/** A steps job: TOTAL steps of MS ms over MIB MiB, its work dir and a checkpoint dir (not created). */
function stepsJob(label: string, total: number, ms = 100, mib = 8): Job {
  const work = tmpWorkDir(`batch-${label}`);
  return { work, dir: path.join(work, 'D'), argv: [STEPS, work, String(total), String(ms), String(mib)], name: uniqueName(label) };
}

/** The result steps computes for TOTAL steps over MIB MiB (run directly, no sleeping). */
function expectedResult(total: number, mib = 8): string {
  const w = tmpWorkDir('expected');
  const r = spawnSync(STEPS, [w, String(total), '0', String(mib)], { encoding: 'utf8' });
  assert.equal(r.status, 0, `steps failed: ${r.stderr}`);
  return r.stdout.trim();
}

/** `crest run --checkpoint-dir D [opts] -- steps ...`. */
function runBatch(job: Job, opts: string[] = [], env: Record<string, string> = {}): Proc {
  return spawnCrest(['run', '--name', job.name, '--checkpoint-dir', job.dir, ...opts, '--', ...job.argv], { env: cleanEnv(env) });
}

/** What W/progress.log says: how many fresh starts, and the step numbers in order. */
function progress(work: string): { starts: number; steps: number[] } {
  let text = '';
  try {
    text = fs.readFileSync(path.join(work, 'progress.log'), 'utf8');
  } catch {
    /* none yet */
  }
  const lines = text.split('\n').filter(Boolean);
  return { starts: lines.filter((l) => l === 'start').length, steps: lines.filter((l) => l.startsWith('step ')).map((l) => Number(l.split(' ')[1])) };
}

async function waitFor(what: string, cond: () => boolean, ms: number, proc?: Proc): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (proc?.result) assert.fail(`${what}: ${describeResult('crest run ended first', proc.result)}`);
    if (Date.now() > end) assert.fail(`${what}: not within ${ms} ms${proc ? `\n--- stderr so far ---\n${proc.stderr()}` : ''}`);
    await sleep(20);
  }
}

/** `crest ls D --json`. */
async function ls(dir: string): Promise<{ newest: string | null; checkpoints: { name: string; status: string; parent: string | null; bytes: number; problem: string | null }[] }> {
  const r = await crest(['ls', dir, '--json']);
  assertOk(r, `crest ls ${dir}`);
  return JSON.parse(r.stdout);
}

/** A usage error of the CLI parser: exit 2, the message on stderr. */
function assertUsage(r: Awaited<ReturnType<typeof crest>>, what: string, message: RegExp): void {
  assert.equal(r.code, 2, describeResult(`${what} (expected a usage error, 2)`, r));
  assert.match(r.stderr, message, describeResult(what, r));
}

function complete(dir: string): string[] {
  return fs.readdirSync(dir).filter((n) => /^ckpt-/.test(n) && fs.existsSync(path.join(dir, n, 'manifest.json'))).sort();
}

/** Every process of the job gone (steps with its work dir in argv). */
function jobProcesses(job: Job): number[] {
  return fs
    .readdirSync('/proc')
    .filter((n) => /^[0-9]+$/.test(n))
    .map(Number)
    .filter((p) => {
      try {
        const argv = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8').split('\0');
        return argv[0] === STEPS && argv[1] === job.work && processAlive(p);
      } catch {
        return false;
      }
    });
}

test('timer checkpoints while the job runs; the warning signal checkpoints, stops (75); the same command resumes and finishes right', { timeout: TIMEOUT }, async () => {
  const job = stepsJob('signal', 60);
  const first = runBatch(job, ['--every', '700ms', '--on-signal', 'USR1']);
  // At least one timer checkpoint, the job still running (steps go on after it).
  await waitFor('a timer checkpoint', () => fs.existsSync(job.dir) && complete(job.dir).length >= 1, 30_000, first);
  const stepsAtCkpt = progress(job.work).steps.length;
  await waitFor('steps after the timer checkpoint', () => progress(job.work).steps.length > stepsAtCkpt + 2, 10_000, first);
  assert.match(first.stderr(), /crest: checkpoint ckpt-0001 \(timer, full\): [0-9.]+ MiB in [0-9]+ ms; the job was paused [0-9]+ ms/);

  // The warning: crest's, not the job's (steps would die of SIGUSR1).
  process.kill(first.pid, 'SIGUSR1');
  const r1 = await withTimeout(first.exited, 30_000, 'crest run after USR1');
  assert.equal(r1.code, 75, describeResult('crest run after USR1 (expected 75)', r1));
  assert.match(r1.stderr, /SIGUSR1: checkpointing job .* and stopping it/);
  assert.match(r1.stderr, /checkpointed to .*ckpt-[0-9]+ and stopped; run the same crest run command again to resume it/);
  assert.deepEqual(jobProcesses(job), [], 'the job is gone after the stop');
  const stopped = progress(job.work).steps;
  assert.ok(stopped.length < 60, 'the job had not finished before the signal');
  const list = await ls(job.dir);
  assert.equal(list.newest, complete(job.dir).at(-1));

  // The same command again: resumes (no new "start"), continues, finishes with the right result.
  const second = runBatch(job, ['--every', '700ms', '--on-signal', 'USR1']);
  const r2 = await withTimeout(second.exited, 60_000, 'the resumed run');
  assertOk(r2, 'the resumed crest run');
  assert.match(r2.stderr, new RegExp(`resuming from ${list.newest}`));
  assert.equal(r2.stdout.trim(), expectedResult(60), 'the result of the resumed job');
  const p = progress(job.work);
  assert.equal(p.starts, 1, 'the command was started once, never afresh');
  assert.equal(p.steps.at(-1), 60);
  // The stop checkpoint was taken at the signal: the resumed job went on from the step after the last one logged.
  assert.equal(p.steps[stopped.length], stopped.at(-1)! + 1, 'the resumed job continued from where it stopped');
  const events = fs.readFileSync(path.join(job.dir, 'events.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { event: string });
  assert.deepEqual(
    // (a timer checkpoint may meet the job as it ends: abandoned, not failed)
    [...new Set(events.map((e) => e.event))].filter((e) => e !== 'checkpoint-abandoned').sort(),
    ['checkpoint', 'checkpoint-start', 'finished', 'resume', 'start', 'stopped'],
  );

  // The job ran to its end: the directory says so, and a requeue does not run it again.
  const third = await withTimeout(runBatch(job).exited, 30_000, 'a run after the end');
  assertRefused(third, 'crest run on a finished checkpoint dir', /already ran to its end \(exit 0/);
});

test('node failure: the whole crest run tree SIGKILLed; the same command resumes the last timer checkpoint', { timeout: TIMEOUT }, async () => {
  const job = stepsJob('kill', 50);
  const first = runBatch(job, ['--every', '500ms']);
  await waitFor('two timer checkpoints', () => fs.existsSync(job.dir) && complete(job.dir).length >= 2, 30_000, first);
  await sleep(300); // some steps after the last checkpoint, which the resume will redo
  process.kill(-first.pid, 'SIGKILL');
  await withTimeout(first.exited, 10_000, 'the killed crest run');
  await waitFor('the job dies with its init', () => jobProcesses(job).length === 0, 10_000);
  const before = progress(job.work);
  const newest = complete(job.dir).at(-1)!;

  const again = runBatch(job, ['--every', '500ms']);
  const r = await withTimeout(again.exited, 60_000, 'the resumed run');
  assertOk(r, 'the resumed crest run');
  assert.match(r.stderr, /resuming from ckpt-/);
  assert.ok(!r.stderr.includes('passing over'), describeResult('nothing to pass over', r));
  assert.ok(r.stderr.includes(`resuming from ${newest} `), describeResult(`expected the resume from ${newest}`, r));
  assert.equal(r.stdout.trim(), expectedResult(50));
  const p = progress(job.work);
  assert.equal(p.starts, 1, 'never started afresh');
  assert.equal(p.steps.at(-1), 50);
  // Steps after the last checkpoint were lost with the node and done again: the log repeats some.
  const resumedAt = p.steps[before.steps.length]!;
  assert.ok(resumedAt > 1 && resumedAt <= before.steps.at(-1)!, `the resumed job went on from step ${resumedAt} (killed after ${before.steps.at(-1)})`);
});

test('a checkpoint killed half-way never becomes the newest complete one; the job keeps running', { timeout: TIMEOUT }, async () => {
  const job = stepsJob('halfway', 60);
  // No timer: every checkpoint here is one we asked for, so none races the killed one.
  const run = runBatch(job, ['--every', '1h']);
  await waitFor('the job to start', () => progress(job.work).steps.length >= 1, 30_000, run);
  const first = spawnCrest(['checkpoint', '--job', job.name]);
  assertOk(await withTimeout(first.exited, 60_000, 'the first checkpoint'), 'the first checkpoint');
  assert.equal(complete(job.dir).length, 1);
  // crest checkpoint stalls with every data file written and no manifest; killed there.
  const ck = spawnCrest(['checkpoint', '--job', job.name], { env: cleanEnv({ CREST_FAULT: 'stall-before-manifest' }) });
  let half = '';
  await waitFor(
    'the stalled checkpoint',
    () => {
      const l = fs.readdirSync(job.dir).filter((n) => /^ckpt-/.test(n) && fs.readdirSync(path.join(job.dir, n)).some((f) => f.startsWith('pages-')) && !fs.existsSync(path.join(job.dir, n, 'manifest.json')));
      half = l[0] ?? '';
      return half !== '';
    },
    30_000,
    ck,
  );
  await sleep(100);
  process.kill(ck.pid, 'SIGKILL');
  await ck.exited;
  // The job, frozen by the killed crest, runs on.
  const n = progress(job.work).steps.length;
  await waitFor('the job to go on after crest was killed', () => progress(job.work).steps.length > n + 2, 10_000, run);
  const list = await ls(job.dir);
  const entry = list.checkpoints.find((c) => c.name === half);
  assert.ok(entry, `the half-written ${half} is listed: ${JSON.stringify(list)}`);
  assert.equal(entry.status, 'incomplete', JSON.stringify(entry));
  assert.notEqual(list.newest, half);
  // A later checkpoint takes a later number; the job finishes right under the same crest run.
  const later = spawnCrest(['checkpoint', '--job', job.name]);
  assertOk(await withTimeout(later.exited, 60_000, 'a later checkpoint'), 'a later checkpoint');
  const r = await withTimeout(run.exited, 60_000, 'crest run');
  assertOk(r, 'crest run after the killed checkpoint');
  assert.equal(r.stdout.trim(), expectedResult(60));
  const after = await ls(job.dir);
  assert.ok(after.checkpoints.some((c) => c.name > half && c.status === 'complete'), JSON.stringify(after));
});

test('a disk that fills during a checkpoint: the checkpoint fails cleanly, the job keeps running and finishes', { timeout: TIMEOUT }, async () => {
  const job = stepsJob('enospc', 60);
  // One 8 MiB checkpoint fits, the next runs out of space half-way.
  const run = runBatch(job, ['--every', '400ms', '--full-every', '1'], { CREST_FAULT: 'enospc-after:10000000' });
  const r = await withTimeout(run.exited, 60_000, 'crest run');
  assertOk(r, 'crest run with a disk that fills');
  assert.match(r.stderr, /warning: the timer checkpoint failed, the job keeps running: .*disk full \(ENOSPC/);
  assert.equal(r.stdout.trim(), expectedResult(60));
  const list = await ls(job.dir);
  assert.deepEqual(list.checkpoints.map((c) => [c.name, c.status]), [['ckpt-0001', 'complete']], 'the failed ones left nothing');
  assert.equal(list.newest, 'ckpt-0001');
});

test('a real full disk (a 12 MiB tmpfs, as root): same', { timeout: TIMEOUT, skip: IS_ROOT ? false : 'mounting a tmpfs needs root (the fault-point test above covers it)' }, async () => {
  const job = stepsJob('tmpfs', 60);
  fs.mkdirSync(job.dir);
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=12m,mode=0700', 'crest-test', job.dir], { encoding: 'utf8' });
  assert.equal(m.status, 0, `mount: ${m.stderr}`);
  try {
    const r = await withTimeout(runBatch(job, ['--every', '400ms', '--full-every', '1']).exited, 60_000, 'crest run');
    assertOk(r, 'crest run on a tiny tmpfs');
    assert.match(r.stderr, /warning: the timer checkpoint failed, the job keeps running: .*disk full/);
    assert.equal(r.stdout.trim(), expectedResult(60));
    const list = await ls(job.dir);
    assert.deepEqual(list.checkpoints.map((c) => [c.name, c.status]), [['ckpt-0001', 'complete']]);
  } finally {
    spawnSync('umount', ['-l', job.dir]);
  }
});

test('the newest checkpoint damaged: the resume says so and takes the one before', { timeout: TIMEOUT }, async () => {
  const job = stepsJob('damaged', 40);
  const first = runBatch(job, ['--every', '400ms', '--on-signal', 'USR2']);
  await waitFor('two checkpoints', () => fs.existsSync(job.dir) && complete(job.dir).length >= 2, 30_000, first);
  process.kill(first.pid, 'SIGUSR2');
  assert.equal((await withTimeout(first.exited, 30_000, 'crest run')).code, 75);
  const names = complete(job.dir);
  const newest = names.at(-1)!;
  const prev = names.at(-2)!;
  const pages = fs.readdirSync(path.join(job.dir, newest)).find((f) => f.startsWith('pages-'))!;
  const fd = fs.openSync(path.join(job.dir, newest, pages), 'r+');
  const old = Buffer.alloc(1);
  fs.readSync(fd, old, 0, 1, 17);
  fs.writeSync(fd, Buffer.from([old[0]! ^ 0x5a]), 0, 1, 17);
  fs.closeSync(fd);

  const r = await withTimeout(runBatch(job).exited, 60_000, 'the resumed run');
  assertOk(r, 'resume past a damaged checkpoint');
  assert.match(r.stderr, new RegExp(`passing over ${newest} is damaged: .*fails its checksum`));
  assert.match(r.stderr, new RegExp(`resuming from ${prev}`));
  assert.equal(r.stdout.trim(), expectedResult(40));
  assert.equal(progress(job.work).starts, 1);
});

test('refusals: not a checkpoint dir, another command, two runs on one dir, crest checkpoint of a plain job', { timeout: TIMEOUT }, async () => {
  const job = stepsJob('refuse', 200);
  // A directory with other things in it.
  fs.mkdirSync(job.dir);
  fs.writeFileSync(path.join(job.dir, 'notes.txt'), 'mine\n');
  assertRefused(await crest(['run', '--checkpoint-dir', job.dir, '--', ...job.argv]), 'an unrelated dir', /is not a checkpoint directory: it has "notes.txt" but no crest-checkpoints.json/);
  assertRefused(await crest(['ls', job.dir]), 'ls of an unrelated dir', /is not a checkpoint directory/);
  assertRefused(await crest(['ls', path.join(job.work, 'nowhere')]), 'ls of nothing', /does not exist/);
  fs.rmSync(job.dir, { recursive: true });
  assertUsage(await crest(['run', '--every', '1m', '--', ...job.argv]), '--every without a dir', /need --checkpoint-dir/);
  assertUsage(await crest(['run', '--checkpoint-dir', job.dir, '--every', 'soon', '--', ...job.argv]), 'a bad duration', /expected a duration/);
  assertUsage(await crest(['run', '--checkpoint-dir', job.dir, '--on-signal', 'KILL', '--', ...job.argv]), 'an uncatchable signal', /expected one of USR1/);

  const run = runBatch(job, ['--every', '10m']);
  await waitFor('the job', () => progress(job.work).steps.length > 0, 30_000, run);
  // Two runs at once on one directory.
  const twice = await crest(['run', '--checkpoint-dir', job.dir, '--', ...job.argv]);
  assertRefused(twice, 'a second run on the same dir', new RegExp(`is in use by another crest run \\(pid ${run.pid}`));
  // The same directory for another command, once it holds a checkpoint.
  assertOk(await crest(['checkpoint', '--job', job.name]), 'a checkpoint');
  const other = await crest(['run', '--checkpoint-dir', job.dir, '--', STEPS, job.work, '7']);
  assertRefused(other, 'another command', /holds checkpoints of `.*steps .* 200 100 8`, not of `.*steps .* 7`/);
  // A directory whose command never got as far as a checkpoint is taken over by the next one.
  const failed = path.join(job.work, 'D-failed');
  const bad = await crest(['run', '--checkpoint-dir', failed, '--', path.join(job.work, 'no-such-program')]);
  assert.equal(bad.code, 127, describeResult('a command that cannot start', bad));
  assert.ok(!fs.existsSync(path.join(failed, 'finished.json')), 'no finished.json without a checkpoint');
  assertOk(await crest(['run', '--checkpoint-dir', failed, '--', '/bin/true']), 'the next command in that directory');

  // crest checkpoint of a job without a checkpoint dir, of no job; while another checkpoint holds the lock.
  const plain = spawnCrest(['run', '--name', `${job.name}-plain`, '--', STEPS, tmpWorkDir('plain'), '1000']);
  await sleep(500);
  assertRefused(await crest(['checkpoint', '--job', `${job.name}-plain`]), 'checkpoint of a plain job', /was not started with --checkpoint-dir/);
  process.kill(-plain.pid, 'SIGKILL');
  assertRefused(await crest(['checkpoint', '--job', 'no-such-job-here']), 'checkpoint of no job', /no running job named/);
  const stalled = spawnCrest(['checkpoint', '--job', job.name], { env: cleanEnv({ CREST_FAULT: 'stall-before-manifest:20000' }) });
  await waitFor('the stalled checkpoint to hold the lock', () => safeRead(path.join(job.dir, 'checkpoint.lock')).includes(`"pid":${stalled.pid},`), 20_000, stalled);
  assertRefused(await crest(['checkpoint', '--job', job.name, '--wait', '1s']), 'a checkpoint while another is written', /another checkpoint of .* is being written \(pid [0-9]+/);
  const busy = await ls(job.dir);
  assert.ok(busy.checkpoints.some((c) => c.status === 'in-progress'), JSON.stringify(busy));
  process.kill(stalled.pid, 'SIGKILL');
  await stalled.exited;
  process.kill(-run.pid, 'SIGKILL');
});

function safeRead(p: string): string {
  try {
    return fs.readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

test('crest checkpoint from another shell: now (job runs on), --stop (crest run exits 75); ls and gc', { timeout: TIMEOUT }, async () => {
  const job = stepsJob('request', 200);
  // Full checkpoints here (gc of incremental chains: batch-incremental.test.ts).
  const run = runBatch(job, ['--every', '10m', '--full-every', '1']);
  await waitFor('the job', () => progress(job.work).steps.length > 0, 30_000, run);
  for (let i = 0; i < 3; i++) {
    const c = await crest(['checkpoint', '--job', job.name, '--json']);
    assertOk(c, 'crest checkpoint');
    const j = JSON.parse(c.stdout) as { checkpoint: string; stopped: boolean; pauseMs: number };
    assert.equal(j.checkpoint, `ckpt-000${i + 1}`);
    assert.equal(j.stopped, false);
    assert.ok(j.pauseMs > 0);
  }
  const n = progress(job.work).steps.length;
  await waitFor('the job goes on', () => progress(job.work).steps.length > n + 1, 10_000, run);
  const s = await crest(['checkpoint', '--job', job.name, '--stop']);
  assertOk(s, 'crest checkpoint --stop');
  assert.match(s.stderr, /ckpt-0004.*job stopped/);
  const r = await withTimeout(run.exited, 20_000, 'crest run after checkpoint --stop');
  assert.equal(r.code, 75, describeResult('crest run after crest checkpoint --stop', r));
  assert.ok(await waitGone(jobProcesses(job)[0] ?? 0, 5000));

  const list = await ls(job.dir);
  assert.deepEqual(list.checkpoints.map((c) => c.status), ['complete', 'complete', 'complete', 'complete']);
  assert.equal(list.newest, 'ckpt-0004');
  const text = await crest(['ls', job.dir]);
  assert.match(text.stdout, /NAME +TIME +SIZE +PARENT +TRACKER +STATUS/);
  assert.match(text.stdout, /ckpt-0004 .* complete \(newest\)/);

  const dry = await crest(['gc', job.dir, '--keep', '2', '--dry-run']);
  assertOk(dry, 'gc --dry-run');
  assert.match(dry.stdout, /would remove ckpt-0002/);
  assert.equal(complete(job.dir).length, 4);
  const gc = await crest(['gc', job.dir, '--keep', '2', '--json']);
  assertOk(gc, 'gc');
  const g = JSON.parse(gc.stdout) as { kept: string[]; removed: { name: string }[] };
  assert.deepEqual(g.kept, ['ckpt-0003', 'ckpt-0004']);
  assert.deepEqual(g.removed.map((x) => x.name), ['ckpt-0002', 'ckpt-0001']);
  assert.deepEqual(complete(job.dir), ['ckpt-0003', 'ckpt-0004']);
  assertUsage(await crest(['gc', job.dir, '--keep', '0']), 'gc --keep 0', /positive whole number/);
});
