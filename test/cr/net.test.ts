// TCP connections (src/kinds/fds/tcp.ts): in a job with its own network
// namespace (`crest run --net`) established connections are repaired, with
// their unread and unsent bytes; outside one they are refused, naming `crest
// run --net` and --tcp-close, or taken as closed with --tcp-close, the
// process finding each reset by its peer while its listener carries on.
// The targets judge their own state after the restore (every byte of both
// streams, the addresses, the end of stream; the closed connections and the
// new clients answered); a Node.js HTTP server with a keep-alive client in
// one job must keep using its one connection across the checkpoint.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import {
  type ExitResult,
  type Proc,
  type TargetName,
  assertOk,
  assertPass,
  assertRefused,
  createGo,
  crest,
  describeResult,
  dump,
  expectRunningUntraced,
  processesWithArgv,
  readManifest,
  registerCleanup,
  restore,
  resumed,
  runTargetDirect,
  cleanEnv,
  sleep,
  spawnTracked,
  spawnCrest,
  targetArgv,
  tmpImageDir,
  tmpWorkDir,
  topmost,
  uniqueName,
  waitForFile,
  waitGone,
  withTimeout,
} from '../harness.js';
import { tcpPlan } from '../../src/kinds/fds/tcp.js';

registerCleanup();

const TIMEOUT = 240_000;
const START_MS = 60_000;

function target(name: string): TargetName {
  return name as TargetName;
}

/** A job started with `crest run --net` (or without, `net` false). */
interface NetJob {
  name: string;
  workDir: string;
  argv: string[];
  run: Proc;
  hostPid: number;
}

async function startNetJob(argvOf: (w: string) => string[], opts: { net?: boolean; label: string; ready?: string } = { label: 'net' }): Promise<NetJob> {
  const name = uniqueName(opts.label);
  const workDir = tmpWorkDir(opts.label);
  const argv = argvOf(workDir);
  const run = spawnCrest(['run', ...(opts.net === false ? [] : ['--net']), '--name', name, '--', ...argv]);
  await waitForFile(path.join(workDir, opts.ready ?? 'ready'), START_MS, run);
  const end = Date.now() + 10_000;
  let pids: number[] = [];
  while ((pids = topmost(processesWithArgv(argv))).length !== 1 && Date.now() < end) await sleep(20);
  assert.equal(pids.length, 1, `expected one process running ${argv.join(' ')}, found ${JSON.stringify(pids)}`);
  return { name, workDir, argv, run, hostPid: pids[0]! };
}

async function expectStopped(job: NetJob): Promise<void> {
  const r = await withTimeout(job.run.exited, 60_000, `crest run of ${job.name} after its dump`);
  assert.equal(r.code, 75, describeResult(`crest run of ${job.name} after the dump (expected exit 75)`, r));
  assert.ok(await waitGone(job.hostPid, 10_000), `${job.name}: pid ${job.hostPid} still exists after the dump`);
}

interface TcpEntry {
  kind: string;
  mode: string;
  state: string;
  family: number;
  repair?: { recvLen: number; sendLen: number; unsentLen: number };
}

/** The TCP connections of an image, over all its processes. */
function tcpEntries(img: string): TcpEntry[] {
  const m = readManifest(img) as { processes: { files: TcpEntry[] }[] };
  return m.processes.flatMap((p) => p.files.filter((f) => f.kind === 'tcp'));
}

function sabotageKeys(t: TargetName): string[] {
  const [cmd, ...args] = targetArgv(t, '--sabotage-list');
  return execFileSync(cmd as string, args, { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.length > 0);
}

// ---------------------------------------------------------------- policy (pure)

describe('which connections crest takes, and how', () => {
  test('repaired in the job\'s own network namespace, closed with --tcp-close, refused otherwise with the way out', () => {
    assert.equal(tcpPlan(1, 'a -> b', { ownNetns: true, close: false }), 'repair');
    assert.equal(tcpPlan(1, 'a -> b', { ownNetns: true, close: true }), 'repair');
    assert.equal(tcpPlan(1, 'a -> b', { ownNetns: false, close: true }), 'closed');
    assert.equal(tcpPlan(8, 'a -> b', { ownNetns: true, close: true }), 'closed');
    const outside = tcpPlan(1, 'a -> b', { ownNetns: false, close: false });
    assert.ok(typeof outside === 'object' && /established TCP connection a -> b: .*network namespace crest does not own.*`crest run --net`.*--tcp-close/.test(outside.refuse), JSON.stringify(outside));
    const half = tcpPlan(4, 'a -> b', { ownNetns: true, close: false });
    assert.ok(typeof half === 'object' && /state FIN_WAIT1; crest recreates ESTABLISHED connections only.*--tcp-close/.test(half.refuse), JSON.stringify(half));
  });
});

// ---------------------------------------------------------------- repaired connections

describe('crest run --net: established connections repaired', () => {
  test('net_stream passes alone, and each of its checks can fail', { timeout: TIMEOUT }, async () => {
    const t = target('net_stream');
    const ok = await runTargetDirect(t, { extra: ['4'] });
    assert.ok(ok.code === 0 && ok.stdout.trim() === `PASS ${t}`, describeResult('net_stream without crest', ok));
    for (const key of sabotageKeys(t)) {
      const r = await runTargetDirect(t, { extra: ['4'], env: { CREST_TEST_SABOTAGE: key } });
      const what = `net_stream with CREST_TEST_SABOTAGE=${key}`;
      assert.equal(r.code, 1, describeResult(what, r));
      assert.ok(r.stdout.startsWith(`FAIL ${t}: `) && r.stdout.includes(`${key}: `), describeResult(what, r));
    }
  });

  for (const family of ['4', '6']) {
    test(`IPv${family}: two processes streaming both ways, bytes unread and unsent at the checkpoint, every byte after restore`, { timeout: TIMEOUT }, async () => {
      const job = await startNetJob((w) => targetArgv(target('net_stream'), w, [family]), { label: `net_stream${family}` });
      const img = tmpImageDir(`net${family}`);
      assertOk(await dump({ job: job.name, dir: img }), `crest dump of ${job.name}`);
      await expectStopped(job);
      const m = readManifest(img) as { job: { net?: boolean } };
      assert.equal(m.job.net, true, 'the image records the job\'s own network namespace');
      const conns = tcpEntries(img);
      assert.equal(conns.length, 2, JSON.stringify(conns));
      for (const c of conns) {
        assert.equal(c.mode, 'repair');
        assert.equal(c.family, Number(family));
        assert.equal(c.state, 'ESTABLISHED');
        // Data in flight both ways: unread in each receive queue, unsent in each send queue.
        assert.ok(c.repair && c.repair.recvLen > 0 && c.repair.unsentLen > 0, JSON.stringify(c.repair));
      }
      createGo(job.workDir);
      assertPass(await restore(img), target('net_stream'), `crest restore of net_stream (IPv${family})`);
    });
  }

  test('small writes: send queues filled to their buffer\'s limit come back whole', { timeout: TIMEOUT }, async () => {
    // The same bytes requeued at restore take more socket memory than the
    // image's SO_SNDBUF leaves room for: restore must size the buffer for them.
    const job = await startNetJob((w) => targetArgv(target('net_stream'), w, ['4', String(8 << 20), '4096']), { label: 'net_small' });
    const img = tmpImageDir('net-small');
    assertOk(await dump({ job: job.name, dir: img }), `crest dump of ${job.name}`);
    await expectStopped(job);
    const conns = tcpEntries(img);
    assert.equal(conns.length, 2, JSON.stringify(conns));
    for (const c of conns) assert.ok(c.repair && c.repair.recvLen > 0 && c.repair.unsentLen > 0, JSON.stringify(c.repair));
    createGo(job.workDir);
    assertPass(await restore(img), target('net_stream'), 'crest restore of net_stream with 4 KiB writes');
  });

  test('TCP\'s persist timer sends while a connection is read (loopback down): the checkpoint is taken all the same, every byte comes back', { timeout: TIMEOUT }, async () => {
    // Clamped receive windows: each side faces a window smaller than its MSS
    // and sends a window's worth whenever its persist timer fires. Each read
    // is stretched to 3 s (a fault point), three dumps: in most runs the
    // timer fires inside a read and bytes go from unsent to sent under
    // crest's eyes (kinds/fds/tcp.ts), which once failed the dump.
    const job = await startNetJob((w) => targetArgv(target('net_stream'), w, ['4', String(8 << 20), '65536', '16384']), { label: 'net_persist' });
    const env = cleanEnv({ CREST_FAULT: 'stall-in-tcp-read:3000' });
    for (const i of [1, 2]) {
      const keep = tmpImageDir(`net-persist-keep${i}`);
      assertOk(await crest(['dump', '--job', job.name, '-D', keep, '--leave-running'], { timeoutMs: 120_000, env }), `crest dump --leave-running #${i}`);
      await expectRunningUntraced(job.hostPid, `after dump --leave-running #${i}`);
    }
    const img = tmpImageDir('net-persist');
    assertOk(await crest(['dump', '--job', job.name, '-D', img], { timeoutMs: 120_000, env }), `crest dump of ${job.name}`);
    await expectStopped(job);
    assert.equal(tcpEntries(img).filter((c) => c.mode === 'repair').length, 2);
    createGo(job.workDir);
    assertPass(await restore(img), target('net_stream'), 'crest restore of net_stream with clamped windows');
  });

  test('checkpointed and left running, checkpointed again, restored, the restored job checkpointed and restored again', { timeout: TIMEOUT }, async () => {
    const job = await startNetJob((w) => targetArgv(target('net_stream'), w, ['4']), { label: 'net_again' });
    // --leave-running: the network comes back (loopback up) and the job runs on untouched.
    const keep = tmpImageDir('net-keep');
    assertOk(await dump({ job: job.name, dir: keep, leaveRunning: true }), 'crest dump --leave-running');
    await expectRunningUntraced(job.hostPid, 'after dump --leave-running');
    const img1 = tmpImageDir('net-1');
    assertOk(await dump({ job: job.name, dir: img1 }), 'crest dump of the job');
    await expectStopped(job);
    const first = await restore(img1, { detach: true, extra: ['--json'] });
    assertOk(first, 'crest restore --detach');
    const restoredPid = topmost(processesWithArgv(job.argv))[0];
    assert.ok(restoredPid !== undefined, 'the restored job runs');
    assert.ok(!resumed(job.workDir));
    // The restored job's connections, out of repair mode, are checkpointed like any others.
    const img2 = tmpImageDir('net-2');
    const name2 = (JSON.parse(first.stdout) as { job: string }).job;
    assertOk(await dump({ job: name2, dir: img2 }), 'crest dump of the restored job');
    assert.ok(await waitGone(restoredPid, 10_000), 'the restored job was stopped');
    assert.equal(tcpEntries(img2).filter((c) => c.mode === 'repair').length, 2);
    createGo(job.workDir);
    assertPass(await restore(img2), target('net_stream'), 'crest restore of the re-checkpointed job');
  });
});

// ---------------------------------------------------------------- a real program

/** A Node.js HTTP server and a keep-alive client in one process: POSTs with a body, checked answers, one connection. */
const NODE_KEEPALIVE = `'use strict';
const http = require('node:http');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const dir = process.argv[2];
let served = 0;
const server = http.createServer((req, res) => {
  const h = crypto.createHash('sha256');
  req.on('data', (d) => h.update(d));
  req.on('end', () => {
    served += 1;
    res.end(JSON.stringify({ served, port: req.socket.remotePort, hash: h.digest('hex') }));
  });
});
server.keepAliveTimeout = 3600e3;
server.listen(0, '127.0.0.1', () => {
  const port = server.address().port;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const st = { n: 0, errors: 0, ports: [], last: '', pid: process.pid };
  const report = () => {
    fs.writeFileSync(path.join(dir, 'status.tmp'), JSON.stringify(st));
    fs.renameSync(path.join(dir, 'status.tmp'), path.join(dir, 'status'));
  };
  const once = () => {
    const body = crypto.randomBytes(256 * 1024);
    const want = crypto.createHash('sha256').update(body).digest('hex');
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/', agent }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (text += d));
      res.on('end', () => {
        const r = JSON.parse(text);
        if (r.hash !== want) { st.errors += 1; st.last = 'hash differs'; }
        if (!st.ports.includes(r.port)) st.ports.push(r.port);
        st.n += 1;
        report();
        if (st.n === 20) fs.writeFileSync(path.join(dir, 'ready'), String(process.pid));
        setTimeout(once, 5);
      });
    });
    req.on('error', (e) => { st.errors += 1; st.last = String(e); report(); setTimeout(once, 50); });
    req.end(body);
  };
  once();
});
`;

interface KeepaliveStatus {
  n: number;
  errors: number;
  ports: number[];
  last: string;
}

function keepaliveStatus(w: string): KeepaliveStatus {
  return JSON.parse(fs.readFileSync(path.join(w, 'status'), 'utf8')) as KeepaliveStatus;
}

test('Node.js: an HTTP server and a keep-alive client in one --net job go on over the same connection', { timeout: TIMEOUT }, async () => {
  const job = await startNetJob(
    (w) => {
      fs.writeFileSync(path.join(w, 'keepalive.cjs'), NODE_KEEPALIVE);
      return [process.execPath, path.join(w, 'keepalive.cjs'), w];
    },
    { label: 'nodeka' },
  );
  const img = tmpImageDir('nodeka');
  assertOk(await dump({ job: job.name, dir: img, timeoutMs: 180_000 }), 'crest dump of the Node.js job');
  await expectStopped(job);
  const before = keepaliveStatus(job.workDir);
  assert.equal(before.errors, 0, JSON.stringify(before));
  assert.equal(before.ports.length, 1, `one keep-alive connection: ${JSON.stringify(before)}`);
  assert.ok(tcpEntries(img).filter((c) => c.mode === 'repair').length >= 2, JSON.stringify(tcpEntries(img)));
  const rs = spawnCrest(['restore', '-D', img]);
  let after = before;
  const end = Date.now() + START_MS;
  while (after.n < before.n + 30 && Date.now() < end && !rs.result) {
    await sleep(100);
    after = keepaliveStatus(job.workDir);
  }
  assert.ok(after.n >= before.n + 30, `requests after the restore: ${before.n} -> ${after.n}; ${describeResult('crest restore', rs.result ?? ({ stdout: rs.stdout(), stderr: rs.stderr() } as ExitResult))}`);
  assert.equal(after.errors, 0, JSON.stringify(after));
  assert.deepEqual(after.ports, before.ports, 'the client kept its one connection across the checkpoint');
  const pid = topmost(processesWithArgv(job.argv))[0]!;
  process.kill(pid, 'SIGTERM');
  await withTimeout(rs.exited, 60_000, 'crest restore after SIGTERM to the Node.js job');
});

// ---------------------------------------------------------------- --tcp-close

/** One "ping X" / "pong X" on a new connection. */
function ping(port: number, x: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let got = '';
    s.setEncoding('utf8');
    s.on('connect', () => s.write(`ping ${x}\n`));
    s.on('data', (d: string) => {
      got += d;
      if (got.includes('\n')) {
        s.end();
        resolve(got.trim());
      }
    });
    s.on('error', reject);
    s.setTimeout(10_000, () => {
      s.destroy();
      reject(new Error(`no answer on port ${port}`));
    });
  });
}

/** A connection from outside that stays open, once the server answered on it. */
async function holdConnection(port: number): Promise<net.Socket> {
  const s = net.connect(port, '127.0.0.1');
  s.on('error', () => {});
  s.setEncoding('utf8');
  await new Promise<void>((resolve, reject) => {
    s.on('connect', () => s.write('ping held\n'));
    s.once('data', (d: string) => (d.includes('pong held') ? resolve() : reject(new Error(d))));
  });
  return s;
}

describe('--tcp-close: connections from outside a --net job', () => {
  test('net_server passes alone, and each of its checks can fail', { timeout: TIMEOUT }, async () => {
    for (const key of ['', 'reset', 'served', 'port']) {
      const w = tmpWorkDir('net_server');
      const p = spawnTracked(targetArgv(target('net_server'), w, ['2']), { env: cleanEnv(key ? { CREST_TEST_SABOTAGE: key } : {}), timeoutMs: 120_000 });
      await waitForFile(path.join(w, 'ready'), START_MS, p);
      const port = Number(fs.readFileSync(path.join(w, 'port'), 'utf8'));
      const held = await holdConnection(port);
      createGo(w);
      // Clients that come before the server saw "go" would count as connections from before it.
      await waitForFile(path.join(w, 'resumed'), START_MS, p);
      held.resetAndDestroy();
      assert.equal(await ping(port, 'a'), 'pong a');
      assert.equal(await ping(port, 'b'), 'pong b');
      const r = await withTimeout(p.exited, 90_000, 'net_server');
      if (key === '') assertPass(r, target('net_server'), 'net_server without crest');
      else assert.ok(r.code === 1 && r.stdout.startsWith('FAIL net_server: ') && r.stdout.includes(`${key}: `), describeResult(`net_server sabotaged ${key}`, r));
    }
  });

  test('refused without the flag (pid, fd, kind, why), taken as closed with it; the server carries on accepting', { timeout: TIMEOUT }, async () => {
    const job = await startNetJob((w) => targetArgv(target('net_server'), w, ['3']), { label: 'net_server', net: false });
    const port = Number(fs.readFileSync(path.join(job.workDir, 'port'), 'utf8'));
    const held = await holdConnection(port);
    let closed = false;
    held.on('close', () => (closed = true));
    const img = tmpImageDir('tcpclose');
    const refused = await dump({ job: job.name, dir: img });
    assertRefused(
      refused,
      'crest dump of a server with a client connected from outside',
      new RegExp(`pid ${job.hostPid}: fd \\d+ \\(TCP socket\\): established TCP connection 127\\.0\\.0\\.1:${port} -> 127\\.0\\.0\\.1:\\d+: it lives in a network namespace crest does not own.*\`crest run --net\`.*--tcp-close`),
    );
    await expectRunningUntraced(job.hostPid, 'after the refused dump');
    assert.equal(await ping(port, 'still'), 'pong still', 'the server still answers after the refusal');
    const d = await crest(['dump', '--job', job.name, '-D', img, '--force', '--tcp-close'], { timeoutMs: 120_000 });
    assertOk(d, 'crest dump --tcp-close');
    await expectStopped(job);
    const conns = tcpEntries(img);
    assert.equal(conns.length, 1, JSON.stringify(conns));
    assert.equal(conns[0]!.mode, 'closed');
    const end = Date.now() + 10_000;
    while (!closed && Date.now() < end) await sleep(20);
    assert.ok(closed, 'the outside client saw its connection end when the server was stopped');
    createGo(job.workDir);
    const rs = spawnCrest(['restore', '-D', img]);
    await waitForFile(path.join(job.workDir, 'resumed'), START_MS, rs);
    const answers: string[] = [];
    for (const x of ['1', '2', '3']) {
      let a = '';
      const until = Date.now() + START_MS;
      for (;;) {
        try {
          a = await ping(port, x);
          break;
        } catch (e) {
          if (Date.now() > until || rs.result) throw new Error(`no answer after restore: ${String(e)}; ${rs.stderr()}`);
          await sleep(100);
        }
      }
      answers.push(a);
    }
    assert.deepEqual(answers, ['pong 1', 'pong 2', 'pong 3']);
    assertPass(await withTimeout(rs.exited, 90_000, 'crest restore of net_server'), target('net_server'), 'the restored net_server');
    // The connection from before came back reset by its peer: recv said ECONNRESET.
    assert.equal(fs.readFileSync(path.join(job.workDir, 'resets'), 'utf8').trim(), '1');
  });
});

