// What crest must refuse, cleanly: a non-zero exit with a "crest: " message,
// the job untouched (running, untraced, finishing normally when let go), no
// complete image left behind, and no process created by a refused restore.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { manifestChecksum } from '../../src/image/canonical.js';
import {
  IS_ROOT,
  type ExitResult,
  type Job,
  type TargetName,
  assertOk,
  assertPass,
  assertRefused,
  assertStillRunning,
  cmdline,
  copyImage,
  createGo,
  describeResult,
  dump,
  dumpArgs,
  expectCheckpointed,
  expectKilled,
  expectRunningUntraced,
  flipByte,
  imageBytes,
  jobTargetPids,
  pagesFile,
  processAlive,
  processesInGroup,
  processesMentioning,
  readManifest,
  registerCleanup,
  restore,
  resumed,
  sleep,
  spawnCrest,
  startJob,
  tmpImageDir,
  tmpWorkDir,
  tracerPid,
  withTimeout,
} from '../harness.js';

registerCleanup();

const TIMEOUT = 180_000;
const MANIFEST = 'manifest.json';

function hasManifest(dir: string): boolean {
  return fs.existsSync(path.join(dir, MANIFEST));
}

/** Lets `job` go and checks it finishes with PASS under its own `crest run`. */
async function letFinish(job: Job): Promise<void> {
  createGo(job.workDir);
  const r = await withTimeout(job.run.exited, 60_000, `crest run of ${job.name} after go`);
  assertPass(r, job.target, `${job.target} let go after a refused dump`);
}

/** Every host process of the job runs untraced. */
async function expectJobUntouched(job: Job, what: string): Promise<void> {
  assertStillRunning(job.run, `${what}: crest run`);
  const pids = jobTargetPids(job);
  if (!pids.includes(job.hostPid)) {
    // Say how it ended: crest run reports the job's end.
    const r = await withTimeout(job.run.exited, 5000, `crest run of ${job.name}`).catch(() => null);
    assert.fail(`${what}: the job's process ${job.hostPid} is gone${r ? `; ${describeResult('crest run', r)}` : ''}`);
  }
  for (const pid of pids) await expectRunningUntraced(pid, what);
  assert.ok(!resumed(job.workDir), `${what}: the job went past its wait`);
}

/**
 * A refused restore must not leave or create any process: nothing in the
 * process group of `crest restore` (its helper, a job's init, a husk), nothing
 * naming the image or the job's directory, and the target never ran.
 */
async function expectNoProcess(r: ExitResult, imageDir: string, workDir: string, what: string): Promise<void> {
  await sleep(300);
  const left = processesInGroup(r.pid);
  assert.deepEqual(left, [], `${what}: crest restore left processes behind: ${left.map((p) => `${p} (${cmdline(p).join(' ')})`).join(', ')}`);
  assert.deepEqual(processesMentioning(workDir), [], `${what}: a process of the job's target exists`);
  assert.deepEqual(processesMentioning(imageDir), [], `${what}: a process working on the image exists`);
  assert.ok(!resumed(workDir), `${what}: a restored process ran (W/resumed exists)`);
}

// ------------------------------------------------------------------ dump

describe('dump refuses', () => {
  test('a pid that does not exist, naming it', { timeout: TIMEOUT }, async () => {
    const max = Number(fs.readFileSync('/proc/sys/kernel/pid_max', 'utf8'));
    let pid = max - 1;
    while (fs.existsSync(`/proc/${pid}`)) pid -= 1;
    const dir = tmpImageDir('nopid');
    const r = await dump({ pid, dir });
    assertRefused(r, `dump --pid ${pid}`, new RegExp(`\\b${pid}\\b`));
    assert.ok(!hasManifest(dir));
  });

  test("another user's process", { timeout: TIMEOUT, skip: IS_ROOT ? 'running as root: every process is ours' : false }, async () => {
    const dir = tmpImageDir('pid1');
    const r = await dump({ pid: 1, dir });
    assertRefused(r, 'dump --pid 1', /permission|not permitted|EPERM|EACCES|owned|belongs to|your own|another user|other user|not yours|not (in )?a crest job/i);
    assert.match(r.stderr, /\b1\b/, describeResult('the message names pid 1', r));
    assert.ok(!hasManifest(dir));
    assert.equal(tracerPid(1), 0);
  });

  const unsupported: Array<[TargetName, RegExp[]]> = [
    ['sockfd', [/socket/i, /\b(fd ?)?9\b/]],
  ];
  for (const [target, messages] of unsupported) {
    test(`an unsupported process (${target}), leaving it running untraced`, { timeout: TIMEOUT }, async () => {
      const job = await startJob(target);
      if (target === 'sockfd') assert.equal(fs.readFileSync(path.join(job.workDir, 'sockfd'), 'utf8').trim(), '9');
      const dir = tmpImageDir(target);
      const r = await dump({ job: job.name, dir });
      assertRefused(r, `dump of ${target}`);
      for (const m of messages) assert.match(r.stderr, m, describeResult(`dump of ${target}: the reason`, r));
      await expectJobUntouched(job, `${target} after the refused dump`);
      assert.ok(!hasManifest(dir), 'a refused dump left a manifest');
      assertRefused(await restore(dir), `restore of what the refused dump of ${target} left`);
      await expectJobUntouched(job, `${target} after the refused restore`);
      await letFinish(job);
    });
  }

  test('a directory that already holds an image, unless --force', { timeout: TIMEOUT }, async () => {
    const job = await startJob('static_counter');
    const dir = tmpImageDir('twice');
    assertOk(await dump({ job: job.name, dir, leaveRunning: true }), 'first dump --leave-running');
    await expectJobUntouched(job, 'after dump --leave-running');
    const manifest = fs.readFileSync(path.join(dir, MANIFEST));

    const again = await dump({ job: job.name, dir });
    assertRefused(again, 'second dump into the same directory', /exist|already|--force/i);
    await expectJobUntouched(job, 'after the refused second dump');
    assert.deepEqual(fs.readFileSync(path.join(dir, MANIFEST)), manifest, 'the refused dump changed the image');

    assertOk(await dump({ job: job.name, dir, force: true }), 'dump --force');
    await expectCheckpointed(job);
    await expectKilled(job);
    createGo(job.workDir);
    assertPass(await restore(dir), 'static_counter', 'restore of the --force image');
  });

  test('to completion when killed in the middle: the job is untouched', { timeout: TIMEOUT }, async () => {
    // 512 MiB of memory: the dump takes long enough to be killed in the middle.
    const job = await startJob('counter', { extra: ['512'] });
    const dir = tmpImageDir('killed');
    const p = spawnCrest(dumpArgs({ job: job.name, dir }));
    // Kill it while it copies memory: the job is in its hands, and the
    // injection windows are over (they all come before any memory is read;
    // crest killed inside one leaves a thread at borrowed registers, see
    // docs/security.md).
    const end = Date.now() + 30_000;
    while (p.result === null && Date.now() < end && imageBytes(dir) < 4 << 20) await sleep(2);
    if (p.result) assert.fail(describeResult('crest dump ended before it was copying memory', p.result));
    assert.notEqual(tracerPid(job.hostPid), 0, 'crest dump is copying memory but does not trace the job');
    process.kill(p.pid, 'SIGKILL');
    const pr = await withTimeout(p.exited, 10_000, 'the killed crest dump');
    assert.equal(pr.signal, 'SIGKILL');

    await expectJobUntouched(job, 'the job after its dump was killed');
    assert.ok(processAlive(job.hostPid));
    assert.ok(!hasManifest(dir), 'the killed dump left a manifest');
    const r = await restore(dir);
    assertRefused(r, 'restore of the interrupted image');
    await expectJobUntouched(job, 'the job after the refused restore');
    await letFinish(job);
  });
});

// ------------------------------------------------------------------ restore

describe('restore refuses a bad image, creating no process', () => {
  let good = '';
  let workDir = '';

  /** One good image of static_counter, its job killed and go created: a wrongful restore would run to "resumed". */
  async function goodImage(): Promise<string> {
    if (good) return good;
    const job = await startJob('static_counter', { extra: ['2'] });
    const dir = tmpImageDir('good');
    assertOk(await dump({ job: job.name, dir }), 'dump');
    await expectCheckpointed(job);
    await expectKilled(job);
    createGo(job.workDir);
    good = dir;
    workDir = job.workDir;
    return dir;
  }

  async function refused(label: string, damage: (dir: string) => void, message: RegExp): Promise<void> {
    const dir = copyImage(await goodImage(), label);
    damage(dir);
    const r = await restore(dir, { timeoutMs: 60_000 });
    assertRefused(r, `restore of an image with ${label}`, message);
    await expectNoProcess(r, dir, workDir, label);
  }

  test('a truncated pages file', { timeout: TIMEOUT }, async () => {
    await refused(
      'a truncated pages file',
      (dir) => {
        const f = pagesFile(dir);
        fs.truncateSync(f, Math.floor(fs.statSync(f).size / 2));
      },
      /truncat|size|short|corrupt|damaged|checksum|crc/i,
    );
  });

  test('a flipped byte in the pages file', { timeout: TIMEOUT }, async () => {
    await refused(
      'a flipped byte in the pages file',
      (dir) => flipByte(pagesFile(dir)),
      /checksum|crc|corrupt|damaged/i,
    );
  });

  test('a missing pages file', { timeout: TIMEOUT }, async () => {
    await refused('a missing pages file', (dir) => fs.rmSync(pagesFile(dir)), /missing|not found|no such|ENOENT|incomplete|corrupt|damaged/i);
  });

  test('a hand-edited manifest', { timeout: TIMEOUT }, async () => {
    await refused(
      'a hand-edited manifest',
      (dir) => {
        const m = readManifest(dir);
        const procs = m.processes as Array<Record<string, unknown>>;
        const p0 = procs[0] as Record<string, unknown>;
        p0.comm = 'edited';
        fs.writeFileSync(path.join(dir, MANIFEST), JSON.stringify(m, null, 1) + '\n');
      },
      /checksum|edited|modified|changed|corrupt|damaged/i,
    );
  });

  test('a manifest that is not valid JSON', { timeout: TIMEOUT }, async () => {
    await refused(
      'a truncated manifest',
      (dir) => {
        const f = path.join(dir, MANIFEST);
        fs.truncateSync(f, Math.floor(fs.statSync(f).size / 2));
      },
      /json|corrupt|damaged|invalid/i,
    );
  });

  test('a manifest with formatVersion 99', { timeout: TIMEOUT }, async () => {
    await refused(
      'formatVersion 99',
      (dir) => {
        const m = readManifest(dir);
        m.formatVersion = 99;
        // A consistent manifest of a newer format: only the version is wrong.
        m.checksum = manifestChecksum(m);
        fs.writeFileSync(path.join(dir, MANIFEST), JSON.stringify(m, null, 1) + '\n');
      },
      /version.*99|99.*version/i,
    );
  });

  test('an empty directory', { timeout: TIMEOUT }, async () => {
    const dir = tmpImageDir('empty');
    const r = await restore(dir);
    assertRefused(r, 'restore of an empty directory', /not .*image|no .*manifest|manifest|empty/i);
    await expectNoProcess(r, dir, await goodImage().then(() => workDir), 'an empty directory');
  });

  test('a directory that is not an image', { timeout: TIMEOUT }, async () => {
    const dir = tmpWorkDir('notimage');
    fs.writeFileSync(path.join(dir, 'README.txt'), 'hello\n');
    fs.writeFileSync(path.join(dir, 'data.bin'), Buffer.alloc(8192, 7));
    const r = await restore(dir);
    assertRefused(r, 'restore of a directory that is not an image', /not .*image|manifest/i);
    await expectNoProcess(r, dir, await goodImage().then(() => workDir), 'a directory that is not an image');
  });

  test("a directory whose manifest is not crest's", { timeout: TIMEOUT }, async () => {
    const dir = tmpWorkDir('foreign');
    fs.writeFileSync(path.join(dir, MANIFEST), JSON.stringify({ name: 'something else', version: 1 }) + '\n');
    const r = await restore(dir);
    assertRefused(r, "restore of a directory with someone else's manifest.json", /not .*(crest|image|manifest)|magic/i);
    await expectNoProcess(r, dir, await goodImage().then(() => workDir), "someone else's manifest");
  });

  test('a directory that does not exist, naming it', { timeout: TIMEOUT }, async () => {
    const dir = path.join(tmpWorkDir('missing'), 'no-such-image');
    const r = await restore(dir);
    assertRefused(r, 'restore of a missing directory', /not exist|no such|missing|not found|ENOENT/i);
    assert.ok(r.stderr.includes(dir), describeResult('the message names the directory', r));
    await expectNoProcess(r, dir, await goodImage().then(() => workDir), 'a missing directory');
  });

  test('(control) the undamaged image restores and runs to PASS', { timeout: TIMEOUT }, async () => {
    const dir = copyImage(await goodImage(), 'control');
    assert.ok(!resumed(workDir), 'a refused restore ran the target');
    assertPass(await restore(dir), 'static_counter', 'restore of the undamaged copy');
  });
});
