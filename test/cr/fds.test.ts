// The fd kinds (src/kinds/fds/): for each kind a target (test/targets/fd_*.c)
// sets up its open files at fixed fds; it must pass alone, each of its checks
// must fail when sabotaged, and it must pass after a checkpoint (which kills
// it) and a restore. Pipes and socketpairs are also dumped --leave-running:
// the running process must see exactly its data. Refusals (an established
// TCP connection, a pipe to outside the job ...) leave the process running,
// untraced, to finish normally.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  type TargetName,
  assertOk,
  assertPass,
  assertStillRunning,
  checkRefused,
  checksCanFail,
  createGo,
  dump,
  expectCheckpointed,
  expectKilled,
  expectRunningUntraced,
  jobTargetPids,
  readManifest,
  registerCleanup,
  restore,
  roundTrip,
  sleep,
  startJob,
  tmpImageDir,
  tmpWorkDir,
  withTimeout,
} from '../harness.js';
import { parseFdinfo } from '../../src/proc/index.js';
import { kdevToStatDev, parseEpoll, parseEventfd, parseInotify, parseSignalfd, parseTimerfd } from '../../src/kinds/fds/fdinfo.js';
import { parseLockLine } from '../../src/kinds/fds/locks.js';
import { inetAddress, parseNetInet, parseNetUnix } from '../../src/kinds/fds/procnet.js';
import { decodeSockaddr, encodeSockaddr } from '../../src/kinds/fds/inet.js';
import { parseUnixDiag } from '../../src/kinds/fds/sockdiag.js';
import { readImage } from '../../src/image/reader.js';
import { canonicalJson } from '../../src/image/canonical.js';

registerCleanup();

const TIMEOUT = 180_000;

/** The fd targets are not in the harness's list of targets; they run the same way. */
function target(name: string): TargetName {
  return name as TargetName;
}

/** One checkpoint (killing the job) and restore; the restored target must pass. Returns the image's open files. */
async function checkRoundTrip(t: TargetName, extra: string[] = []): Promise<Record<string, unknown>[]> {
  const rt = await roundTrip(t, { extra });
  assertPass(rt.restore, t, `crest restore of ${t}`);
  const resumedPids = fs.readFileSync(path.join(rt.job.workDir, 'resumed'), 'utf8').trim().split('\n');
  assert.deepEqual(resumedPids, [String(rt.job.nsPid)]);
  assert.deepEqual(jobTargetPids(rt.job), [], 'a target process outlived crest restore');
  const procs = readManifest(rt.imageDir).processes as { files: Record<string, unknown>[] }[];
  return procs[0]!.files;
}

/** A checkpoint with --leave-running: the job goes on and must pass under its own crest run; the image must restore to PASS too. */
async function checkLeaveRunning(t: TargetName, extra: string[] = []): Promise<void> {
  const job = await startJob(t, { extra });
  const dir = tmpImageDir(`${t}-leave`);
  assertOk(await dump({ job: job.name, dir, leaveRunning: true }), `dump --leave-running of ${t}`);
  assertStillRunning(job.run, `${t} after dump --leave-running`);
  await expectRunningUntraced(job.hostPid, `${t} after dump --leave-running`);
  createGo(job.workDir);
  const r = await withTimeout(job.run.exited, 60_000, `crest run of ${job.name}`);
  assertPass(r, t, `${t} left running after its checkpoint`);
  // The image of the running process restores as well (the job is gone now, its pid free again).
  assertPass(await restore(dir), t, `restore of ${t}'s --leave-running image`);
}

function kindsOf(files: Record<string, unknown>[]): string[] {
  return files.map((f) => String(f.kind));
}

const KINDS: [string, string, (files: Record<string, unknown>[]) => void][] = [
  [
    'fd_async',
    'signal-driven I/O (O_ASYNC): owners (process, thread, process group), F_SETSIG signals, delivered after restore',
    (f) => assert.equal(f.filter((x) => ((x.flags as number) & 0o20000) !== 0).length, 2, JSON.stringify(f)),
  ],
  ['fd_eventfd', 'eventfd: 64-bit count, EFD_SEMAPHORE, O_NONBLOCK, dup sharing', (f) => assert.ok(kindsOf(f).includes('eventfd'))],
  ['fd_signalfd', 'signalfd: mask, a pending signal read through it', (f) => assert.ok(kindsOf(f).includes('signalfd'))],
  ['fd_timerfd', 'timerfd: relative, absolute with cancel-on-set, unread expirations, intervals', (f) => assert.ok(kindsOf(f).includes('timerfd'))],
  ['fd_epoll', 'epoll: registrations, data, one-shot disarmed, a registration under a closed fd, nested epoll', (f) => assert.ok(kindsOf(f).includes('epoll'))],
  [
    'fd_pipe',
    'pipes: 200000 buffered bytes in a 256 KiB pipe, closed ends, packet mode, dup sharing',
    (f) => {
      const pipes = f.filter((x) => x.kind === 'pipe');
      assert.equal(pipes.length, 8, JSON.stringify(pipes));
      const withData = pipes.filter((x) => (x.buffer as { data?: { length: number } } | undefined)?.data);
      assert.deepEqual(withData.map((x) => (x.buffer as { data: { length: number } }).data.length).sort((a, b) => a - b), [10, 200000]);
    },
  ],
  ['fd_fifo', 'FIFOs: reopened by path, their bytes back, flags', (f) => assert.equal(f.filter((x) => x.kind === 'fifo').length, 3)],
  [
    'fd_unix',
    'unix sockets: stream/dgram/seqpacket pairs with queued data both ways, path and abstract listeners with backlogs',
    (f) => {
      const u = f.filter((x) => x.kind === 'unix');
      assert.equal(u.length, 8, JSON.stringify(u));
      assert.deepEqual(u.filter((x) => x.state === 'listen').map((x) => x.backlog), [7, 3]);
    },
  ],
  [
    'fd_inet',
    'TCP/UDP: listeners (v4, v6) with backlogs and options, a bound UDP socket, a bound TCP socket, an unbound one, a connected UDP socket',
    (f) => {
      const i = f.filter((x) => x.kind === 'inet');
      assert.equal(i.length, 6, JSON.stringify(i));
      assert.equal(i.filter((x) => x.state === 'connected').length, 1, JSON.stringify(i));
      assert.deepEqual(i.filter((x) => x.state === 'listen').map((x) => x.backlog), [5, 9]);
    },
  ],
  [
    'fd_memfd',
    'memfds (contents, seals, names, two descriptions) and a file deleted while open',
    (f) => assert.deepEqual(kindsOf(f).filter((k) => k === 'memfd' || k === 'deleted'), ['memfd', 'memfd', 'memfd', 'deleted', 'deleted']),
  ],
  [
    'fd_locks',
    'flock, POSIX and OFD locks taken again (on a deleted file too)',
    (f) => assert.equal(f.filter((x) => Array.isArray(x.locks)).length, 4),
  ],
  [
    'fd_inotify',
    'inotify: watches found by inode, same wds (a gap included), one-shot, masks',
    (f) => {
      const i = f.find((x) => x.kind === 'inotify') as { watches: { wd: number }[] } | undefined;
      assert.deepEqual(i?.watches.map((w) => w.wd), [1, 2, 4]);
    },
  ],
];

for (const [name, title, inspect] of KINDS) {
  describe(name, () => {
    test('passes alone; every check can fail', { timeout: TIMEOUT }, async () => {
      await checksCanFail(target(name));
    });
    test(`round trip: ${title}`, { timeout: TIMEOUT }, async () => {
      inspect(await checkRoundTrip(target(name)));
    });
  });
}

describe('--leave-running: the running process sees exactly its data', () => {
  test('fd_pipe (tee leaves the pipes untouched, no fd left behind)', { timeout: TIMEOUT }, async () => {
    await checkLeaveRunning(target('fd_pipe'));
  });
  test('fd_unix (peeked queues, peek offset put back, no fd left behind; the restore rebinds over the stale socket file)', { timeout: TIMEOUT }, async () => {
    await checkLeaveRunning(target('fd_unix'));
  });
});

describe('a unix listener with a connection waiting to be accepted (its client in the process)', () => {
  test('round trip: accept() returns it after restore', { timeout: TIMEOUT }, async () => {
    const files = await checkRoundTrip(target('fd_unix'), ['pending']);
    const listener = files.find((x) => x.kind === 'unix' && x.state === 'listen' && x.type === 'stream') as { pending?: number[] } | undefined;
    assert.equal(listener?.pending?.length, 1, JSON.stringify(listener));
  });
});

describe('refusals leave the process running, untraced', () => {
  test('fd_other passes alone; its check can fail', { timeout: TIMEOUT }, async () => {
    await checksCanFail(target('fd_other'));
  });

  test('a FIFO whose reader is outside the job', { timeout: TIMEOUT }, async () => {
    const workDir = tmpWorkDir('fd_fifo-outside');
    const fifoPath = path.join(workDir, 'outfifo');
    execFileSync('mkfifo', ['-m', '600', fifoPath]);
    const reader = fs.openSync(fifoPath, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    try {
      const job = await startJob(target('fd_fifo'), { workDir, extra: ['outside'] });
      await checkRefused(job, /fd 13 \(fifo\).*outfifo.*read end is open outside the process/);
    } finally {
      fs.closeSync(reader);
    }
  });

  test('inotify events queued at the checkpoint', { timeout: TIMEOUT }, async () => {
    const job = await startJob(target('fd_inotify'), { extra: ['queued'] });
    await checkRefused(job, /fd 10 \(inotify\): \d+ bytes of events are queued/);
  });

  test('an fd of a kind crest does not know (a pidfd), named with pid, fd and kind', { timeout: TIMEOUT }, async () => {
    const job = await startJob(target('fd_other'));
    await checkRefused(job, /fd 10 \(pidfd\): pidfd \(anon_inode:\[pidfd\]\) is not supported/);
  });

  test('a pipe whose read end is outside the job', { timeout: TIMEOUT }, async () => {
    const job = await startJob(target('fd_pipe'), { extra: ['outside'] });
    // Take the read end out of the job: open it through /proc from here, then let the target close its own.
    const reader = fs.openSync(`/proc/${job.hostPid}/fd/19`, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    try {
      fs.writeFileSync(path.join(job.workDir, 'close19'), '');
      const end = Date.now() + 10_000;
      while (fs.existsSync(`/proc/${job.hostPid}/fd/19`) && Date.now() < end) await sleep(10);
      assert.ok(!fs.existsSync(`/proc/${job.hostPid}/fd/19`), 'the target did not close fd 19');
      await checkRefused(job, /fd 20 \(pipe\): pipe:\[\d+\]: its read end is open outside the process/);
    } finally {
      fs.closeSync(reader);
    }
  });

  test('an established TCP connection', { timeout: TIMEOUT }, async () => {
    const job = await startJob(target('fd_inet'), { extra: ['established'] });
    await checkRefused(job, /fd 1[56] \(TCP socket\): established TCP connection 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+: it lives in a network namespace crest does not own.*`crest run --net`.*--tcp-close/);
  });
});

// ------------------------------------------------------------------ pure parts

describe('parsers of the kernel text the fd kinds read', () => {
  test('fdinfo: eventfd (hex count), timerfd, signalfd, epoll, inotify', () => {
    const info = (text: string) => parseFdinfo(`pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\n${text}`);
    assert.deepEqual(parseEventfd(info('eventfd-count:       123456789a\neventfd-id: 4\neventfd-semaphore: 1\n')), { count: 0x123456789an, semaphore: true });
    assert.deepEqual(parseEventfd(info('eventfd-count:                0\n')), { count: 0n, semaphore: null });
    assert.deepEqual(parseTimerfd(info('clockid: 1\nticks: 3\nsettime flags: 03\nit_value: (2, 999944206)\nit_interval: (1, 500)\n')), {
      clockid: 1,
      ticks: 3,
      settimeFlags: 3,
      value: { sec: 2, nsec: 999944206 },
      interval: { sec: 1, nsec: 500 },
    });
    assert.equal(parseSignalfd(info('sigmask:\t0000001000000200\n')), 0x1000000200n);
    assert.deepEqual(parseEpoll(info('tfd:       15 events: 80000019 data:               15  pos:0 ino:40e sdev:10\n')), [
      { tfd: 15, events: 0x80000019, data: 0x15n, pos: 0, ino: 0x40e, sdev: 0x10 },
    ]);
    assert.deepEqual(
      parseInotify(info('inotify wd:a ino:224007 sdev:fe00000 mask:80000002 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:07402200133d8d0d\n')),
      [{ wd: 10, ino: 0x224007, sdev: 0xfe00000, mask: 0x80000002, ignoredMask: 0 }],
    );
    assert.throws(() => parseTimerfd(info('clockid: 1\n')), /ticks/);
  });

  test('device numbers: the kernel encoding (fdinfo sdev, unix_diag) to stat(2)', () => {
    assert.equal(kdevToStatDev(0xfe00000), 0xfe00); // 254:0
    assert.equal(kdevToStatDev((8 << 20) | 1), 0x801); // 8:1
    assert.equal(kdevToStatDev((259 << 20) | 300), 0x11032c); // 259:300: minor above 255
  });

  test('lock lines', () => {
    assert.deepEqual(parseLockLine('1: POSIX  ADVISORY  WRITE 12817 fe:00:2146467 10 14'), { kind: 'posix', write: true, start: 10, end: 14 });
    assert.deepEqual(parseLockLine('2: FLOCK  ADVISORY  READ 12817 fe:00:2146467 0 EOF'), { kind: 'flock', write: false, start: 0, end: null });
    assert.deepEqual(parseLockLine('3: OFDLCK ADVISORY  READ -1 fe:00:2146471 0 EOF'), { kind: 'ofd', write: false, start: 0, end: null });
    assert.equal(parseLockLine('4: -> POSIX  ADVISORY  WRITE 12 fe:00:1 0 EOF'), null);
    assert.ok('why' in (parseLockLine('5: LEASE  ACTIVE    READ 12 fe:00:1 0 EOF') as object));
  });

  test('/proc/net tables and socket addresses', () => {
    const u = parseNetUnix(
      'Num       RefCount Protocol Flags    Type St Inode Path\n' +
        '0000000054bc7cde: 00000002 00000000 00010000 0001 01 1056 /tmp/x/sock\n' +
        '00000000cdaeaea2: 00000003 00000000 00000000 0002 03 100635\n',
    );
    assert.deepEqual(u.get(1056), { flags: 0x10000, type: 1, state: 1, path: '/tmp/x/sock' });
    assert.deepEqual(u.get(100635), { flags: 0, type: 2, state: 3, path: '' });
    const t = parseNetInet(
      '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n' +
        '   0: 0100007F:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1060 1 0000000033117db1 100 0 0 10 0\n',
    );
    assert.deepEqual(t.get(1060), { local: { address: '127.0.0.1', port: 2024 }, remote: { address: '0.0.0.0', port: 0 }, state: 10 });
    assert.equal(inetAddress('00000000000000000000000001000000'), '::1');
    assert.equal(inetAddress('B80D0120000000000000000001000000'), '2001:db8::1');
    for (const [fam, addr] of [
      [4, '10.1.2.3'],
      [6, '::1'],
      [6, '2001:db8::8:800:200c:417a'],
      [6, 'fe80::1:2'],
    ] as const) {
      const d = decodeSockaddr(encodeSockaddr(fam, addr, 8080));
      assert.deepEqual([d.family, d.address, d.port], [fam, addr, 8080]);
    }
  });

  test('unix_diag answers', () => {
    const b = Buffer.alloc(64);
    b.writeUInt32LE(64, 0);
    b.writeUInt16LE(20, 4);
    b.writeUInt8(1, 16); // AF_UNIX
    b.writeUInt8(5, 17); // seqpacket
    b.writeUInt8(10, 18); // listen
    b.writeUInt32LE(777, 20);
    let at = 32;
    const attr = (type: number, payload: Buffer) => {
      b.writeUInt16LE(4 + payload.length, at);
      b.writeUInt16LE(type, at + 2);
      payload.copy(b, at + 4);
      at += (4 + payload.length + 3) & ~3;
    };
    const rq = Buffer.alloc(8);
    rq.writeUInt32LE(2, 0);
    rq.writeUInt32LE(7, 4);
    attr(4, rq);
    attr(0, Buffer.from('\0abc'));
    attr(6, Buffer.from([0]));
    const d = parseUnixDiag(b);
    assert.deepEqual({ ino: d.ino, type: d.type, state: d.state, rqlen: d.rqlen, name: d.name?.toString('latin1') }, {
      ino: 777,
      type: 5,
      state: 10,
      rqlen: { rqueue: 2, wqueue: 7 },
      name: '\0abc',
    });
    const err = Buffer.alloc(36);
    err.writeUInt32LE(36, 0);
    err.writeUInt16LE(2, 4);
    err.writeInt32LE(-2, 16);
    assert.throws(() => parseUnixDiag(err), /errno 2/);
  });
});

describe('images with every fd kind read back and re-encode to the same bytes', () => {
  test('fd_unix and fd_memfd images', { timeout: TIMEOUT }, async () => {
    for (const t of ['fd_unix', 'fd_memfd']) {
      const job = await startJob(target(t));
      const dir = tmpImageDir(`${t}-bytes`);
      assertOk(await dump({ job: job.name, dir }), `dump of ${t}`);
      await expectCheckpointed(job);
      await expectKilled(job);
      const m = readImage(dir);
      assert.equal(canonicalJson(m), fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8'), `${t}: the manifest does not re-encode to its bytes`);
    }
  });
});
