// /proc/PID/stat: one line, "pid (comm) state ppid ...". comm may hold spaces
// and parentheses, so it runs from the first '(' to the LAST ')'.
import { type PidRef, dec, parseError, procPath, readProcText, udecBig } from './util.js';

/**
 * Every field of /proc/PID/stat under its proc(5) name. Values that may
 * exceed 2^53 (rsslim, the obsolete signal masks, wchan, kstkesp, kstkeip)
 * are bigint; addresses of the user address space are numbers.
 * Address fields read 0 when the reader may not see them.
 */
export interface ProcStat {
  pid: number;
  comm: string;
  state: string;
  ppid: number;
  pgrp: number;
  session: number;
  tty_nr: number;
  tpgid: number;
  flags: number;
  minflt: number;
  cminflt: number;
  majflt: number;
  cmajflt: number;
  utime: number;
  stime: number;
  cutime: number;
  cstime: number;
  priority: number;
  nice: number;
  num_threads: number;
  itrealvalue: number;
  starttime: number;
  vsize: number;
  rss: number;
  rsslim: bigint;
  startcode: number;
  endcode: number;
  startstack: number;
  kstkesp: bigint;
  kstkeip: bigint;
  signal: bigint;
  blocked: bigint;
  sigignore: bigint;
  sigcatch: bigint;
  wchan: bigint;
  nswap: number;
  cnswap: number;
  exit_signal: number;
  processor: number;
  rt_priority: number;
  policy: number;
  delayacct_blkio_ticks: number;
  guest_time: number;
  cguest_time: number;
  start_data: number;
  end_data: number;
  start_brk: number;
  arg_start: number;
  arg_end: number;
  env_start: number;
  env_end: number;
  exit_code: number;
  /** Fields a newer kernel prints after exit_code, as text. */
  extra: string[];
}

type Kind = 'n' | 'b';
// Fields 4..52 in order (pid, comm and state are handled apart).
const FIELDS: ReadonlyArray<readonly [keyof ProcStat, Kind]> = [
  ['ppid', 'n'], ['pgrp', 'n'], ['session', 'n'], ['tty_nr', 'n'], ['tpgid', 'n'], ['flags', 'n'],
  ['minflt', 'n'], ['cminflt', 'n'], ['majflt', 'n'], ['cmajflt', 'n'],
  ['utime', 'n'], ['stime', 'n'], ['cutime', 'n'], ['cstime', 'n'],
  ['priority', 'n'], ['nice', 'n'], ['num_threads', 'n'], ['itrealvalue', 'n'], ['starttime', 'n'],
  ['vsize', 'n'], ['rss', 'n'], ['rsslim', 'b'],
  ['startcode', 'n'], ['endcode', 'n'], ['startstack', 'n'], ['kstkesp', 'b'], ['kstkeip', 'b'],
  ['signal', 'b'], ['blocked', 'b'], ['sigignore', 'b'], ['sigcatch', 'b'], ['wchan', 'b'],
  ['nswap', 'n'], ['cnswap', 'n'], ['exit_signal', 'n'], ['processor', 'n'], ['rt_priority', 'n'], ['policy', 'n'],
  ['delayacct_blkio_ticks', 'n'], ['guest_time', 'n'], ['cguest_time', 'n'],
  ['start_data', 'n'], ['end_data', 'n'], ['start_brk', 'n'],
  ['arg_start', 'n'], ['arg_end', 'n'], ['env_start', 'n'], ['env_end', 'n'], ['exit_code', 'n'],
];

/** Parses the text of /proc/PID/stat. Throws CrestError PROC_PARSE on malformed input. */
export function parseStat(text: string, file = 'stat'): ProcStat {
  const line = text.endsWith('\n') ? text.slice(0, -1) : text;
  const open = line.indexOf(' (');
  const close = line.lastIndexOf(')');
  if (open <= 0 || close < open) throw parseError(file, line, 'no "pid (comm)" at the start');
  const pid = dec(line.slice(0, open), file, line, 'pid');
  const comm = line.slice(open + 2, close);
  const rest = line.slice(close + 1);
  if (!rest.startsWith(' ')) throw parseError(file, line, 'no space after ")"');
  const parts = rest.slice(1).split(' ');
  if (parts.length < 1 + FIELDS.length) {
    throw parseError(file, line, `expected ${3 + FIELDS.length} fields, found ${3 + parts.length - 1}`);
  }
  const state = parts[0]!;
  if (!/^[A-Za-z]$/.test(state)) throw parseError(file, line, `state "${state}" is not one letter`);
  const out: Record<string, unknown> = { pid, comm, state };
  FIELDS.forEach(([name, kind], i) => {
    const s = parts[i + 1];
    out[name] = kind === 'n' ? dec(s, file, line, name) : udecBig(s, file, line, name);
  });
  out.extra = parts.slice(1 + FIELDS.length);
  return out as unknown as ProcStat;
}

/** Reads and parses /proc/PID/stat (or /proc/PID/task/TID/stat). */
export function readStat(pid: PidRef, tid?: number): ProcStat {
  const path = procPath(pid, 'stat', tid);
  return parseStat(readProcText(path), path);
}
