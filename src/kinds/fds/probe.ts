// What `crest check` says about each fd kind: whether this kernel, for this
// user, shows and accepts what the kind needs. Each probe does what dump and
// restore do, for real, inside a throwaway child (`sleep`) seized the same way
// a job is: objects are created by injected system calls, and the kernel's
// answers (fdinfo lines, kcmp, tee, unix_diag, TCP_INFO ...) are read back.
import { spawn } from 'node:child_process';
import { existsSync, lstatSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { KCMP_FILE, MAP, PROT, SYS } from '../../sys/constants.js';
import { native } from '../../sys/native.js';
import { readFdinfo, readMaps, readStat } from '../../proc/index.js';
import { Thread, findSyscallInsn, sleepMs } from '../../tracer/tracer.js';
import { ScratchAllocator } from '../types.js';
import {
  AF_INET, AF_UNIX, EFD_SEMAPHORE, EPOLL_CTL_ADD, FCNTL, IOCTL, IPPROTO_TCP, KCMP_EPOLL_TFD, MFD_ALLOW_SEALING, NR, O_TMPFILE,
  SO, SOCK_STREAM, SOL_SOCKET, SPLICE_F_NONBLOCK, TCP_INFO, LOCK_EX, LOCK_NB,
} from './abi.js';
import { parseEpoll, parseEventfd, parseInotify, parseSignalfd, parseTimerfd } from './fdinfo.js';
import { call, getsockoptInt, ioctlInt, raw, setsockoptSol, type Injector } from './inject.js';
import { unixDiag } from './sockdiag.js';
import { MEMORY_PROBES } from '../memshare.js';
import { TIMER_PROBES } from '../timers.js';

/** One fd kind's verdict: ok true (handled), false (refused here, and why), null (not tried). */
export interface FdKindVerdict {
  kind: string;
  ok: boolean | null;
  detail: string;
}

export interface ProbeCtx extends Injector {
  pid: number;
}

const SCRATCH = 16384;

/** pipe2(fds, flags) or socketpair(domain, type, protocol, fds): the two fds. */
function pair(ij: ProbeCtx, nr: number, name: string, ...args: number[]): [number, number] {
  const at = ij.mem.alloc(8);
  if (nr === NR.pipe2) call(ij, name, `probe ${name}`, nr, at, ...args);
  else call(ij, name, `probe ${name}`, nr, ...args, at);
  const b = ij.thread.readMem(at, 8);
  return [b.readInt32LE(0), b.readInt32LE(4)];
}

/** The probes, by kind: each returns what works (a sentence) or throws why the kind cannot work. */
const PROBES: [string, (ij: ProbeCtx) => string][] = [
  ['file', () => 'regular files and directories: reopened by path (always)'],
  ['chardev', () => 'character devices under /dev except terminals: reopened by path (always)'],
  ['stdio', () => "the job's standard streams from outside: become crest restore's, a terminal with the job's line settings (always)"],
  [
    'tty',
    (ij) => {
      // What restore does to crest restore's terminal, tried on a new pty: read the settings, set others, read them back.
      const m = raw(ij, NR.openat, -100, ij.mem.str('/dev/ptmx'), 2 /* O_RDWR */ | 0o400 /* O_NOCTTY */, 0);
      if (m < 0) return `the job's terminal opened again (/dev/tty) comes back as crest restore's /dev/tty (not tried: /dev/ptmx fails with errno ${-m})`;
      call(ij, 'ioctl', 'unlock the probe pty', NR.ioctl, m, IOCTL.TIOCSPTLCK, ij.mem.put(Buffer.alloc(4)));
      const s = call(ij, 'ioctl', 'open the probe pty', NR.ioctl, m, IOCTL.TIOCGPTPEER, 2 | 0o400);
      const at = ij.mem.alloc(36);
      call(ij, 'ioctl', 'TCGETS', NR.ioctl, s, IOCTL.TCGETS, at);
      const t = ij.thread.readMem(at, 36);
      t.writeUInt32LE(t.readUInt32LE(12) ^ 0o10 /* ECHO */, 12);
      ij.thread.writeMem(at, t);
      call(ij, 'ioctl', 'TCSETS', NR.ioctl, s, IOCTL.TCSETS, at);
      call(ij, 'ioctl', 'TCGETS', NR.ioctl, s, IOCTL.TCGETS, at);
      if (ij.thread.readMem(at, 36).readUInt32LE(12) !== t.readUInt32LE(12)) throw new Error('TCSETS did not change the echo flag of a pty: terminal settings cannot be given back');
      raw(ij, NR.close, s);
      raw(ij, NR.close, m);
      return "terminal settings read and set with TCGETS/TCSETS (tried on a new pty); the job's terminal opened again (/dev/tty) comes back as crest restore's /dev/tty";
    },
  ],
  [
    'eventfd',
    (ij) => {
      const fd = call(ij, 'eventfd2', 'probe', NR.eventfd2, 5, EFD_SEMAPHORE);
      const e = parseEventfd(readFdinfo(ij.pid, fd));
      if (e.semaphore === null) throw new Error("fdinfo does not show eventfd-semaphore (Linux 6.3+): eventfds are refused");
      if (e.count !== 5n || !e.semaphore) throw new Error(`fdinfo shows count ${e.count}, semaphore ${e.semaphore} for an eventfd of 5 in semaphore mode`);
      return 'fdinfo shows the count and EFD_SEMAPHORE';
    },
  ],
  [
    'timerfd',
    (ij) => {
      const fd = call(ij, 'timerfd_create', 'probe', NR.timerfd_create, 1, 0);
      const its = Buffer.alloc(32);
      its.writeBigInt64LE(100n, 16);
      call(ij, 'timerfd_settime', 'probe', NR.timerfd_settime, fd, 0, ij.mem.put(its), 0);
      const t = parseTimerfd(readFdinfo(ij.pid, fd));
      if (t.value.sec < 90) throw new Error(`fdinfo shows ${t.value.sec} s left on a 100 s timer`);
      const ticks = Buffer.alloc(8);
      ticks.writeBigUInt64LE(1n, 0);
      const r = raw(ij, NR.ioctl, fd, IOCTL.TFD_IOC_SET_TICKS, ij.mem.put(ticks));
      return r === 0
        ? 'fdinfo shows clock, time left, interval, flags and expirations; TFD_IOC_SET_TICKS puts unread expirations back'
        : `fdinfo shows what is needed, but TFD_IOC_SET_TICKS fails (errno ${-r}): a timerfd with expirations not yet read cannot be restored`;
    },
  ],
  [
    'signalfd',
    (ij) => {
      const mask = Buffer.alloc(8);
      mask.writeBigUInt64LE(1n << 9n, 0);
      const fd = call(ij, 'signalfd4', 'probe', NR.signalfd4, -1, ij.mem.put(mask), 8, 0);
      if (parseSignalfd(readFdinfo(ij.pid, fd)) !== 1n << 9n) throw new Error('fdinfo does not show the signal mask given');
      return 'fdinfo shows the signal mask';
    },
  ],
  [
    'epoll',
    (ij) => {
      const ep = call(ij, 'epoll_create1', 'probe', NR.epoll_create1, 0);
      const ev = call(ij, 'eventfd2', 'probe', NR.eventfd2, 0, 0);
      const e = Buffer.alloc(12);
      e.writeUInt32LE(1, 0);
      e.writeBigUInt64LE(0x1234n, 4);
      call(ij, 'epoll_ctl', 'probe', NR.epoll_ctl, ep, EPOLL_CTL_ADD, ev, ij.mem.put(e));
      const t = parseEpoll(readFdinfo(ij.pid, ep));
      if (t.length !== 1 || t[0]!.tfd !== ev || t[0]!.data !== 0x1234n) throw new Error('fdinfo does not show the registration made');
      const slot = Buffer.alloc(12);
      slot.writeUInt32LE(ep, 0);
      slot.writeUInt32LE(ev, 4);
      const r = raw(ij, NR.kcmp, ij.pid, ij.pid, KCMP_EPOLL_TFD, ev, ij.mem.put(slot));
      if (r !== 0) throw new Error(`kcmp(KCMP_EPOLL_TFD) answers ${r}: which file a registration watches cannot be told (needs CONFIG_CHECKPOINT_RESTORE)`);
      return 'fdinfo shows registrations; kcmp(KCMP_EPOLL_TFD) tells which file each watches';
    },
  ],
  [
    'pipe',
    (ij) => {
      const [r, w] = pair(ij, NR.pipe2, 'pipe2', 0o4000);
      const [cr, cw] = pair(ij, NR.pipe2, 'pipe2', 0o4000);
      call(ij, 'write', 'probe', NR.write, w, ij.mem.put(Buffer.from('probe')), 5);
      const got = call(ij, 'tee', 'probe', NR.tee, r, cw, 5, SPLICE_F_NONBLOCK);
      const left = ioctlInt(ij, r, IOCTL.FIONREAD, 'probe');
      const size = call(ij, 'fcntl', 'probe', NR.fcntl, r, FCNTL.GETPIPE_SZ, 0);
      if (got !== 5 || left !== 5) throw new Error(`tee copied ${got} bytes and left ${left} of 5`);
      raw(ij, NR.close, cr);
      return `tee copies buffered bytes without taking them; F_GETPIPE_SZ (${size}) and FIONREAD work`;
    },
  ],
  ['fifo', () => 'as pipes, reopened by path'],
  [
    'shared',
    (ij) => {
      // What a restore does when processes of a tree share a description: one husk takes it from another
      // with pidfd_getfd (tried here on the child itself), and the dump compares descriptions across processes.
      const [r] = pair(ij, NR.pipe2, 'pipe2', 0);
      const pidfd = call(ij, 'pidfd_open', 'probe', NR.pidfd_open, ij.pid, 0);
      const got = call(ij, 'pidfd_getfd', 'probe', NR.pidfd_getfd, pidfd, r, 0);
      const n = native();
      if (n.kcmp(ij.pid, ij.pid, KCMP_FILE, r, got) !== 0) throw new Error('pidfd_getfd gave another description');
      n.kcmp(process.pid, ij.pid, KCMP_FILE, 0, r);
      return 'descriptions shared between processes of a tree (fork, a shell pipeline): found with kcmp across processes, taken again with pidfd_getfd';
    },
  ],
  [
    'unix',
    (ij) => {
      const [a, b] = pair(ij, NR.socketpair, 'socketpair', AF_UNIX, SOCK_STREAM, 0);
      const ia = statSync(`/proc/${ij.pid}/fd/${a}`).ino;
      const ib = statSync(`/proc/${ij.pid}/fd/${b}`).ino;
      const d = unixDiag(ij, [ia]).get(ia)!;
      if (d.peer !== ib) throw new Error(`unix_diag gives peer ${d.peer}, not ${ib}`);
      ij.mem.reset();
      setsockoptSol(ij, a, SO.PEEK_OFF, 0, 'SO_PEEK_OFF');
      const scm = readFdinfo(ij.pid, a).fields.scm_fds !== undefined;
      return `unix_diag tells peers, backlogs and waiting connections; SO_PEEK_OFF works${scm ? '; fdinfo shows fds in flight' : '; fdinfo does not show fds in flight (scm_fds): sockets with queued data are refused'}`;
    },
  ],
  [
    'inet',
    (ij) => {
      const s = call(ij, 'socket', 'probe', NR.socket, AF_INET, SOCK_STREAM, IPPROTO_TCP);
      const sa = Buffer.alloc(16);
      sa.writeUInt16LE(AF_INET, 0);
      sa.writeUInt32BE(0x7f000001, 4);
      call(ij, 'bind', 'probe', NR.bind, s, ij.mem.put(sa), 16);
      call(ij, 'listen', 'probe', NR.listen, s, 3);
      const info = ij.mem.alloc(256);
      call(ij, 'getsockopt', 'probe', NR.getsockopt, s, IPPROTO_TCP, TCP_INFO, info, ij.mem.put(Buffer.from([0, 1, 0, 0])));
      const backlog = ij.thread.readMem(info, 32).readUInt32LE(28);
      if (backlog !== 3) throw new Error(`TCP_INFO shows backlog ${backlog} for listen(3)`);
      getsockoptInt(ij, s, SOL_SOCKET, SO.REUSEADDR, 'SO_REUSEADDR');
      return 'TCP listeners (backlog from TCP_INFO) and bound TCP/UDP sockets; established TCP connections in `crest run --net` jobs (see tcp_repair), elsewhere with --tcp-close (they come back reset)';
    },
  ],
  [
    'memfd',
    (ij) => {
      const fd = call(ij, 'memfd_create', 'probe', NR.memfd_create, ij.mem.str('crest-probe'), MFD_ALLOW_SEALING);
      call(ij, 'fcntl', 'probe F_GET_SEALS', NR.fcntl, fd, FCNTL.GET_SEALS, 0);
      return 'memfd_create and seals work (contents saved in the image; memfd mappings are refused)';
    },
  ],
  [
    'deleted',
    (ij) => {
      const dir = tmpdir();
      const fd = raw(ij, NR.openat, -100, ij.mem.str(dir), O_TMPFILE | 2, 0o600);
      if (fd < 0) throw new Error(`O_TMPFILE in ${dir} fails (errno ${-fd}): deleted files there could not be recreated`);
      const r = raw(ij, NR.flock, fd, LOCK_EX | LOCK_NB);
      const locks = r === 0 && readFdinfo(ij.pid, fd).lines.some((l) => l.startsWith('lock:'));
      return `recreated with O_TMPFILE in their directory (works in ${dir}); ${locks ? 'fdinfo shows locks, which are taken again' : 'fdinfo does not show locks'}`;
    },
  ],
  [
    'inotify',
    (ij) => {
      const fd = call(ij, 'inotify_init1', 'probe', NR.inotify_init1, 0);
      const wd = call(ij, 'inotify_add_watch', 'probe', NR.inotify_add_watch, fd, ij.mem.str('/'), 1);
      const w = parseInotify(readFdinfo(ij.pid, fd));
      const root = lstatSync('/');
      if (w.length !== 1 || w[0]!.wd !== wd || w[0]!.ino !== root.ino) throw new Error('fdinfo does not show the watch made');
      return 'fdinfo shows watches by inode; each path is looked for among the process\'s directories (refused when not found)';
    },
  ],
];

/** Runs every fd kind's probe in a seized `sleep` child; never throws. */
export function probeFdKinds(opts: { timeoutMs?: number } = {}): FdKindVerdict[] {
  return runProbes(PROBES, opts);
}

/** Runs every memory kind's probe (kinds/memshare.ts) the same way. */
export function probeMemoryKinds(opts: { timeoutMs?: number } = {}): FdKindVerdict[] {
  return runProbes(MEMORY_PROBES, opts);
}

/** Runs the process-wide kinds' probes (POSIX timers) the same way. */
export function probeProcessKinds(opts: { timeoutMs?: number } = {}): FdKindVerdict[] {
  return runProbes(TIMER_PROBES, opts);
}

/** Runs `probes` in a seized `sleep` child, through injected system calls; never throws. */
function runProbes(probes: readonly [string, (ij: ProbeCtx) => string][], opts: { timeoutMs?: number }): FdKindVerdict[] {
  const notTried = (why: string): FdKindVerdict[] => probes.map(([kind]) => ({ kind, ok: null, detail: `not tried: ${why}` }));
  const sleepBin = existsSync('/bin/sleep') ? '/bin/sleep' : 'sleep';
  const child = spawn(sleepBin, ['30'], { stdio: 'ignore' });
  child.on('error', () => {});
  child.unref();
  const pid = child.pid;
  if (pid === undefined) return notTried(`could not start ${sleepBin}`);
  let t: Thread | null = null;
  try {
    const end = Date.now() + (opts.timeoutMs ?? 5000);
    while (Date.now() < end) {
      try {
        if (readStat(pid).state === 'S' && readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'sleep') break;
      } catch {
        break;
      }
      sleepMs(1);
    }
    try {
      t = Thread.seize(pid);
    } catch (e) {
      return notTried(`cannot trace a child: ${(e as Error).message}`);
    }
    const vdso = readMaps(pid).find((m) => m.path === '[vdso]');
    const at = vdso ? findSyscallInsn(t.readMem(vdso.start, vdso.end - vdso.start)) : -1;
    if (!vdso || at < 0) return notTried('no syscall instruction in the child\'s vDSO');
    t.setSyscallSite(vdso.start + at);
    const scratch = Number(t.syscall('mmap', 'probe scratch', SYS.mmap, 0, SCRATCH, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS, -1, 0));
    const ij: ProbeCtx = { thread: t, mem: new ScratchAllocator(t, scratch, SCRATCH), scratch, scratchSize: SCRATCH, pid };
    return probes.map(([kind, fn]) => {
      ij.mem.reset();
      try {
        return { kind, ok: true, detail: fn(ij) };
      } catch (e) {
        return { kind, ok: false, detail: (e as Error).message };
      }
    });
  } catch (e) {
    return notTried((e as Error).message);
  } finally {
    try {
      t?.kill();
    } catch {
      /* gone */
    }
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}
