// Pure parsers of the kind-specific lines of /proc/PID/fdinfo/FD, as the
// kernel prints them (fs/eventfd.c, fs/timerfd.c, fs/signalfd.c,
// fs/eventpoll.c, fs/notify/fdinfo.c). Each returns what it found or throws
// a CrestError naming the line it could not read.
import type { FdInfo } from '../../proc/index.js';
import { CrestError } from '../../sys/errors.js';

function bad(what: string, line: string): CrestError {
  return new CrestError('PROC_PARSE', `cannot read ${what} from fdinfo line "${line}"`);
}

function field(info: FdInfo, key: string, what: string): string {
  const v = info.fields[key];
  if (v === undefined) throw new CrestError('PROC_PARSE', `fdinfo of the ${what} has no "${key}:" line (lines: ${info.lines.join(' | ')})`);
  return v;
}

/** eventfd: "eventfd-count: %16llx", "eventfd-semaphore: %d" (Linux 6.6+; null when absent). */
export function parseEventfd(info: FdInfo): { count: bigint; semaphore: boolean | null } {
  const c = field(info, 'eventfd-count', 'eventfd');
  if (!/^[0-9a-f]+$/i.test(c)) throw bad('the eventfd count', c);
  const s = info.fields['eventfd-semaphore'];
  if (s !== undefined && s !== '0' && s !== '1') throw bad('eventfd-semaphore', s);
  return { count: BigInt(`0x${c}`), semaphore: s === undefined ? null : s === '1' };
}

export interface TimerfdInfo {
  clockid: number;
  ticks: number;
  settimeFlags: number;
  value: { sec: number; nsec: number };
  interval: { sec: number; nsec: number };
}

function pair(s: string, what: string): { sec: number; nsec: number } {
  const m = /^\((\d+), (\d+)\)$/.exec(s);
  if (!m) throw bad(what, s);
  return { sec: Number(m[1]), nsec: Number(m[2]) };
}

/** timerfd: clockid, ticks, "settime flags: 0%o", "it_value: (sec, nsec)" (time left), it_interval. */
export function parseTimerfd(info: FdInfo): TimerfdInfo {
  const clock = field(info, 'clockid', 'timerfd');
  const ticks = field(info, 'ticks', 'timerfd');
  const flags = field(info, 'settime flags', 'timerfd');
  if (!/^\d+$/.test(clock)) throw bad('the timerfd clock', clock);
  if (!/^\d+$/.test(ticks)) throw bad('the timerfd ticks', ticks);
  if (!/^[0-7]+$/.test(flags)) throw bad('the timerfd settime flags', flags);
  return {
    clockid: Number(clock),
    ticks: Number(ticks),
    settimeFlags: parseInt(flags, 8),
    value: pair(field(info, 'it_value', 'timerfd'), 'it_value'),
    interval: pair(field(info, 'it_interval', 'timerfd'), 'it_interval'),
  };
}

/** signalfd: "sigmask:\t<hex>". */
export function parseSignalfd(info: FdInfo): bigint {
  const m = field(info, 'sigmask', 'signalfd');
  if (!/^[0-9a-f]{1,16}$/i.test(m)) throw bad('the signalfd mask', m);
  return BigInt(`0x${m}`);
}

export interface EpollTarget {
  tfd: number;
  events: number;
  data: bigint;
  /** The target file's position, inode and (kernel-encoded) device, for matching it with an fd. */
  pos: number;
  ino: number;
  sdev: number;
}

/** epoll: "tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x", one line per registration, in the kernel's order. */
export function parseEpoll(info: FdInfo): EpollTarget[] {
  const out: EpollTarget[] = [];
  for (const line of info.lines) {
    if (!line.startsWith('tfd:')) continue;
    const m = /^tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)\s+pos:\s*(-?\d+)\s+ino:\s*([0-9a-f]+)\s+sdev:\s*([0-9a-f]+)/i.exec(line);
    if (!m) throw bad('an epoll registration', line);
    out.push({
      tfd: Number(m[1]),
      events: parseInt(m[2]!, 16),
      data: BigInt(`0x${m[3]}`),
      pos: Number(m[4]),
      ino: parseInt(m[5]!, 16),
      sdev: parseInt(m[6]!, 16),
    });
  }
  return out;
}

export interface InotifyWatch {
  wd: number;
  ino: number;
  /** The kernel's dev_t encoding (major << 20 | minor). */
  sdev: number;
  mask: number;
  ignoredMask: number;
}

/** inotify: "inotify wd:%x ino:%lx sdev:%x mask:%x ignored_mask:%x [fhandle-bytes:...]". */
export function parseInotify(info: FdInfo): InotifyWatch[] {
  const out: InotifyWatch[] = [];
  for (const line of info.lines) {
    if (!line.startsWith('inotify ')) continue;
    const m = /^inotify wd:([0-9a-f]+) ino:([0-9a-f]+) sdev:([0-9a-f]+) mask:([0-9a-f]+) ignored_mask:([0-9a-f]+)/i.exec(line);
    if (!m) throw bad('an inotify watch', line);
    out.push({
      wd: parseInt(m[1]!, 16),
      ino: parseInt(m[2]!, 16),
      sdev: parseInt(m[3]!, 16),
      mask: parseInt(m[4]!, 16),
      ignoredMask: parseInt(m[5]!, 16),
    });
  }
  return out;
}

/** The kernel's internal dev_t (major << 20 | minor) as stat(2) encodes it in st_dev. */
export function kdevToStatDev(kdev: number): number {
  const major = Math.floor(kdev / 2 ** 20);
  const minor = kdev & 0xfffff;
  // glibc's makedev: minor low 8 bits, major next 12, rest of minor above, rest of major in the top word.
  return (minor & 0xff) + (major & 0xfff) * 256 + (minor & ~0xff) * 4096 + Math.floor(major / 4096) * 2 ** 32 * 4096;
}
