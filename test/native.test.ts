// Tests for the native addon (native/crest.c) against real processes.
//
// Tracees are orphans: a python3 child forks and exits at once, so the
// grandchild we trace is not a child of this Node process. That keeps libuv's
// SIGCHLD handler (which waitpid()s the children it spawned, and would swallow
// their ptrace stops) out of the way, and it is how crest meets its targets.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, release, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { native } from '../src/sys/native.js';
import { SyscallError } from '../src/sys/errors.js';
import { enabledFeatures, usedFeatures } from '../src/kinds/registers.js';

const n = native();

const PYTHON = '/usr/bin/python3';
const WNOHANG = 1;
const __WALL = 0x40000000;
const SIGTRAP = 5;
const SIGUSR1 = 10;
const SIGUSR2 = 12;
const PTRACE_O_EXITKILL = 0x100000;
const PTRACE_O_TRACESYSGOOD = 1;
const PTRACE_EVENT_STOP = 128;
const NT_PRSTATUS = 1;
const NT_X86_XSTATE = 0x202;
const RSEQ_SIG = 0x53053053;
const KCMP_FILE = 0;
const KCMP_VM = 1;
const RLIMIT_NOFILE = 7;
const RLIM_INFINITY = 0xffffffffffffffffn;
const REG_RIP = 16;
const REG_R15 = 0;
const NO_SUCH_PID = 2147483647;

const WIFSTOPPED = (s: number) => (s & 0xff) === 0x7f;
const WSTOPSIG = (s: number) => (s >> 8) & 0xff;
const EVENT = (s: number) => s >>> 16;

interface Mapping {
  start: number;
  end: number;
  perms: string;
  offset: number;
  path: string;
}

function maps(pid: number): Mapping[] {
  return readFileSync(`/proc/${pid}/maps`, 'utf8')
    .trim()
    .split('\n')
    .map((line) => {
      const [range = '', perms = '', offset = '0', , , ...rest] = line.split(/\s+/);
      const [start = '0', end = '0'] = range.split('-');
      return {
        start: parseInt(start, 16),
        end: parseInt(end, 16),
        perms,
        offset: parseInt(offset, 16),
        path: rest.join(' '),
      };
    });
}

function statusField(pid: number, field: string): string {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${field}:`));
  assert.ok(line, `${field} in /proc/${pid}/status`);
  return line.slice(field.length + 1).trim();
}

/** An orphaned python3 process that blocks SIGUSR1, prints "usr2" on SIGUSR2, and sleeps or spins. */
interface Target {
  pid: number;
  holder: ChildProcess;
  waitLine(re: RegExp, ms?: number): Promise<string>;
  kill(): void;
}

function spawnTarget(mode: 'sleep' | 'spin'): Promise<Target> {
  const script = [
    'import os, signal, sys, time',
    'if os.fork() > 0: os._exit(0)',
    'signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])',
    "signal.signal(signal.SIGUSR2, lambda s, f: print('usr2', flush=True))",
    "print('ready', os.getpid(), flush=True)",
    mode === 'sleep' ? 'while True: time.sleep(3600)' : 'while True: pass',
  ].join('\n');
  const holder = spawn(PYTHON, ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  let partial = '';
  let stderr = '';
  let wake: (() => void) | undefined;
  holder.stdout!.setEncoding('utf8');
  holder.stdout!.on('data', (chunk: string) => {
    partial += chunk;
    const parts = partial.split('\n');
    partial = parts.pop() ?? '';
    lines.push(...parts);
    wake?.();
  });
  holder.stderr!.setEncoding('utf8');
  holder.stderr!.on('data', (chunk: string) => (stderr += chunk));

  const waitLine = async (re: RegExp, ms = 10_000): Promise<string> => {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = lines.findIndex((l) => re.test(l));
      if (i >= 0) return lines.splice(i, 1)[0]!;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${re} (stderr: ${stderr})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 100));
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  };

  return waitLine(/^ready \d+$/).then((line) => {
    const pid = Number(line.split(' ')[1]);
    return {
      pid,
      holder,
      waitLine,
      kill() {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
        holder.stdout!.destroy();
        holder.stderr!.destroy();
      },
    };
  });
}

function assertSyscallError(fn: () => unknown, errnoName: string, syscall: string, extra: Partial<SyscallError> = {}) {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof SyscallError, `expected SyscallError, got ${String(e)}`);
    assert.equal(e.errnoName, errnoName);
    assert.equal(e.syscall, syscall);
    assert.equal(e.code, `SYSCALL_${errnoName}`);
    for (const [k, v] of Object.entries(extra)) assert.equal((e as unknown as Record<string, unknown>)[k], v, k);
    return true;
  });
}

describe('ptrace on a sleeping target', () => {
  let t: Target;
  let pid = 0;

  before(async () => {
    t = await spawnTarget('sleep');
    pid = t.pid;
    // SIGUSR1 is blocked in the target (bit 9 of SigBlk).
    assert.equal((BigInt(`0x${statusField(pid, 'SigBlk')}`) >> 9n) & 1n, 1n);
  });
  after(() => t?.kill());

  test('seize + interrupt + waitpid(__WALL) reports PTRACE_EVENT_STOP', () => {
    n.ptraceSeize(pid, PTRACE_O_EXITKILL);
    n.ptraceInterrupt(pid);
    const w = n.waitpid(pid, __WALL);
    assert.equal(w.pid, pid);
    assert.ok(WIFSTOPPED(w.status), `stopped: 0x${w.status.toString(16)}`);
    assert.equal(EVENT(w.status), PTRACE_EVENT_STOP);
    assert.equal(WSTOPSIG(w.status), SIGTRAP);
    assert.equal(Number(statusField(pid, 'TracerPid')), process.pid);
  });

  test('waitpid WNOHANG returns pid 0 when nothing is pending', () => {
    assert.deepEqual(n.waitpid(pid, WNOHANG | __WALL), { pid: 0, status: 0 });
  });

  test('setOptions', () => {
    n.ptraceSetOptions(pid, PTRACE_O_EXITKILL | PTRACE_O_TRACESYSGOOD);
  });

  test('getRegs returns 27 registers with rip in an executable mapping', () => {
    const regs = n.ptraceGetRegs(pid);
    assert.ok(regs instanceof BigUint64Array);
    assert.equal(regs.length, 27);
    const rip = Number(regs[REG_RIP]);
    const m = maps(pid).find((m) => rip >= m.start && rip < m.end);
    assert.ok(m, `rip 0x${rip.toString(16)} is mapped`);
    assert.ok(m.perms.includes('x'), `rip mapping ${m.perms} ${m.path} is executable`);
  });

  test('setRegs round-trips', () => {
    const orig = n.ptraceGetRegs(pid);
    const changed = orig.slice();
    changed[REG_R15] = 0x1122334455667788n;
    n.ptraceSetRegs(pid, changed);
    assert.deepEqual(n.ptraceGetRegs(pid), changed);
    n.ptraceSetRegs(pid, orig);
    assert.deepEqual(n.ptraceGetRegs(pid), orig);
  });

  test('getRegset: NT_PRSTATUS matches getRegs, NT_X86_XSTATE is > 512 bytes and writes back', () => {
    const prstatus = n.ptraceGetRegset(pid, NT_PRSTATUS, 4096);
    assert.equal(prstatus.length, 27 * 8);
    assert.deepEqual(new BigUint64Array(prstatus.buffer.slice(prstatus.byteOffset, prstatus.byteOffset + 216)), n.ptraceGetRegs(pid));
    const xstate = n.ptraceGetRegset(pid, NT_X86_XSTATE, 1 << 20);
    assert.ok(xstate.length > 512, `xstate is ${xstate.length} bytes`);
    // What the registers kind reads from it: XCR0 (x87 and SSE always on) and
    // the features in use, which XCR0 must hold (else restore could never pass its CPU check).
    const xcr0 = enabledFeatures(xstate);
    assert.equal(xcr0 & 3n, 3n, `XCR0 0x${xcr0.toString(16)}`);
    assert.equal(usedFeatures(xstate) & ~xcr0, 0n, `in use 0x${usedFeatures(xstate).toString(16)}, XCR0 0x${xcr0.toString(16)}`);
    n.ptraceSetRegset(pid, NT_X86_XSTATE, xstate);
    assert.deepEqual(n.ptraceGetRegset(pid, NT_X86_XSTATE, 1 << 24), xstate); // maxSize is capped, not refused
    assertSyscallError(() => n.ptraceGetRegset(pid, 0x7777, 4096), 'EINVAL', 'ptrace', { pid });
  });

  test('sigmask get/set round-trips', () => {
    const orig = n.ptraceGetSigmask(pid);
    assert.equal(typeof orig, 'bigint');
    assert.equal((orig >> BigInt(SIGUSR1 - 1)) & 1n, 1n);
    const more = orig | (1n << 33n); // a real-time signal nobody uses here
    n.ptraceSetSigmask(pid, more);
    assert.equal(n.ptraceGetSigmask(pid), more);
    n.ptraceSetSigmask(pid, orig);
    assert.equal(n.ptraceGetSigmask(pid), orig);
  });

  test('peekSiginfo sees blocked pending signals in the shared and per-thread queues', () => {
    assert.deepEqual(n.ptracePeekSiginfo(pid, true, 16), []);
    assert.deepEqual(n.ptracePeekSiginfo(pid, true, 0), []);
    n.kill(pid, SIGUSR1); // process-directed: shared queue
    const shared = n.ptracePeekSiginfo(pid, true, 16);
    assert.equal(shared.length, 1);
    const si = shared[0]!;
    assert.equal(si.length, 128);
    assert.equal(si.readInt32LE(0), SIGUSR1); // si_signo
    assert.equal(si.readInt32LE(8), 0); // si_code SI_USER
    assert.equal(si.readInt32LE(16), process.pid); // si_pid
    n.tgkill(pid, pid, SIGUSR1); // thread-directed: private queue
    const priv = n.ptracePeekSiginfo(pid, false, 16);
    assert.equal(priv.length, 1);
    assert.equal(priv[0]!.readInt32LE(0), SIGUSR1);
    assert.equal(priv[0]!.readInt32LE(8), -6); // SI_TKILL
  });

  test('getSiginfo and getEventMsg at the event stop', () => {
    const si = n.ptraceGetSiginfo(pid);
    assert.equal(si.length, 128);
    assert.equal(si.readInt32LE(0), SIGTRAP);
    assert.equal(si.readInt32LE(8), SIGTRAP | (PTRACE_EVENT_STOP << 8));
    assert.equal(typeof n.ptraceGetEventMsg(pid), 'bigint');
  });

  test('getRseqConfig reports glibc rseq registration', () => {
    const rseq = n.ptraceGetRseqConfig(pid);
    assert.ok(rseq, 'glibc 2.36 registers rseq');
    assert.ok(rseq.rseqAbiPointer > 0n);
    assert.ok(rseq.rseqAbiSize >= 32, `rseq size ${rseq.rseqAbiSize}`);
    assert.equal(rseq.signature, RSEQ_SIG);
    assert.equal(typeof rseq.flags, 'number');
    // struct rseq { u32 cpu_id_start; u32 cpu_id; ... }: cpu_id is a real CPU.
    const area = Buffer.alloc(32);
    assert.equal(n.processVmReadv(pid, Number(rseq.rseqAbiPointer), area, 0, 32), 32);
    assert.ok(area.readUInt32LE(4) < cpus().length, `cpu_id ${area.readUInt32LE(4)}`);
  });

  test('getRobustList reports glibc robust list head', () => {
    const r = n.getRobustList(pid);
    assert.equal(typeof r.head, 'bigint');
    assert.ok(r.head > 0n);
    assert.equal(r.len, 24);
  });

  test('processVmReadv reads the ELF header of the executable; writev writes', () => {
    const exe = readlinkSync(`/proc/${pid}/exe`);
    const m = maps(pid).find((m) => m.path === exe && m.offset === 0);
    assert.ok(m, `${exe} mapped at offset 0`);
    const buf = Buffer.alloc(16, 0xaa);
    assert.equal(n.processVmReadv(pid, m.start, buf, 4, 4), 4);
    assert.deepEqual([...buf.subarray(4, 8)], [0x7f, 0x45, 0x4c, 0x46]);
    assert.equal(buf[3], 0xaa);
    assert.equal(buf[8], 0xaa);
    assert.equal(n.processVmReadv(pid, m.start, buf, 16, 0), 0);

    const rw = maps(pid).find((m) => m.perms === 'rw-p');
    assert.ok(rw, 'a private writable mapping');
    const word = Buffer.alloc(8);
    assert.equal(n.processVmReadv(pid, rw.start, word, 0, 8), 8);
    assert.equal(n.processVmWritev(pid, rw.start, word, 0, 8), 8);
    const again = Buffer.alloc(8);
    n.processVmReadv(pid, rw.start, again, 0, 8);
    assert.deepEqual(again, word);

    assertSyscallError(() => n.processVmReadv(pid, 0, buf, 0, 8), 'EFAULT', 'process_vm_readv', { pid });
  });

  test('kcmp compares files and address spaces', () => {
    assert.equal(n.kcmp(pid, pid, KCMP_FILE, 1, 1), 0);
    assert.equal(n.kcmp(pid, pid, KCMP_VM, 0, 0), 0);
    const r = n.kcmp(process.pid, pid, KCMP_VM, 0, 0);
    assert.ok(r === 1 || r === 2, `kcmp ordering ${r}`);
    assertSyscallError(() => n.kcmp(pid, pid, KCMP_FILE, 1, 1000), 'EBADF', 'kcmp', { pid });
  });

  test('prlimit matches /proc/PID/limits', () => {
    const [soft, hard] = n.prlimit(pid, RLIMIT_NOFILE);
    assert.equal(typeof soft, 'bigint');
    assert.equal(typeof hard, 'bigint');
    assert.ok(soft <= hard);
    const line = readFileSync(`/proc/${pid}/limits`, 'utf8')
      .split('\n')
      .find((l) => l.startsWith('Max open files'));
    const [s, h] = line!.slice('Max open files'.length).trim().split(/\s+/);
    const big = (v: string | undefined) => (v === 'unlimited' ? RLIM_INFINITY : BigInt(v!));
    assert.equal(soft, big(s));
    assert.equal(hard, big(h));
    assertSyscallError(() => n.prlimit(pid, 1000), 'EINVAL', 'prlimit64', { pid });
  });

  test('capget matches /proc/PID/status', () => {
    const caps = n.capget(pid);
    assert.equal(caps.effective, BigInt(`0x${statusField(pid, 'CapEff')}`));
    assert.equal(caps.permitted, BigInt(`0x${statusField(pid, 'CapPrm')}`));
    assert.equal(caps.inheritable, BigInt(`0x${statusField(pid, 'CapInh')}`));
  });

  test('pidfdOpen returns a descriptor', () => {
    const fd = n.pidfdOpen(pid, 0);
    assert.ok(Number.isInteger(fd) && fd >= 0);
    assert.match(readlinkSync(`/proc/self/fd/${fd}`), /pidfd/);
    closeSync(fd);
  });

  test('cont, then interrupt again', () => {
    n.ptraceCont(pid, 0);
    n.ptraceInterrupt(pid);
    const w = n.waitpid(pid, __WALL);
    assert.equal(w.pid, pid);
    assert.equal(EVENT(w.status), PTRACE_EVENT_STOP);
  });

  test('detach lets the target run on', async () => {
    n.ptraceDetach(pid, 0);
    assert.equal(statusField(pid, 'TracerPid'), '0');
    assertSyscallError(() => n.ptraceGetRegs(pid), 'ESRCH', 'ptrace', { pid, op: 'PTRACE_GETREGSET NT_PRSTATUS' });
    n.kill(pid, 0);
    n.kill(pid, SIGUSR2);
    assert.equal(await t.waitLine(/^usr2$/), 'usr2');
  });
});

describe('ptrace on a spinning target', () => {
  let t: Target;
  after(() => t?.kill());

  test('singlestep stops with SIGTRAP', async () => {
    t = await spawnTarget('spin');
    const pid = t.pid;
    n.ptraceSeize(pid, PTRACE_O_EXITKILL);
    n.ptraceInterrupt(pid);
    let w = n.waitpid(pid, __WALL);
    assert.equal(EVENT(w.status), PTRACE_EVENT_STOP);
    n.ptraceSingleStep(pid, 0);
    w = n.waitpid(pid, __WALL);
    assert.ok(WIFSTOPPED(w.status));
    assert.equal(WSTOPSIG(w.status), SIGTRAP);
    assert.equal(EVENT(w.status), 0);
    n.ptraceDetach(pid, 0);
    n.kill(pid, SIGUSR2);
    await t.waitLine(/^usr2$/);
  });
});

describe('errors', () => {
  test('ptraceSeize on a missing pid throws SyscallError ESRCH', () => {
    assertSyscallError(() => n.ptraceSeize(NO_SUCH_PID, 0), 'ESRCH', 'ptrace', {
      op: 'PTRACE_SEIZE',
      pid: NO_SUCH_PID,
      errno: 3,
    });
  });

  test('other syscalls report their own names', () => {
    assertSyscallError(() => n.waitpid(NO_SUCH_PID, WNOHANG | __WALL), 'ECHILD', 'waitpid', { pid: NO_SUCH_PID });
    assertSyscallError(() => n.kill(NO_SUCH_PID, 0), 'ESRCH', 'kill', { pid: NO_SUCH_PID });
    assertSyscallError(() => n.tgkill(NO_SUCH_PID, NO_SUCH_PID, 0), 'ESRCH', 'tgkill');
    assertSyscallError(() => n.pidfdOpen(NO_SUCH_PID, 0), 'ESRCH', 'pidfd_open');
    assertSyscallError(() => n.ptraceGetRegs(process.pid), 'ESRCH', 'ptrace', { pid: process.pid });
    assertSyscallError(() => n.getRobustList(NO_SUCH_PID), 'ESRCH', 'get_robust_list');
    assertSyscallError(() => n.capget(NO_SUCH_PID), 'ESRCH', 'capget');
    assertSyscallError(() => n.prlimit(NO_SUCH_PID, RLIMIT_NOFILE), 'ESRCH', 'prlimit64');
  });

  test('without the error class the addon throws a plain Error', () => {
    const addon = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'build', 'Release', 'crest_native.node');
    const out = execFileSync(process.execPath, [
      '-e',
      `try { require(${JSON.stringify(addon)}).ptraceSeize(${NO_SUCH_PID}, 0) }
       catch (e) { console.log(JSON.stringify({ name: e.constructor.name, message: e.message, errno: e.errno, syscall: e.syscall })) }`,
    ]).toString();
    const e = JSON.parse(out) as { name: string; message: string; errno: number; syscall: string };
    assert.equal(e.name, 'Error');
    assert.equal(e.errno, 3);
    assert.equal(e.syscall, 'ptrace');
    assert.match(e.message, /PTRACE_SEIZE/);
  });

  test('bad arguments throw uniform TypeErrors', () => {
    const any = n as unknown as Record<string, (...args: unknown[]) => unknown>;
    const cases: [string, unknown[], RegExp][] = [
      ['ptraceSeize', ['1', 0], /^crest_native\.ptraceSeize: argument 1 \(pid\) must be an integer in \[1, 2147483647\]$/],
      ['ptraceSeize', [0, 0], /argument 1 \(pid\)/],
      ['ptraceSeize', [1.5, 0], /argument 1 \(pid\)/],
      ['ptraceSeize', [NaN, 0], /argument 1 \(pid\)/],
      ['ptraceSeize', [1, -1], /argument 2 \(options\)/],
      ['ptraceInterrupt', [], /argument 1 \(pid\)/],
      ['ptraceDetach', [1, 65], /argument 2 \(sig\)/],
      ['ptraceSetRegs', [1, new BigUint64Array(26)], /argument 2 \(regs\) must be a BigUint64Array of length 27/],
      ['ptraceSetRegs', [1, new Float64Array(27)], /argument 2 \(regs\)/],
      ['ptraceGetRegset', [1, NT_X86_XSTATE, 0], /argument 3 \(maxSize\)/],
      ['ptraceSetRegset', [1, NT_X86_XSTATE, 'x'], /argument 3 \(data\) must be a Buffer/],
      ['ptraceSetSigmask', [1, 5], /argument 2 \(mask\) must be a BigInt/],
      ['ptraceSetSigmask', [1, -1n], /argument 2 \(mask\)/],
      ['ptraceSetSigmask', [1, 1n << 64n], /argument 2 \(mask\)/],
      ['ptracePeekSiginfo', [1, 1, 1], /argument 2 \(shared\) must be a boolean/],
      ['ptracePeekSiginfo', [1, true, -1], /argument 3 \(max\)/],
      ['processVmReadv', [1, 0, 'x', 0, 0], /argument 3 \(buf\) must be a Buffer/],
      ['processVmReadv', [1, -1, Buffer.alloc(4), 0, 0], /argument 2 \(addr\)/],
      ['processVmReadv', [1, 0, Buffer.alloc(4), 5, 0], /argument 4 \(off\) must be an integer in \[0, 4\]/],
      ['processVmWritev', [1, 0, Buffer.alloc(4), 2, 3], /argument 5 \(len\) must be an integer in \[0, 2\]/],
      ['tgkill', [1, 0, 0], /argument 2 \(tid\)/],
      ['kcmp', [1, 1, 0, -1, 0], /argument 4 \(idx1\)/],
      ['getxattr', ['/tmp\0x', 'user.a'], /argument 1 \(path\) must be a string/],
      ['getxattr', ['/tmp', 7], /argument 2 \(name\) must be a string/],
      ['setErrorClass', [42], /argument 1 \(ctor\) must be a function/],
    ];
    for (const [fn, args, re] of cases) {
      assert.throws(() => any[fn]!(...args), (e: unknown) => {
        assert.ok(e instanceof TypeError, `${fn}: ${String(e)}`);
        assert.match(e.message, re);
        return true;
      });
    }
  });
});

describe('process and system facts', () => {
  let dir = '';
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'crest-native-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('unameRelease', () => {
    assert.equal(n.unameRelease(), release());
  });

  test('own process: prlimit, capget, robust list, kcmp', () => {
    const [soft, hard] = n.prlimit(0, RLIMIT_NOFILE);
    assert.ok(soft <= hard);
    const caps = n.capget(0);
    assert.equal(typeof caps.effective, 'bigint');
    assert.equal(caps.effective, BigInt(`0x${statusField(process.pid, 'CapEff')}`));
    assert.ok(n.getRobustList(0).head > 0n);
    assert.equal(n.kcmp(process.pid, process.pid, KCMP_VM, 0, 0), 0);
  });

  test('getxattr: value, empty value, absent, missing file', () => {
    const file = join(dir, 'f');
    writeFileSync(file, 'x');
    assert.equal(n.getxattr(file, 'user.crest.absent'), null);
    execFileSync(PYTHON, [
      '-c',
      'import os, sys; os.setxattr(sys.argv[1], "user.crest", b"hello\\0world"); os.setxattr(sys.argv[1], "user.empty", b"")',
      file,
    ]);
    assert.deepEqual(n.getxattr(file, 'user.crest'), Buffer.from('hello\0world'));
    assert.deepEqual(n.getxattr(file, 'user.empty'), Buffer.alloc(0));
    assertSyscallError(() => n.getxattr(join(dir, 'missing'), 'user.crest'), 'ENOENT', 'getxattr', { pid: 0 });
  });

  test('uffdProbe: user-mode-only userfaultfd works for ordinary users', () => {
    const r = n.uffdProbe();
    assert.deepEqual(Object.keys(r).sort(), ['errno', 'features', 'ok']);
    assert.equal(r.ok, true, `userfaultfd errno ${r.errno}`);
    assert.equal(r.errno, 0);
    assert.equal(typeof r.features, 'bigint');
    assert.ok(r.features > 0n);
  });

  test('pagemapScanProbe: PAGEMAP_SCAN exists on this kernel', () => {
    const r = n.pagemapScanProbe();
    assert.deepEqual(r, { ok: true, errno: 0 });
  });
});
