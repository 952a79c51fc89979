// Real programs, not targets written for crest: each is started with
// `crest run`, checkpointed (which stops it), restored, and then judged only
// from outside, by what a user of the program would see: a web server that
// answers again on its port (and not while checkpointed), a Node.js timer
// whose counter went on from where it was, an SQLite transaction that was
// open across the checkpoint, still holds its locks, and commits.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import {
  PYTHON,
  type Proc,
  assertOk,
  describeResult,
  dump,
  processAlive,
  readManifest,
  cmdline,
  registerCleanup,
  sleep,
  spawnCrest,
  tmpImageDir,
  tmpWorkDir,
  topmost,
  uniqueName,
  waitForFile,
  waitGone,
  withTimeout,
} from '../harness.js';

registerCleanup();

/** A loaded 2-core machine can be slow to start an interpreter; everything polls with generous bounds. */
const TIMEOUT = 240_000;
const START_MS = 60_000;

// ---------------------------------------------------------------- outside views

/** A TCP port on 127.0.0.1 that was free a moment ago. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

interface Reply {
  status: number;
  body: string;
}

/** One GET on a fresh connection (no keep-alive: a pooled socket would outlive the server it was made to). */
function get(port: number, urlPath: string, timeoutMs = 10_000): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, agent: false, headers: { connection: 'close' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (s: string) => (body += s));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`GET ${urlPath} on port ${port}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

/** Polls until GET answers 200 (the server may still be starting); fails early when `proc` exits. */
async function waitAnswer(port: number, urlPath: string, proc: Proc, what: string, timeoutMs = START_MS): Promise<Reply> {
  const end = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    if (proc.result) assert.fail(describeResult(`${what}: exited before answering on port ${port}`, proc.result));
    try {
      const r = await get(port, urlPath, 5000);
      if (r.status === 200) return r;
      last = `status ${r.status}`;
    } catch (e) {
      last = (e as Error).message;
    }
    if (Date.now() > end) {
      assert.fail(`${what}: no answer on port ${port} within ${timeoutMs} ms (last: ${last})\n--- stdout ---\n${proc.stdout()}\n--- stderr ---\n${proc.stderr()}`);
    }
    await sleep(100);
  }
}

/** Asserts nothing listens on the port: a connection is refused. */
async function expectPortClosed(port: number, what: string): Promise<void> {
  const err = await new Promise<NodeJS.ErrnoException | null>((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    s.setTimeout(5000, () => {
      s.destroy();
      resolve(Object.assign(new Error('connect timed out'), { code: 'ETIMEDOUT' }));
    });
    s.on('connect', () => {
      s.destroy();
      resolve(null);
    });
    s.on('error', (e: NodeJS.ErrnoException) => resolve(e));
  });
  assert.equal(err?.code, 'ECONNREFUSED', `${what}: port ${port} ${err ? `gave ${err.code}` : 'accepted a connection'}`);
}

/**
 * Host pids of the live processes running `argv`, compared joined by spaces:
 * the sqlite3 program cuts its arguments at spaces in place.
 */
function pidsRunning(argv: readonly string[]): number[] {
  const want = argv.join(' ');
  return topmost(
    fs
      .readdirSync('/proc')
      .filter((n) => /^[0-9]+$/.test(n))
      .map(Number)
      .filter((p) => processAlive(p) && cmdline(p).join(' ') === want),
  );
}

/** The one (topmost) host process running `argv`, waiting for it to appear. */
async function hostPidOf(argv: readonly string[], what: string): Promise<number> {
  const end = Date.now() + 10_000;
  for (;;) {
    const pids = pidsRunning(argv);
    if (pids.length === 1) return pids[0]!;
    if (Date.now() > end) assert.fail(`${what}: expected one process running ${argv.join(' ')}, found ${JSON.stringify(pids)}`);
    await sleep(20);
  }
}

/** Checkpoints job `name` into a fresh directory; `crest run` must then exit 75 and the process be gone. */
async function checkpoint(name: string, run: Proc, hostPid: number): Promise<string> {
  const img = tmpImageDir(name);
  assertOk(await dump({ job: name, dir: img, timeoutMs: 180_000 }), `crest dump of ${name}`);
  const r = await withTimeout(run.exited, 60_000, `crest run of ${name} after its dump`);
  assert.equal(r.code, 75, describeResult(`crest run of ${name} after the dump (expected exit 75)`, r));
  assert.ok(await waitGone(hostPid, 10_000), `${name}: pid ${hostPid} still exists after the dump`);
  return img;
}

// ---------------------------------------------------------------- python3 -m http.server

test('python3 -m http.server: closed while checkpointed, answers again after restore', { timeout: TIMEOUT }, async () => {
  const w = tmpWorkDir('pyhttp');
  const token = `crest-${process.pid}-${Date.now()}`;
  fs.writeFileSync(path.join(w, 'hello.txt'), token);
  const port = await freePort();
  const name = uniqueName('pyhttp');
  const argv = [PYTHON, '-m', 'http.server', '--bind', '127.0.0.1', '--directory', w, String(port)];
  const run = spawnCrest(['run', '--name', name, '--', ...argv]);
  const first = await waitAnswer(port, '/hello.txt', run, 'http.server under crest run');
  assert.equal(first.body, token);
  const pid = await hostPidOf(argv, 'http.server');

  const img = await checkpoint(name, run, pid);
  await expectPortClosed(port, 'while the job is checkpointed');

  const rs = spawnCrest(['restore', '-D', img]);
  const again = await waitAnswer(port, '/hello.txt', rs, 'http.server after crest restore');
  assert.equal(again.body, token);
  // A new file is served too: the server reads its directory now, not a cache.
  fs.writeFileSync(path.join(w, 'after.txt'), 'after restore');
  for (let i = 0; i < 5; i++) {
    assert.deepEqual(await get(port, '/after.txt'), { status: 200, body: 'after restore' }, `request ${i} after restore`);
  }
  assert.equal((await get(port, '/missing')).status, 404);
  // Its log goes to `crest restore`'s stderr (the job's stderr from outside became restore's).
  const end = Date.now() + 10_000;
  while (!rs.stderr().includes('GET /after.txt') && Date.now() < end) await sleep(50);
  assert.match(rs.stderr(), /"GET \/after\.txt HTTP\/1\.1" 200/, `the restored server's log is not on crest restore's stderr:\n${rs.stderr()}`);

  // Ctrl-C as a user would: its SIGINT handler (Python's) runs and it exits 0, which crest restore returns.
  const restored = await hostPidOf(argv, 'restored http.server');
  process.kill(restored, 'SIGINT');
  const fin = await withTimeout(rs.exited, 60_000, 'crest restore after SIGINT to http.server');
  assert.equal(fin.code, 0, describeResult('crest restore of http.server after SIGINT', fin));
  await expectPortClosed(port, 'after the restored server exited');
});

// ---------------------------------------------------------------- Node.js

/** A Node.js server: a setInterval counter, reported with a token fixed at start and the pid; /exit ends it. */
const NODE_SERVER = `'use strict';
const http = require('node:http');
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const [dir, port] = process.argv.slice(2);
const token = crypto.randomUUID();
const started = Date.now();
let count = 0;
let last = 0;
let backwards = 0;
setInterval(() => {
  count += 1;
  const now = performance.now();
  if (now < last) backwards += 1;
  last = now;
}, 20);
const server = http.createServer((req, res) => {
  if (req.url === '/exit') {
    res.end('bye');
    setTimeout(() => process.exit(0), 50);
    return;
  }
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ count, token, pid: process.pid, backwards, started }));
});
server.listen(Number(port), '127.0.0.1', () => {
  fs.writeFileSync(path.join(dir, 'ready.tmp'), String(process.pid));
  fs.renameSync(path.join(dir, 'ready.tmp'), path.join(dir, 'ready'));
});
`;

interface NodeState {
  count: number;
  token: string;
  pid: number;
  backwards: number;
  started: number;
}

async function nodeState(port: number): Promise<NodeState> {
  const r = await get(port, '/');
  assert.equal(r.status, 200, r.body);
  return JSON.parse(r.body) as NodeState;
}

test('Node.js: HTTP server and setInterval counter continue from where they were', { timeout: TIMEOUT }, async () => {
  const w = tmpWorkDir('nodesrv');
  const script = path.join(w, 'server.cjs');
  fs.writeFileSync(script, NODE_SERVER);
  const port = await freePort();
  const name = uniqueName('nodesrv');
  const argv = [process.execPath, script, w, String(port)];
  const run = spawnCrest(['run', '--name', name, '--', ...argv]);
  await waitForFile(path.join(w, 'ready'), START_MS, run);
  const nsPid = Number(fs.readFileSync(path.join(w, 'ready'), 'utf8'));
  await waitAnswer(port, '/', run, 'node server under crest run');
  // Let the counter get going, so that a restart (count from 0) cannot pass for a continuation.
  let before = await nodeState(port);
  const end = Date.now() + START_MS;
  while (before.count < 25 && Date.now() < end) {
    await sleep(100);
    before = await nodeState(port);
  }
  assert.ok(before.count >= 25, `the counter does not advance under crest run: ${JSON.stringify(before)}`);
  assert.equal(before.pid, nsPid);
  const pid = await hostPidOf(argv, 'node server');

  const img = await checkpoint(name, run, pid);
  await expectPortClosed(port, 'while the job is checkpointed');

  const rs = spawnCrest(['restore', '-D', img]);
  await waitAnswer(port, '/', rs, 'node server after crest restore');
  const after = await nodeState(port);
  assert.equal(after.token, before.token, 'another process answers after restore (its start-up token differs): it was restarted, not restored');
  assert.equal(after.started, before.started);
  assert.equal(after.pid, before.pid, 'the restored process has another pid');
  assert.ok(after.count >= before.count, `the counter went back from ${before.count} to ${after.count}: it restarted`);
  // And it keeps counting in its restored life.
  let later = after;
  const end2 = Date.now() + 30_000;
  while (later.count < after.count + 10 && Date.now() < end2) {
    await sleep(100);
    later = await nodeState(port);
  }
  assert.ok(later.count >= after.count + 10, `the counter stopped after restore: ${after.count} then ${later.count}`);
  assert.equal(later.backwards, 0, 'performance.now() went backwards across the checkpoint');

  assert.equal((await get(port, '/exit')).body, 'bye');
  const fin = await withTimeout(rs.exited, 60_000, 'crest restore after /exit');
  assert.equal(fin.code, 0, describeResult('crest restore of the node server after /exit', fin));
});

// ---------------------------------------------------------------- SQLite

const ROWS_BEFORE = 500; // committed before the long transaction
const ROWS_IN_TX = 3000; // inserted by the open transaction before the checkpoint
const ROWS_AFTER = 1000; // inserted by it after the restore, before COMMIT

/**
 * One long SQLite transaction across the checkpoint: BEGIN EXCLUSIVE, rows
 * with a tiny page cache (so pages spill into the database file and the
 * rollback journal is hot while it is open), W/ready, wait for W/go, more
 * rows, COMMIT, W/done. Rollback journal mode: its locks are POSIX locks on
 * the database file.
 */
const SQLITE_JOB = `import os, sqlite3, sys, time
w = sys.argv[1]
db = sqlite3.connect(os.path.join(w, 'test.db'), isolation_level=None, timeout=0)
db.execute('PRAGMA journal_mode=DELETE')
db.execute('PRAGMA cache_size=10')
db.execute('CREATE TABLE t(i INTEGER PRIMARY KEY, v TEXT NOT NULL)')
db.execute('CREATE INDEX t_v ON t(v)')
db.executemany('INSERT INTO t VALUES(?, ?)', ((i, 'before-%06d' % i) for i in range(${ROWS_BEFORE})))
db.execute('BEGIN EXCLUSIVE')
db.executemany('INSERT INTO t VALUES(?, ?)', ((i, 'tx-%06d-' % i + 'x' * 200) for i in range(${ROWS_BEFORE}, ${ROWS_BEFORE + ROWS_IN_TX})))
with open(os.path.join(w, 'ready.tmp'), 'w') as f:
    f.write(str(os.getpid()))
os.rename(os.path.join(w, 'ready.tmp'), os.path.join(w, 'ready'))
while not os.path.exists(os.path.join(w, 'go')):
    time.sleep(0.02)
db.executemany('INSERT INTO t VALUES(?, ?)', ((i, 'after-%06d' % i) for i in range(${ROWS_BEFORE + ROWS_IN_TX}, ${ROWS_BEFORE + ROWS_IN_TX + ROWS_AFTER})))
db.execute('COMMIT')
db.close()
with open(os.path.join(w, 'done'), 'w') as f:
    f.write('committed')
`;

/** The sqlite3 command-line program on `db` (a second, outside connection); throws with its stderr on failure. */
function sqlite(db: string, sql: string): string {
  return execFileSync('sqlite3', ['-batch', db, sql], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 }).trim();
}

/** What an outside connection gets when it tries to read: 'locked' while the job holds its exclusive lock. */
function outsideRead(db: string): string {
  try {
    return sqlite(db, 'PRAGMA busy_timeout=0; SELECT count(*) FROM t;');
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    const msg = String(err.stderr ?? err.message);
    return /database is locked/.test(msg) ? 'locked' : `error: ${msg}`;
  }
}

/** POSIX (fcntl) locks that host pid `pid` holds on the file `file`, as lines of /proc/locks. */
function posixLocks(pid: number, file: string): string[] {
  const st = fs.statSync(file);
  const major = Math.floor(st.dev / 256) & 0xfff;
  const minor = (st.dev & 0xff) | ((st.dev >> 12) & 0xfff00);
  const id = `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}:${st.ino}`;
  return fs
    .readFileSync('/proc/locks', 'utf8')
    .split('\n')
    .filter((l) => / POSIX /.test(l) && !/->/.test(l))
    .filter((l) => {
      const f = l.trim().split(/\s+/);
      // "1: POSIX  ADVISORY  WRITE 1234 08:01:5678 1073741824 1073741824"
      return Number(f[4]) === pid && f[5]?.toLowerCase() === id;
    });
}

/**
 * The same transaction from the sqlite3 command-line program, reading a
 * script: it waits for W/go inside a query that spins until readfile() finds
 * the file (the program has no sleep), so the checkpoint catches it busy.
 */
function sqliteCliScript(w: string): string {
  const q = (f: string) => `'${path.join(w, f).replace(/'/g, "''")}'`;
  const rows = (from: number, to: number, v: string) =>
    `WITH RECURSIVE c(i) AS (SELECT ${from} UNION ALL SELECT i + 1 FROM c WHERE i + 1 < ${to}) INSERT INTO t SELECT i, ${v} FROM c;`;
  return [
    'PRAGMA journal_mode=DELETE;',
    'PRAGMA cache_size=10;',
    'CREATE TABLE t(i INTEGER PRIMARY KEY, v TEXT NOT NULL);',
    'CREATE INDEX t_v ON t(v);',
    rows(0, ROWS_BEFORE, "printf('before-%06d', i)"),
    'BEGIN EXCLUSIVE;',
    rows(ROWS_BEFORE, ROWS_BEFORE + ROWS_IN_TX, "printf('tx-%06d-', i) || printf('%.*c', 200, 'x')"),
    `SELECT writefile(${q('ready')}, 'ready') > 0;`,
    `WITH RECURSIVE w(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM w WHERE readfile(${q('go')}) IS NULL) SELECT count(*) > 0 FROM w;`,
    rows(ROWS_BEFORE + ROWS_IN_TX, ROWS_BEFORE + ROWS_IN_TX + ROWS_AFTER, "printf('after-%06d', i)"),
    'COMMIT;',
    `SELECT writefile(${q('done')}, 'committed') > 0;`,
    '',
  ].join('\n');
}

/** Runs `argv` (working on W/test.db) as a job and drives it through a checkpoint in the middle of its transaction. */
async function sqliteRoundTrip(label: string, w: string, argv: string[]): Promise<void> {
  const db = path.join(w, 'test.db');
  const name = uniqueName(label);
  const run = spawnCrest(['run', '--name', name, '--', ...argv]);
  await waitForFile(path.join(w, 'ready'), START_MS, run);
  const pid = await hostPidOf(argv, 'the sqlite job');
  assert.ok(fs.existsSync(`${db}-journal`), 'no rollback journal while the transaction is open');
  assert.ok(posixLocks(pid, db).length > 0, `the job holds no POSIX lock on the database:\n${fs.readFileSync('/proc/locks', 'utf8')}`);
  const locksBefore = posixLocks(pid, db).map((l) => l.trim().split(/\s+/).slice(1).join(' ').replace(/ \d+ /, ' PID '));
  assert.equal(outsideRead(db), 'locked', 'another connection could read the database during the exclusive transaction');

  // Nothing touches the database while no process holds its locks: a reader
  // would find the hot journal and roll the open transaction back.
  const img = await checkpoint(name, run, pid);

  const rs = spawnCrest(['restore', '-D', img]);
  const restored = await (async () => {
    const end = Date.now() + START_MS;
    for (;;) {
      if (rs.result) assert.fail(describeResult('crest restore of the sqlite job exited early', rs.result));
      const p = pidsRunning(argv);
      if (p.length === 1 && posixLocks(p[0]!, db).length > 0) return p[0]!;
      if (Date.now() > end) assert.fail(`the restored sqlite job holds no POSIX lock on ${db} (pids ${JSON.stringify(p)}):\n${fs.readFileSync('/proc/locks', 'utf8')}`);
      await sleep(50);
    }
  })();
  const locksAfter = posixLocks(restored, db).map((l) => l.trim().split(/\s+/).slice(1).join(' ').replace(/ \d+ /, ' PID '));
  assert.deepEqual(locksAfter.sort(), locksBefore.sort(), 'the restored job holds other locks than before');
  assert.equal(outsideRead(db), 'locked', 'the restored job does not hold its exclusive lock: another connection could read');
  assert.ok(processAlive(restored));
  assert.ok(!fs.existsSync(path.join(w, 'done')));

  fs.writeFileSync(path.join(w, 'go'), '');
  const fin = await withTimeout(rs.exited, 120_000, 'crest restore of the sqlite job after go');
  assert.equal(fin.code, 0, describeResult('the restored sqlite job', fin));
  assert.equal(fs.readFileSync(path.join(w, 'done'), 'utf8'), 'committed');
  assert.ok(!fs.existsSync(`${db}-journal`), 'the rollback journal is still there after COMMIT');

  assert.equal(sqlite(db, 'PRAGMA integrity_check;'), 'ok');
  const total = ROWS_BEFORE + ROWS_IN_TX + ROWS_AFTER;
  assert.equal(sqlite(db, 'SELECT count(*), min(i), max(i), count(DISTINCT v) FROM t;'), `${total}|0|${total - 1}|${total}`);
  assert.equal(sqlite(db, "SELECT count(*) FROM t WHERE v LIKE 'before-%';"), String(ROWS_BEFORE));
  assert.equal(sqlite(db, "SELECT count(*) FROM t WHERE v LIKE 'tx-%';"), String(ROWS_IN_TX));
  assert.equal(sqlite(db, "SELECT count(*) FROM t WHERE v LIKE 'after-%';"), String(ROWS_AFTER));
  assert.equal(sqlite(db, 'SELECT v FROM t WHERE i = 1234;'), `tx-001234-${'x'.repeat(200)}`);
}

test('sqlite3 (Python module): a transaction open across the checkpoint keeps its locks and commits', { timeout: TIMEOUT }, async () => {
  const w = tmpWorkDir('sqlite-py');
  const script = path.join(w, 'txn.py');
  fs.writeFileSync(script, SQLITE_JOB);
  await sqliteRoundTrip('sqlite-py', w, [PYTHON, script, w]);
});

test('sqlite3 (command-line program): checkpointed busy in a query inside its transaction; locks kept, commits', { timeout: TIMEOUT }, async () => {
  const w = tmpWorkDir('sqlite-cli');
  const script = path.join(w, 'txn.sql');
  fs.writeFileSync(script, sqliteCliScript(w));
  await sqliteRoundTrip('sqlite-cli', w, ['sqlite3', '-bail', path.join(w, 'test.db'), `.read ${script}`]);
});

// ---------------------------------------------------------------- programs that keep starting processes

/** How many processes an image holds, zombies included. */
function imageProcesses(img: string): number {
  const m = readManifest(img);
  return (m['processes'] as unknown[]).length + ((m['zombies'] as unknown[] | undefined)?.length ?? 0);
}

/**
 * A job that starts and ends processes all the time is checkpointed on the
 * first try (the freeze walks the tree until nothing new appears), whatever
 * moment it catches: here three checkpoints while it runs, then one that
 * stops it, then a restore; the job's own arithmetic proves it went on
 * from where it was.
 */
async function churningJob(label: string, argv: string[], w: string, progress: () => number, expect: RegExp, minProgress: number): Promise<void> {
  const name = uniqueName(label);
  const run = spawnCrest(['run', '--name', name, '--', ...argv]);
  const end = Date.now() + START_MS;
  while (progress() < minProgress && run.result === null && Date.now() < end) await sleep(20);
  assert.ok(progress() >= minProgress, `${label} did not get going under crest run: ${run.stderr()}`);
  let most = 0;
  for (let i = 0; i < 3; i++) {
    const img = tmpImageDir(`${label}-live${i}`);
    assertOk(await dump({ job: name, dir: img, leaveRunning: true, timeoutMs: 120_000 }), `checkpoint ${i} of ${label}, left running`);
    most = Math.max(most, imageProcesses(img));
    await sleep(150);
  }
  const img = tmpImageDir(`${label}-stop`);
  assertOk(await dump({ job: name, dir: img, timeoutMs: 120_000 }), `checkpoint of ${label} that stops it`);
  most = Math.max(most, imageProcesses(img));
  const r = await withTimeout(run.exited, 60_000, `crest run of ${label} after its dump`);
  assert.equal(r.code, 75, describeResult(`crest run of ${label} after the dump (expected exit 75)`, r));
  const at = progress();
  assert.ok(most >= 2, `no checkpoint of ${label} caught one of its children (at most ${most} process): the test proves nothing`);
  const rs = spawnCrest(['restore', '-D', img]);
  const fin = await withTimeout(rs.exited, 180_000, `crest restore of ${label} running to its end`);
  assert.equal(fin.code, 0, describeResult(`crest restore of ${label}`, fin));
  assert.ok(progress() > at, `${label} made no progress after restore`);
  const result = fs.readFileSync(path.join(w, 'result'), 'utf8');
  assert.match(result, expect, `${label}'s result`);
}

test('a shell loop forking a command per step (command substitution): checkpointed while it forks, restored, the right sum', { timeout: TIMEOUT }, async () => {
  const w = tmpWorkDir('shloop');
  const n = 6000;
  let sum = 0;
  for (let i = 1; i <= n; i++) sum += i % 7;
  const script = [
    's=0; i=0',
    `while [ $i -lt ${n} ]; do i=$((i+1)); v=$(expr $i % 7); s=$((s+v)); [ $((i % 50)) -eq 0 ] && echo "$i $s" >> "$1/progress"; done`,
    'echo "SUM $s" > "$1/result.tmp"; mv "$1/result.tmp" "$1/result"',
  ].join('\n');
  const progress = (): number => {
    try {
      return fs.readFileSync(path.join(w, 'progress'), 'utf8').split('\n').length - 1;
    } catch {
      return 0;
    }
  };
  await churningJob('shloop', ['/bin/sh', '-c', script, 'sh', w], w, progress, new RegExp(`^SUM ${sum}\\n$`), 3);
});

test('make -j3 building objects with gcc: checkpointed while it runs its workers, restored, the build completes', { timeout: TIMEOUT }, async () => {
  const w = tmpWorkDir('make');
  const n = 60;
  for (let i = 1; i <= n; i++) fs.writeFileSync(path.join(w, `f${i}.c`), `int f${i}(int x) { int s = 0; for (int i = 0; i < x; i++) s += i * ${i}; return s; }\n`);
  fs.writeFileSync(
    path.join(w, 'Makefile'),
    [
      'OBJS = $(patsubst %.c,%.o,$(wildcard f*.c))',
      'result: lib.a',
      '\tar t lib.a | sort | tr "\\n" " " > result.tmp && mv result.tmp result',
      '%.o: %.c',
      '\tsleep 0.2; gcc -O1 -c $< -o $@',
      'lib.a: $(OBJS)',
      '\tar rcs $@ $^',
      '',
    ].join('\n'),
  );
  const progress = (): number => fs.readdirSync(w).filter((f) => f.endsWith('.o')).length;
  const names = Array.from({ length: n }, (_, i) => `f${i + 1}.o`).sort();
  await churningJob('make', ['make', '-s', '-C', w, '-j3', 'result'], w, progress, new RegExp(`^${names.join(' ')} $`), 2);
});

test('coreutils timeout: its POSIX timer (timer_create) comes back armed, and still ends the command on time', { timeout: TIMEOUT }, async () => {
  const w = tmpWorkDir('timeout');
  const name = uniqueName('timeout');
  const limitS = 8;
  const loop = 'i=0; while :; do i=$((i+1)); echo $i > "$1/progress.tmp"; mv "$1/progress.tmp" "$1/progress"; sleep 0.05; done';
  const run = spawnCrest(['run', '--name', name, '--', 'timeout', String(limitS), '/bin/sh', '-c', loop, 'sh', w]);
  const progress = (): number => {
    try {
      return Number(fs.readFileSync(path.join(w, 'progress'), 'utf8'));
    } catch {
      return 0;
    }
  };
  const end = Date.now() + START_MS;
  while (progress() < 3 && run.result === null && Date.now() < end) await sleep(20);
  assert.ok(progress() >= 3, `timeout's command did not get going under crest run: ${run.stderr()}`);
  const started = Date.now();
  const img = tmpImageDir('timeout');
  assertOk(await dump({ job: name, dir: img }), 'checkpoint of timeout');
  const dumpedAfterMs = Date.now() - started;
  const r = await withTimeout(run.exited, 60_000, 'crest run of timeout after its dump');
  assert.equal(r.code, 75, describeResult('crest run of timeout after the dump (expected exit 75)', r));
  const timers = (readManifest(img)['processes'] as { posixTimers?: { left: { sec: number } }[] }[]).flatMap((p) => p.posixTimers ?? []);
  assert.equal(timers.length, 1, `timers in the image: ${JSON.stringify(timers)}`);
  assert.ok(timers[0]!.left.sec < limitS, `the timer had ${timers[0]!.left.sec} s left`);
  const at = progress();
  const t0 = Date.now();
  const fin = await withTimeout(spawnCrest(['restore', '-D', img]).exited, 90_000, 'crest restore of timeout, until the time limit ends it');
  // timeout exits 124 when its time ran out and it killed the command.
  assert.equal(fin.code, 124, describeResult('crest restore of timeout (expected 124: the time limit ended the command)', fin));
  assert.ok(progress() > at, 'the command made no progress after restore');
  // The time left at the checkpoint, not all of it again nor none (the loop's steps take 50 ms).
  const ranMs = Date.now() - t0;
  assert.ok(ranMs < limitS * 1000 + 30_000, `the restored timeout ran ${ranMs} ms of a ${limitS} s limit (checkpointed after ${dumpedAfterMs} ms)`);
});
