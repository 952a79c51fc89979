// Unix sockets with names across the processes of a tree: a server and its
// two clients (test/targets/unix_named.c) connected by connect/accept over a
// path and abstract names, with data queued both ways, a connection not
// accepted yet, a seqpacket connection by name, a datagram logger with
// senders named and not, a datagram socket connected to itself; listeners
// still listening and closed (their name's file unlinked). Each process
// checks its names, data and order after restore, and that new connections
// work. Round trip, checkpointed twice with --leave-running then restored,
// a restored job checkpointed again; refusals (a peer outside the tree, a
// connection outside the tree waiting to be accepted, a waiting connection
// whose client sent data already) leave every process running to PASS.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import {
  type Job,
  type TargetName,
  assertOk,
  assertPass,
  assertRefused,
  assertStillRunning,
  checksCanFail,
  createGo,
  dump,
  expectRunningUntraced,
  jobTargetPids,
  readManifest,
  registerCleanup,
  restore,
  roundTrip,
  sleep,
  startJob,
  tmpImageDir,
  waitGone,
  withTimeout,
} from '../harness.js';
import { readImage } from '../../src/image/reader.js';
import { canonicalJson } from '../../src/image/canonical.js';

registerCleanup();

const TIMEOUT = 240_000;
const T = 'unix_named' as TargetName;

interface UnixFile {
  kind: string;
  type?: string;
  state?: string;
  ino?: number;
  peer?: number;
  accepted?: boolean;
  pending?: number[];
  address?: string;
  node?: unknown;
  queue?: { data: { length: number }; messages?: number[]; from?: string[] };
}

/** The image's unix sockets (every process), with the names decoded. */
function unixSockets(imageDir: string): (UnixFile & { name: string })[] {
  const procs = readManifest(imageDir).processes as { files: UnixFile[] }[];
  return procs.flatMap((p) =>
    p.files.filter((f) => f.kind === 'unix').map((f) => {
      const b = f.address ? Buffer.from(f.address, 'base64') : Buffer.alloc(0);
      return { ...f, name: b[0] === 0 ? `@${b.subarray(1).toString()}` : b.toString().replace(/\0+$/, '') };
    }),
  );
}

/** What the image must say about the server's and clients' sockets. */
function assertImage(imageDir: string, workDir: string): void {
  assert.equal(canonicalJson(readImage(imageDir)), fs.readFileSync(path.join(imageDir, 'manifest.json'), 'utf8'), 'the manifest does not re-encode to its bytes');
  const socks = unixSockets(imageDir);
  const at = (p: string): string => path.join(workDir, p);
  const srvListener = socks.find((s) => s.state === 'listen' && s.name === at('srv.sock'));
  assert.ok(srvListener, `no listener on srv.sock: ${JSON.stringify(socks)}`);
  assert.equal(srvListener.pending?.length, 1, 'one connection waits on srv.sock');
  const accepted = socks.filter((s) => s.accepted).map((s) => s.name.replace(/-[0-9a-f]+$/, '')).sort();
  assert.deepEqual(accepted, ['@crest-unix-named-a', '@crest-unix-named-s', at('old.sock'), at('srv.sock')].sort(), 'the accepted ends');
  const old = socks.find((s) => s.accepted && s.name === at('old.sock'))!;
  assert.equal(old.node, undefined, "old.sock's file was unlinked at the checkpoint");
  const c1 = socks.find((s) => s.name === at('c1.sock'))!;
  assert.equal(c1.state, 'connected');
  assert.equal(c1.peer, old.ino);
  const logger = socks.find((s) => s.type === 'dgram' && s.state === 'unconnected' && s.name === at('log.sock'));
  assert.deepEqual(logger?.queue?.messages, [2, 4, 4, 4, 4], 'the logger queue');
  assert.deepEqual(
    logger?.queue?.from?.map((f) => (f === '' ? '' : 'named')),
    ['', '', '', 'named', 'named'],
    'the senders of the logger queue',
  );
  const self = socks.find((s) => s.name === at('self.sock'))!;
  assert.equal(self.peer, self.ino, 'self.sock is connected to itself');
}

/** The host pids of the job's processes, the server first. */
function jobPids(job: Job): number[] {
  return [job.hostPid, ...jobTargetPids(job).filter((p) => p !== job.hostPid)];
}

/** A dump of `job` is refused with `message`; every process runs on untraced and the job passes once let go. */
async function checkRefusedTree(job: Job, message: RegExp): Promise<string> {
  const dir = tmpImageDir('unix_named-refused');
  const r = await dump({ job: job.name, dir });
  assertRefused(r, 'dump of unix_named', message);
  assert.ok(!fs.existsSync(path.join(dir, 'manifest.json')), 'a refused dump left a manifest');
  assertStillRunning(job.run, 'unix_named after the refused dump');
  for (const pid of jobPids(job)) await expectRunningUntraced(pid, 'unix_named after the refused dump');
  createGo(job.workDir);
  assertPass(await withTimeout(job.run.exited, 60_000, `crest run of ${job.name}`), T, 'unix_named let go after the refused dump');
  return r.stderr;
}

/** Connects to W/out.sock from this process (outside the job); resolves once connected. */
async function connectFromOutside(workDir: string): Promise<net.Socket> {
  const s = net.connect(path.join(workDir, 'out.sock'));
  await new Promise<void>((resolve, reject) => {
    s.once('connect', resolve);
    s.once('error', reject);
  });
  return s;
}

describe('unix sockets with names: a server and two clients', () => {
  test('unix_named passes without crest, and each of its checks fails when sabotaged', { timeout: TIMEOUT }, async () => {
    await checksCanFail(T);
  });

  test('round trip: names, data both ways, message boundaries, senders, the waiting connection; new connections work', { timeout: TIMEOUT }, async () => {
    const rt = await roundTrip(T);
    assertPass(rt.restore, T, 'restore of unix_named');
    assertImage(rt.imageDir, rt.job.workDir);
    assert.deepEqual(jobTargetPids(rt.job), [], 'a process outlived crest restore');
  });

  test('checkpointed twice with --leave-running: the running job passes, and the second image restores to PASS', { timeout: TIMEOUT }, async () => {
    const job = await startJob(T);
    const imgs = [tmpImageDir('unix_named-leave1'), tmpImageDir('unix_named-leave2')];
    for (const [i, dir] of imgs.entries()) {
      assertOk(await dump({ job: job.name, dir, leaveRunning: true }), `dump --leave-running ${i + 1}`);
      assertStillRunning(job.run, `unix_named after dump --leave-running ${i + 1}`);
    }
    for (const pid of jobPids(job)) await expectRunningUntraced(pid, 'unix_named after its checkpoints');
    for (const dir of imgs) assertImage(dir, job.workDir);
    createGo(job.workDir);
    assertPass(await withTimeout(job.run.exited, 60_000, 'unix_named left running'), T, 'unix_named left running after two checkpoints');
    // The job is gone; its socket files stay behind (the very files the image recorded: removed, bound again).
    assertPass(await restore(imgs[1]!), T, 'restore of the second --leave-running image');
  });

  test('a restored job (detached) is checkpointed again and restores to PASS', { timeout: TIMEOUT }, async () => {
    const job = await startJob(T);
    const img1 = tmpImageDir('unix_named-first');
    assertOk(await dump({ job: job.name, dir: img1 }), 'first dump');
    await withTimeout(job.run.exited, 30_000, 'crest run after the first dump');
    assertOk(await restore(img1, { detach: true }), 'restore --detach');
    const running = jobTargetPids(job);
    assert.equal(running.length, 3, `the restored server and clients run: ${JSON.stringify(running)}`);
    for (const pid of running) await expectRunningUntraced(pid, 'the restored job');
    await sleep(200);
    const img2 = tmpImageDir('unix_named-second');
    assertOk(await dump({ job: job.name, dir: img2 }), 'second dump (of the restored job)');
    for (const pid of running) assert.ok(await waitGone(pid, 10_000), `restored process ${pid} still exists after the second dump`);
    assertImage(img2, job.workDir);
    createGo(job.workDir);
    assertPass(await restore(img2), T, 'restore of the second image');
  });
});

describe('unix sockets with names: socket files at restore', () => {
  test('a file at a socket path that is not the image\'s own socket file stops the restore before any process exists, and stays', { timeout: TIMEOUT }, async () => {
    const job = await startJob(T);
    const img = tmpImageDir('unix_named-foreign');
    assertOk(await dump({ job: job.name, dir: img }), 'dump');
    await withTimeout(job.run.exited, 30_000, 'crest run after the dump');
    const at = (f: string): string => path.join(job.workDir, f);
    const c1Before = fs.lstatSync(at('c1.sock')).ino;
    fs.rmSync(at('log.sock'));
    fs.writeFileSync(at('log.sock'), 'not a socket');
    createGo(job.workDir);
    const r = await restore(img);
    assertRefused(r, 'restore over a foreign file', /log\.sock exists and is not the socket file the process had bound, so crest leaves it alone/);
    assert.equal(fs.readFileSync(at('log.sock'), 'utf8'), 'not a socket', 'the foreign file was touched');
    assert.equal(fs.lstatSync(at('c1.sock')).ino, c1Before, 'the stale socket file c1.sock was touched by a restore that did not happen');
    assert.deepEqual(jobTargetPids(job), [], 'a process of the refused restore runs');
    fs.rmSync(at('log.sock'));
    assertPass(await restore(img), T, 'restore once the foreign file is gone');
  });
});

describe('unix sockets with names: refused, the job left running', () => {
  test('a connection waiting to be accepted whose client (in the tree) sent data already', { timeout: TIMEOUT }, async () => {
    const job = await startJob(T, { extra: ['pending-data'] });
    const err = await checkRefusedTree(job, /pid (\d+): fd 21 \(unix socket\): .*waits to be accepted with data it sent already/);
    const pid = Number(/pid (\d+): fd 21/.exec(err)![1]);
    assert.notEqual(pid, job.hostPid, 'the refusal names the client, not the server');
  });

  test('a connection from outside the job waiting to be accepted', { timeout: TIMEOUT }, async () => {
    const job = await startJob(T, { extra: ['outside'] });
    const s = await connectFromOutside(job.workDir);
    try {
      await checkRefusedTree(job, new RegExp(`pid ${job.hostPid}: fd 31 \\(unix socket\\): .*out\\.sock.*a connection waiting to be accepted comes from unix socket \\[\\d+\\], which no process of the tree holds`));
    } finally {
      s.destroy();
    }
  });

  test('an accepted connection whose peer is outside the job', { timeout: TIMEOUT }, async () => {
    const job = await startJob(T, { extra: ['outside'] });
    const s = await connectFromOutside(job.workDir);
    try {
      fs.writeFileSync(path.join(job.workDir, 'accept-outside'), '');
      const end = Date.now() + 10_000;
      while (!fs.existsSync(`/proc/${job.hostPid}/fd/30`)) {
        assert.ok(Date.now() < end, 'the server did not accept the outside connection');
        await sleep(10);
      }
      await checkRefusedTree(job, new RegExp(`pid ${job.hostPid}: fd 30 \\(unix socket\\): .*out\\.sock.*connected to unix socket \\[\\d+\\], which no process of the tree holds \\(it is outside the job\\)`));
    } finally {
      s.destroy();
    }
  });
});
