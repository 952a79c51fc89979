// Open files shared between the processes of a tree. A shell pipeline
// (`sh -c 'produce | filter | consume'`, /bin/sh = dash, the stages
// test/targets/pipeline.c) carries a checksummed stream through checkpoints
// with data in flight in both pipes: killed and restored, restored and
// checkpointed again, and checkpointed twice with --leave-running while it
// runs. A parent and its child (test/targets/fdtree.c) share a log file's
// offset, an O_APPEND file, socketpairs of each type with data queued both
// ways, pipes, an eventfd and an epoll instance. Refusals: a pipe end held
// outside the tree (alone, or beside the tree's own ends), an epoll instance
// shared with a process that holds a file it watches when its first holder
// does not. Every refused job runs on untouched and finishes with PASS.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  type Job,
  type Proc,
  type TargetName,
  TARGETS_BIN,
  assertOk,
  assertPass,
  assertRefused,
  assertStillRunning,
  checkRefused,
  checksCanFail,
  cleanEnv,
  createGo,
  describeResult,
  dump,
  expectRunningUntraced,
  jobTargetPids,
  processAlive,
  processesMentioning,
  readManifest,
  registerCleanup,
  restore,
  resumed,
  roundTrip,
  sabotageKeys,
  sleep,
  spawnCrest,
  spawnTracked,
  startJob,
  tmpImageDir,
  tmpWorkDir,
  uniqueName,
  waitForFile,
  waitGone,
  withTimeout,
} from '../harness.js';
import { readImage } from '../../src/image/reader.js';
import { canonicalJson } from '../../src/image/canonical.js';

registerCleanup();

const TIMEOUT = 240_000;
/** The stream's length: 16 MiB, half of it read before the consumer waits for go. */
const BYTES = 16 << 20;
const PIPELINE = 'pipeline' as TargetName;
const FDTREE = 'fdtree' as TargetName;

interface OpenFile {
  kind: string;
  locks?: { kind: string; write: boolean; start: number; end: number | null }[];
  pipe?: number;
  pid?: number;
  file?: number;
  buffer?: { size: number; data?: { length: number } };
  queue?: { data: { length: number }; messages?: number[] };
}
interface ImageProcess {
  pid: number;
  ppid: number;
  comm: string;
  files: OpenFile[];
  fds: { fd: number; file: number }[];
}

function processesOf(imageDir: string): ImageProcess[] {
  return readManifest(imageDir).processes as ImageProcess[];
}

/** The image reads back, validated, and re-encodes to the very bytes of its manifest. */
function assertReencodes(imageDir: string): void {
  assert.equal(canonicalJson(readImage(imageDir)), fs.readFileSync(path.join(imageDir, 'manifest.json'), 'utf8'), 'the manifest does not re-encode to its bytes');
}

/** The shell command of the pipeline working in `workDir`, with `middle` (real programs) between the producer and the filter. */
function pipelineCommand(workDir: string, seed: number, middle: readonly string[] = []): string {
  const bin = path.join(TARGETS_BIN, 'pipeline');
  return [`${bin} ${workDir} produce ${BYTES} ${seed}`, ...middle, `${bin} ${workDir} filter ${seed}`, `${bin} ${workDir} consume ${BYTES} ${seed}`].join(' | ');
}

interface Pipeline {
  name: string;
  workDir: string;
  run: Proc;
}

/** `crest run -- /bin/sh -c 'produce | filter | consume'`, once the consumer has its first bytes (and, with `half`, waits at half-way). */
async function startPipeline(half: boolean, middle: readonly string[] = []): Promise<Pipeline> {
  const name = uniqueName('pipeline');
  const workDir = tmpWorkDir('pipeline');
  const run = spawnCrest(['run', '--name', name, '--', '/bin/sh', '-c', pipelineCommand(workDir, randomInt(1, 2 ** 47), middle)], { env: cleanEnv() });
  await waitForFile(path.join(workDir, half ? 'half' : 'ready'), 60_000, run);
  return { name, workDir, run };
}

/** Host pids of the pipeline's processes (the shell and its three stages): every one names the work directory. */
function pipelinePids(p: Pipeline): number[] {
  return processesMentioning(p.workDir).filter((pid) => {
    try {
      return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() !== 'node';
    } catch {
      return false;
    }
  });
}

/** The image holds the shell and its three stages, both pipes with their capacity, and the bytes in flight. */
function assertPipelineImage(imageDir: string, full: boolean): void {
  const procs = processesOf(imageDir);
  assert.equal(procs.length, 4, `the image holds ${procs.map((p) => p.comm).join(', ')}`);
  const pipes = procs.flatMap((p) => p.files.filter((f) => f.kind === 'pipe').map((f) => ({ pid: p.pid, f })));
  const byPipe = new Map<number, OpenFile[]>();
  const holders = new Map<number, number[]>();
  for (const { pid, f } of pipes) {
    byPipe.set(f.pipe!, [...(byPipe.get(f.pipe!) ?? []), f]);
    holders.set(f.pipe!, [...(holders.get(f.pipe!) ?? []), pid]);
  }
  assert.equal(byPipe.size, 2, `pipes in the image: ${JSON.stringify(pipes)}`);
  // dash closes its own copies: each end is in one stage, the two ends of a pipe in two.
  for (const [pipe, pids] of holders) assert.equal(new Set(pids).size, 2, `pipe [${pipe}] ends held by ${pids.join(', ')}`);
  const buffers = [...byPipe.values()].map((ends) => {
    assert.equal(ends.length, 2, `each pipe has a read end and a write end: ${JSON.stringify(ends)}`);
    const withBuffer = ends.filter((f) => f.buffer);
    assert.equal(withBuffer.length, 1, 'exactly one end carries the buffer');
    return withBuffer[0]!.buffer!;
  });
  assert.deepEqual(buffers.map((b) => b.size).sort((a, b) => a - b), [65536, 1 << 20], 'pipe capacities');
  if (full) {
    // The consumer waits half-way: both pipes are full, their writers blocked.
    assert.deepEqual(buffers.map((b) => b.data?.length ?? 0).sort((a, b) => a - b), [65536, 1 << 20], 'bytes in flight');
  }
  assertReencodes(imageDir);
}

describe('a shell pipeline through checkpoints', () => {
  test('the pipeline passes without crest, and each of its checks fails when sabotaged', { timeout: TIMEOUT }, async () => {
    for (const key of ['', ...sabotageKeys(PIPELINE)]) {
      const workDir = tmpWorkDir('pipeline-direct');
      const p = spawnTracked(['/bin/sh', '-c', pipelineCommand(workDir, randomInt(1, 2 ** 47))], {
        env: cleanEnv(key ? { CREST_TEST_SABOTAGE: key } : {}),
        timeoutMs: 60_000,
      });
      await waitForFile(path.join(workDir, 'half'), 60_000, p);
      createGo(workDir);
      const r = await p.exited;
      if (key === '') {
        assertPass(r, PIPELINE, 'the pipeline without crest');
      } else {
        assert.equal(r.code, 1, describeResult(`CREST_TEST_SABOTAGE=${key}`, r));
        assert.ok(r.stdout.startsWith('FAIL pipeline: ') && r.stdout.includes(`${key}: `), describeResult(`CREST_TEST_SABOTAGE=${key}`, r));
      }
    }
  });

  test('checkpointed half-way (both pipes full) and restored: every byte arrives, in order, once', { timeout: TIMEOUT }, async () => {
    const p = await startPipeline(true);
    const img = tmpImageDir('pipeline');
    const d = await dump({ job: p.name, dir: img });
    assertOk(d, 'dump of the pipeline');
    await withTimeout(p.run.exited, 30_000, 'crest run after the dump');
    assert.equal(p.run.result?.code, 75, describeResult('crest run after the dump', p.run.result!));
    assert.deepEqual(pipelinePids(p), [], 'a process of the pipeline outlived its checkpoint');
    assertPipelineImage(img, true);
    assert.ok(!resumed(p.workDir));
    createGo(p.workDir);
    assertPass(await restore(img), PIPELINE, 'restore of the pipeline');
    assert.deepEqual(pipelinePids(p), [], 'a process of the pipeline outlived its restore');
  });

  test('checkpointed twice with --leave-running while it runs: the stream arrives whole, and the second image restores to the same stream', { timeout: TIMEOUT }, async () => {
    const p = await startPipeline(false);
    const imgs = [tmpImageDir('pipeline-leave1'), tmpImageDir('pipeline-leave2')];
    for (const [i, dir] of imgs.entries()) {
      assertOk(await dump({ job: p.name, dir, leaveRunning: true }), `dump --leave-running ${i + 1}`);
      assertStillRunning(p.run, `the pipeline after dump --leave-running ${i + 1}`);
    }
    for (const pid of pipelinePids(p)) await expectRunningUntraced(pid, 'the pipeline after its checkpoints');
    for (const dir of imgs) assertPipelineImage(dir, false);
    createGo(p.workDir);
    const r = await withTimeout(p.run.exited, 60_000, 'the pipeline left running');
    assertPass(r, PIPELINE, 'the pipeline left running after two checkpoints');
    // go exists: the restored consumer reads on at once.
    assertPass(await restore(imgs[1]!), PIPELINE, 'restore of the second --leave-running image');
  });

  test('real programs in the middle (cat, gzip -1, gzip -d): checkpointed half-way and restored, the stream arrives whole', { timeout: TIMEOUT }, async () => {
    const p = await startPipeline(true, ['cat', 'gzip -1', 'gzip -d']);
    const img = tmpImageDir('pipeline-gzip');
    assertOk(await dump({ job: p.name, dir: img }), 'dump of the pipeline through gzip');
    await withTimeout(p.run.exited, 30_000, 'crest run after the dump');
    const procs = processesOf(img);
    assert.deepEqual(procs.map((x) => x.comm).sort(), ['cat', 'gzip', 'gzip', 'pipeline', 'pipeline', 'pipeline', 'sh'], 'the shell and its six stages');
    const inFlight = procs.flatMap((x) => x.files).filter((f) => f.kind === 'pipe' && (f.buffer?.data?.length ?? 0) > 0);
    assert.ok(inFlight.length >= 2, `bytes in flight in several pipes: ${JSON.stringify(inFlight.map((f) => f.buffer))}`);
    assertReencodes(img);
    createGo(p.workDir);
    assertPass(await restore(img), PIPELINE, 'restore of the pipeline through gzip');
    assert.deepEqual(pipelinePids(p), []);
  });

  test('a restored pipeline (detached) is checkpointed again by name and restores to PASS', { timeout: TIMEOUT }, async () => {
    const p = await startPipeline(true);
    const img1 = tmpImageDir('pipeline-first');
    assertOk(await dump({ job: p.name, dir: img1 }), 'first dump');
    await withTimeout(p.run.exited, 30_000, 'crest run after the first dump');
    assertOk(await restore(img1, { detach: true }), 'restore --detach');
    const running = pipelinePids(p);
    assert.equal(running.length, 4, `the restored pipeline runs: ${JSON.stringify(running)}`);
    for (const pid of running) await expectRunningUntraced(pid, 'the restored pipeline');
    await sleep(200);
    const img2 = tmpImageDir('pipeline-second');
    assertOk(await dump({ job: p.name, dir: img2 }), 'second dump (of the restored pipeline, by name)');
    for (const pid of running) assert.ok(await waitGone(pid, 10_000), `restored process ${pid} still exists after the second dump`);
    assertPipelineImage(img2, true);
    createGo(p.workDir);
    assertPass(await restore(img2), PIPELINE, 'restore of the second image');
  });
});

describe('a parent and its child sharing open files', () => {
  test('fdtree passes without crest, and each of its checks fails when sabotaged', { timeout: TIMEOUT }, async () => {
    await checksCanFail(FDTREE);
  });

  test('round trip: one log offset, O_APPEND, socketpairs with data queued both ways, pipes, an eventfd, an epoll instance, a memfd and a FIFO shared again; POSIX and flock locks kept', { timeout: TIMEOUT }, async () => {
    const rt = await roundTrip(FDTREE);
    assertPass(rt.restore, FDTREE, 'restore of fdtree');
    assert.deepEqual(jobTargetPids(rt.job), [], 'a process of fdtree outlived crest restore');
    const [parent, child] = processesOf(rt.imageDir);
    assert.ok(parent && child && child.ppid === parent.pid, 'the image holds the parent, then its child');
    // The child's fds 10, 11, 20-23, 26, 27, 29 refer to the parent's descriptions; its own FIFO end 28 is its own.
    const entry = (p: ImageProcess, fd: number): OpenFile => p.files[p.fds.find((x) => x.fd === fd)!.file]!;
    assert.equal(entry(child, 28).kind, 'fifo');
    for (const fd of [10, 11, 20, 21, 22, 23, 26, 27, 29]) {
      const f = entry(child, fd);
      assert.equal(f.kind, 'shared', `child fd ${fd}: ${JSON.stringify(f)}`);
      assert.equal(f.pid, parent.pid);
      assert.equal(f.file, parent.fds.find((x) => x.fd === fd)!.file, `child fd ${fd} refers to the parent's fd ${fd}`);
    }
    // The child's POSIX lock goes with its shared entry, the flock with the parent's description.
    assert.deepEqual(entry(child, 10).locks, [{ kind: 'posix', write: true, start: 100, end: 199 }]);
    assert.deepEqual(entry(parent, 11).locks?.map((l) => l.kind), ['flock']);
    assert.equal(entry(parent, 10).locks, undefined, "the child's POSIX lock is not the parent's");
    assert.equal(entry(parent, 29).kind, 'deleted');
    assert.deepEqual(entry(parent, 29).locks, [{ kind: 'posix', write: true, start: 0, end: 9 }]);
    // Each socket's queue is in its own process's entry; each pipe's bytes on one end only.
    for (const [p, fd, bytes] of [[parent, 12, 60000], [child, 13, 60000], [parent, 14, 3368], [child, 15, 3368], [child, 18, 40000], [parent, 20, 1000], [parent, 27, 9]] as const) {
      const f = entry(p, fd);
      const got = f.queue?.data.length ?? f.buffer?.data?.length;
      assert.equal(got, bytes, `fd ${fd} of pid ${p.pid}: ${JSON.stringify(f)}`);
    }
    assertReencodes(rt.imageDir);
  });

  test('--leave-running: parent and child go on with every shared file as it was', { timeout: TIMEOUT }, async () => {
    const job = await startJob(FDTREE);
    const img = tmpImageDir('fdtree-leave');
    assertOk(await dump({ job: job.name, dir: img, leaveRunning: true }), 'dump --leave-running');
    assertStillRunning(job.run, 'fdtree after dump --leave-running');
    for (const pid of jobTargetPids(job)) await expectRunningUntraced(pid, 'fdtree after dump --leave-running');
    createGo(job.workDir);
    assertPass(await withTimeout(job.run.exited, 60_000, 'fdtree left running'), FDTREE, 'fdtree left running after its checkpoint');
    assertReencodes(img);
  });
});

/** The child's host pid (the process of fdtree that is not the topmost). */
function childOf(job: Job): number {
  const child = jobTargetPids(job).find((p) => p !== job.hostPid);
  assert.ok(child !== undefined, 'fdtree has no child');
  return child;
}

describe('refused: what cannot come back as one tree', () => {
  test('a pipe whose write end a process outside the job opened too (through /proc): named with that process', { timeout: TIMEOUT }, async () => {
    const job = await startJob(FDTREE, { extra: ['outside-both'] });
    const held = fs.openSync(`/proc/${childOf(job)}/fd/31`, fs.constants.O_WRONLY);
    try {
      await checkRefused(job, new RegExp(`open in process ${process.pid} too, outside the process tree`));
    } finally {
      fs.closeSync(held);
    }
  });

  test('a pipe whose only write end is outside the job', { timeout: TIMEOUT }, async () => {
    const job = await startJob(FDTREE, { extra: ['outside-reader'] });
    const child = childOf(job);
    const held = fs.openSync(`/proc/${child}/fd/31`, fs.constants.O_WRONLY);
    try {
      fs.writeFileSync(path.join(job.workDir, 'close31'), '');
      const end = Date.now() + 10_000;
      while (fs.existsSync(`/proc/${child}/fd/31`)) {
        assert.ok(Date.now() < end, 'the child did not close fd 31');
        await sleep(10);
      }
      await checkRefused(job, /its write end is open outside the process tree/);
    } finally {
      fs.closeSync(held);
    }
  });

  test('a child made with clone(CLONE_FILES): one fd table for two processes', { timeout: TIMEOUT }, async () => {
    const job = await startJob(FDTREE, { extra: ['clone-files'] });
    const dir = tmpImageDir('fdtree-clone-files');
    const r = await dump({ job: job.name, dir });
    assertRefused(r, 'dump of a tree with a CLONE_FILES child', new RegExp(`shares its fd table with pid ${job.hostPid}\\b`));
    for (const pid of jobTargetPids(job)) await expectRunningUntraced(pid, 'fdtree clone-files after the refused dump');
    createGo(job.workDir);
    assertPass(await withTimeout(job.run.exited, 60_000, `crest run of ${job.name}`), FDTREE, 'fdtree clone-files let go after the refused dump');
  });

  test('an epoll instance shared with the child, watching a file only the child holds', { timeout: TIMEOUT }, async () => {
    const job = await startJob(FDTREE, { extra: ['epoll-elsewhere'] });
    assert.ok(processAlive(childOf(job)));
    await checkRefused(job, /epoll.*shared with process \d+ of the tree and watches a file registered as fd 32/);
  });
});
