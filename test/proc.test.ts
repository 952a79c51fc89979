import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CrestError } from '../src/sys/errors.js';
import {
  AT,
  auxvGet,
  parseAuxv,
  parseChildren,
  parseFdinfo,
  parseMaps,
  parseSmaps,
  parseStat,
  parseStatus,
  readAuxv,
  readChildren,
  readFdinfo,
  readMaps,
  readSmaps,
  readStat,
  readStatus,
  readTasks,
} from '../src/proc/index.js';

function repoRoot(): string {
  let d = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(d, 'package.json'))) {
    const up = dirname(d);
    if (up === d) throw new Error('package.json not found');
    d = up;
  }
  return d;
}
const FIX = join(repoRoot(), 'test', 'fixtures', 'proc');
const fixText = (name: string): string => readFileSync(join(FIX, name), 'utf8');

function assertParseError(fn: () => unknown, ...mustContain: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof CrestError, `expected CrestError, got ${String(e)}`);
    assert.equal(e.code, 'PROC_PARSE');
    for (const s of mustContain) assert.ok(e.message.includes(s), `message ${JSON.stringify(e.message)} lacks ${JSON.stringify(s)}`);
    return true;
  });
}

// The fixtures come from a copy of sleep named "a b) c" run from "/tmp/crest fix/"
// as crestdev, whose binary was deleted while it ran; fd 3 was /etc/passwd, fd 1 a pipe.

test('maps fixture: paths with spaces, deleted, labels, anonymous, vsyscall', () => {
  const maps = parseMaps(fixText('maps.txt'));
  assert.equal(maps.length, 37);
  const first = maps[0]!;
  assert.deepEqual(first, {
    start: 0x55efc5c64000, end: 0x55efc5c66000, perms: 'r--p', read: true, write: false, exec: false, shared: false,
    offset: 0, devMajor: 0xfe, devMinor: 0, inode: 2146607, path: '/tmp/crest fix/a b) c', deleted: true, vsyscall: false,
  });
  const text = maps[1]!;
  assert.equal(text.perms, 'r-xp');
  assert.ok(text.exec && text.read && !text.write);
  assert.equal(text.offset, 0x2000);
  const heap = maps.find((m) => m.path === '[heap]')!;
  assert.ok(heap.write && !heap.deleted && heap.inode === 0);
  const anon = maps.filter((m) => m.path === '');
  assert.ok(anon.length >= 3);
  assert.ok(anon.every((m) => m.inode === 0 && m.devMajor === 0 && !m.deleted));
  const shared = maps.find((m) => m.shared)!;
  assert.equal(shared.path, '/usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache');
  const size = (p: string): number => { const m = maps.find((x) => x.path === p)!; return m.end - m.start; };
  assert.equal(size('[vvar]'), 0x4000);
  assert.equal(size('[vvar_vclock]'), 0x2000);
  assert.equal(size('[vdso]'), 0x2000);
  assert.equal(size('[stack]'), 0x21000);
  const vs = maps[maps.length - 1]!;
  assert.equal(vs.path, '[vsyscall]');
  assert.equal(vs.vsyscall, true);
  assert.equal(vs.perms, '--xp');
  assert.equal(maps.filter((m) => m.vsyscall).length, 1);
  for (const m of maps.filter((x) => !x.vsyscall)) {
    assert.ok(Number.isSafeInteger(m.start) && Number.isSafeInteger(m.end) && m.end > m.start);
    assert.equal(m.start % 4096, 0);
  }
});

test('maps: path edge cases', () => {
  const [a, b, c, d] = parseMaps(
    '7f0000000000-7f0000001000 rw-s 00000000 00:01 1234                       /memfd:my buf (deleted)\n' +
      '7f0000001000-7f0000002000 rw-p 00000000 00:00 0                          [anon:glibc: malloc]\n' +
      '7f0000002000-7f0000003000 r--p 00001000 08:11 99                         /data/new\\012line\n' +
      '7f0000003000-7f0000004000 ---p 00000000 00:00 0\n',
  );
  assert.equal(a!.path, '/memfd:my buf');
  assert.ok(a!.deleted && a!.shared);
  assert.equal(b!.path, '[anon:glibc: malloc]');
  assert.equal(c!.path, '/data/new\nline');
  assert.equal(c!.devMajor, 8);
  assert.equal(c!.devMinor, 0x11);
  assert.equal(d!.path, '');
  assert.ok(!d!.read && !d!.write && !d!.exec);
  assert.deepEqual(parseMaps(''), []);
});

test('maps: malformed input throws PROC_PARSE naming file and line', () => {
  assertParseError(() => parseMaps('garbage here\n', '/proc/1/maps'), '/proc/1/maps', 'garbage here');
  assertParseError(() => parseMaps('7f0000000000-7f0000001000 rwxq 00000000 00:00 0\n'), 'rwxq');
  assertParseError(() => parseMaps('7f0000002000-7f0000001000 rw-p 00000000 00:00 0\n'), 'end address below');
});

test('smaps fixture: same mappings as maps, sizes, VmFlags', () => {
  const smaps = parseSmaps(fixText('smaps.txt'));
  const maps = parseMaps(fixText('maps.txt'));
  assert.equal(smaps.length, maps.length);
  smaps.forEach((s, i) => {
    const m = maps[i]!;
    assert.equal(s.start, m.start);
    assert.equal(s.end, m.end);
    assert.equal(s.path, m.path);
    assert.equal(s.deleted, m.deleted);
    assert.equal(s.sizes.Size! * 1024, s.vsyscall ? 4096 : m.end - m.start);
    for (const k of ['Rss', 'Pss', 'Anonymous', 'Swap', 'KernelPageSize', 'Private_Dirty']) {
      assert.equal(typeof s.sizes[k], 'number', `${k} of ${s.path}`);
    }
    assert.ok(s.vmFlags.length > 0);
    assert.ok(s.vmFlags.every((f) => /^[a-z0-9]{2}$/.test(f)), s.vmFlags.join(','));
  });
  const heap = smaps.find((s) => s.path === '[heap]')!;
  assert.ok(heap.vmFlags.includes('rd') && heap.vmFlags.includes('wr'));
  assert.ok(heap.sizes.Anonymous! > 0);
  const shared = smaps.find((s) => s.shared)!;
  assert.ok(shared.vmFlags.includes('ms')); // may-share; 'sh' only when writable
  assert.equal(smaps.find((s) => s.path === '[vdso]')!.vmFlags.includes('ex'), true);
  assert.ok('THPeligible' in heap.fields);
});

test('smaps: malformed input throws PROC_PARSE', () => {
  assertParseError(() => parseSmaps('Rss:   4 kB\n', 'smaps-x'), 'smaps-x', 'before the first mapping');
  assertParseError(() => parseSmaps('7f0000000000-7f0000001000 rw-p 00000000 00:00 0\n!!bad\n'), '!!bad');
});

test('status fixture', () => {
  const s = parseStatus(fixText('status.txt'));
  assert.equal(s.name, 'a b) c');
  assert.equal(s.umask, 0o022);
  assert.equal(s.state, 'S');
  assert.equal(s.stateName, 'sleeping');
  assert.equal(s.tgid, 4708);
  assert.equal(s.pid, 4708);
  assert.equal(s.ppid, 4706);
  assert.equal(s.tracerPid, 0);
  assert.deepEqual(s.uid, [1001, 1001, 1001, 1001]);
  assert.deepEqual(s.gid, [1001, 1001, 1001, 1001]);
  assert.deepEqual(s.groups, [1001]);
  assert.deepEqual(s.nstgid, [4708]);
  assert.deepEqual(s.nspid, [4708]);
  assert.deepEqual(s.nspgid, [4704]);
  assert.deepEqual(s.nssid, [4704]);
  assert.equal(s.threads, 1);
  assert.equal(s.sigPnd, 0n);
  assert.equal(s.sigIgn, 6n);
  assert.equal(s.capEff, 0n);
  assert.equal(s.capBnd, 0x1fffeffffffn);
  assert.equal(s.noNewPrivs, false);
  assert.equal(s.seccomp, 0);
  assert.equal(s.raw.VmRSS, '1664 kB');
  assert.equal(s.raw.Cpus_allowed_list, '0-1');
});

test('status fixture of a process in a nested pid namespace', () => {
  const s = parseStatus(fixText('status-nested-pidns.txt'));
  assert.deepEqual(s.nstgid, [32706, 1]);
  assert.deepEqual(s.nspid, [32706, 1]);
  assert.deepEqual(s.nspgid, [32702, 0]);
  assert.equal(s.capEff, 0x1ffffffffffn);
});

test('status: malformed input throws PROC_PARSE', () => {
  const good = fixText('status.txt');
  assertParseError(() => parseStatus(good.replace(/^Pid:.*\n/m, ''), 'status-f'), 'status-f', 'Pid');
  assertParseError(() => parseStatus(good.replace(/^Uid:.*$/m, 'Uid:\t1\t2'), 'st'), 'Uid');
  assertParseError(() => parseStatus(good.replace(/^SigBlk:.*$/m, 'SigBlk:\txyz'), 'st'), 'SigBlk', 'xyz');
  assertParseError(() => parseStatus(good.replace(/^Umask:.*$/m, 'Umask:\t0999'), 'st'), 'Umask');
  assertParseError(() => parseStatus('no colon here\n', 'st'), 'no colon here');
});

test('stat fixture: comm with spaces and parentheses', () => {
  const st = parseStat(fixText('stat.txt'));
  assert.equal(st.pid, 4708);
  assert.equal(st.comm, 'a b) c');
  assert.equal(st.state, 'S');
  assert.equal(st.ppid, 4706);
  assert.equal(st.pgrp, 4704);
  assert.equal(st.session, 4704);
  assert.equal(st.tty_nr, 0);
  assert.equal(st.tpgid, -1);
  assert.equal(st.priority, 20);
  assert.equal(st.nice, 0);
  assert.equal(st.num_threads, 1);
  assert.equal(st.rsslim, 18446744073709551615n);
  assert.equal(st.sigignore, 6n);
  assert.equal(st.exit_signal, 17);
  assert.equal(st.startcode, 94488303656960);
  assert.equal(st.endcode, 94488303674889);
  assert.equal(st.startstack, 140731879194720);
  assert.equal(st.start_data, 94488303688976);
  assert.equal(st.end_data, 94488303690240);
  assert.equal(st.start_brk, 94488509370368);
  assert.equal(st.arg_start, 140731879197312);
  assert.equal(st.arg_end, 140731879197337);
  assert.equal(st.env_start, 140731879197337);
  assert.equal(st.env_end, 140731879198690);
  assert.equal(st.exit_code, 0);
  assert.deepEqual(st.extra, []);
  // Cross-check with maps: the heap begins at start_brk, code within the executable's r-x mapping.
  const maps = parseMaps(fixText('maps.txt'));
  assert.equal(maps.find((m) => m.path === '[heap]')!.start, st.start_brk);
  const text = maps.find((m) => m.exec && m.deleted)!;
  assert.ok(st.startcode >= text.start && st.endcode <= text.end);
});

test('stat: tricky comm and malformed input', () => {
  const base = fixText('stat.txt').replace('(a b) c)', '(x)');
  const weird = parseStat(base.replace('(x)', '() ) (S 1 )'));
  assert.equal(weird.comm, ') ) (S 1 ');
  assert.equal(weird.state, 'S');
  assert.equal(weird.ppid, 4706);
  assertParseError(() => parseStat('4708 sleep S 1 2 3\n', 'stat-f'), 'stat-f', '4708 sleep');
  assertParseError(() => parseStat('4708 (sleep) S 1 2 3\n'), 'expected 52 fields');
  assertParseError(() => parseStat(base.replace(' 20 0 1 ', ' 20 x 1 ')), 'nice');
  const extra = parseStat(`${base.trimEnd()} 7 8\n`);
  assert.deepEqual(extra.extra, ['7', '8']);
});

test('fdinfo fixtures: regular file, pipe, epoll, eventfd', () => {
  const file = parseFdinfo(fixText('fdinfo-file.txt'));
  assert.deepEqual({ pos: file.pos, flags: file.flags, mntId: file.mntId, ino: file.ino }, { pos: 0, flags: 0o100000, mntId: 27, ino: 2244616 });
  const pipe = parseFdinfo(fixText('fdinfo-pipe.txt'));
  assert.equal(pipe.flags & 3, 1); // O_WRONLY
  assert.equal(pipe.ino, 8464);
  const ep = parseFdinfo(fixText('fdinfo-epoll.txt'));
  assert.equal(ep.flags & 0o2000000, 0o2000000); // O_CLOEXEC
  assert.equal(ep.fields.tfd!.split('\n').length, 3);
  assert.equal(ep.lines.filter((l) => l.startsWith('tfd:')).length, 3);
  const ev = parseFdinfo(fixText('fdinfo-eventfd.txt'));
  assert.equal(ev.fields['eventfd-count'], '0');
  assert.equal(ev.fields['eventfd-semaphore'], '0');
});

test('fdinfo: malformed input throws PROC_PARSE', () => {
  assertParseError(() => parseFdinfo('pos:\t0\nmnt_id:\t3\n', 'fdinfo/9'), 'fdinfo/9', 'flags');
  assertParseError(() => parseFdinfo('pos:\t0\nflags:\t0109\nmnt_id:\t3\n'), 'flags', '0109');
  assertParseError(() => parseFdinfo('pos 0\n'), 'pos 0');
});

test('auxv fixture', () => {
  const buf = readFileSync(join(FIX, 'auxv.bin'));
  const av = parseAuxv(buf);
  assert.equal(av.length, buf.length / 16 - 1);
  assert.ok(av.every(([t]) => t !== AT.NULL));
  assert.equal(auxvGet(av, AT.PAGESZ), 4096n);
  assert.equal(auxvGet(av, AT.UID), 1001n);
  const vdso = parseMaps(fixText('maps.txt')).find((m) => m.path === '[vdso]')!;
  assert.equal(auxvGet(av, AT.SYSINFO_EHDR), BigInt(vdso.start));
  assert.deepEqual(parseAuxv(Buffer.alloc(0)), []);
});

test('auxv: malformed input throws PROC_PARSE', () => {
  assertParseError(() => parseAuxv(Buffer.alloc(17), 'auxv-f'), 'auxv-f', 'multiple of 16');
  const noNull = Buffer.alloc(16);
  noNull.writeBigUInt64LE(6n, 0);
  assertParseError(() => parseAuxv(noNull), 'AT_NULL');
});

test('children: parse', () => {
  assert.deepEqual(parseChildren(''), []);
  assert.deepEqual(parseChildren('12 34 '), [12, 34]);
  assertParseError(() => parseChildren('12 x', 'children-f'), 'children-f');
});

test('live /proc/self', () => {
  const maps = readMaps('self');
  for (const label of ['[stack]', '[vdso]', '[vvar]']) assert.ok(maps.some((m) => m.path === label), label);
  assert.ok(maps.some((m) => m.path === process.execPath || m.path.endsWith('/node')));
  const smaps = readSmaps('self');
  assert.ok(smaps.length > 10 && smaps.every((s) => s.vmFlags.length > 0));
  const status = readStatus('self');
  assert.equal(status.pid, process.pid);
  assert.equal(status.ppid, process.ppid);
  assert.equal(status.uid[0], process.getuid!());
  assert.equal(status.umask, process.umask());
  assert.ok(status.threads >= 1);
  assert.equal(readTasks('self').length, status.threads);
  const pstat = readStat(process.pid);
  assert.equal(pstat.pid, process.pid);
  assert.equal(pstat.num_threads, status.threads);
  assert.equal(pstat.comm, status.name);
  const thread = readStatus(process.pid, process.pid);
  assert.equal(thread.pid, process.pid);
  const av = readAuxv('self');
  assert.equal(auxvGet(av, AT.PAGESZ), 4096n);
  assert.equal(auxvGet(av, AT.SYSINFO_EHDR), BigInt(maps.find((m) => m.path === '[vdso]')!.start));

  const fd = openSync('/proc/self/status', 'r');
  try {
    readSync(fd, Buffer.alloc(10), 0, 10, null);
    const info = readFdinfo('self', fd);
    assert.equal(info.pos, 10);
    assert.equal(info.flags & 3, 0);
    assert.equal(typeof info.ino, 'number');
  } finally {
    closeSync(fd);
  }
});

test('live children and a vanished pid', async () => {
  const child = spawn('sleep', ['30'], { stdio: 'ignore' });
  try {
    await new Promise<void>((resolve, reject) => { child.once('spawn', resolve); child.once('error', reject); });
    assert.ok(readChildren(process.pid).includes(child.pid!));
    assert.equal(readStatus(child.pid!).ppid, process.pid);
  } finally {
    child.kill('SIGKILL');
  }
  assert.throws(() => readStatus(0x3fffffff), (e: unknown) => e instanceof CrestError && e.code === 'PROC_GONE');
});
