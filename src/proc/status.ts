// /proc/PID/status: "Key:\tvalue" lines.
import { type PidRef, dec, hexBig, lines, octNum, parseError, procPath, readProcText } from './util.js';

/** The fields of /proc/PID/status crest uses, typed; everything else is in `raw`. */
export interface ProcStatus {
  name: string;
  /** File-creation mask (printed in octal). */
  umask: number;
  /** One-letter state: R, S, D, T, t, X, Z, P, I. */
  state: string;
  /** The state's word as printed in parentheses ("sleeping"), '' when absent. */
  stateName: string;
  tgid: number;
  pid: number;
  ppid: number;
  tracerPid: number;
  /** Real, effective, saved, filesystem. */
  uid: [number, number, number, number];
  gid: [number, number, number, number];
  groups: number[];
  /** Thread group id in each pid namespace, outermost first. */
  nstgid: number[];
  nspid: number[];
  nspgid: number[];
  nssid: number[];
  threads: number;
  sigPnd: bigint;
  shdPnd: bigint;
  sigBlk: bigint;
  sigIgn: bigint;
  sigCgt: bigint;
  capInh: bigint;
  capPrm: bigint;
  capEff: bigint;
  capBnd: bigint;
  capAmb: bigint;
  noNewPrivs: boolean;
  /** 0 disabled, 1 strict, 2 filter. */
  seccomp: number;
  /** Every line as "Key" -> value text (trimmed). */
  raw: Record<string, string>;
}

/** Parses the text of /proc/PID/status. Throws CrestError PROC_PARSE naming the bad or missing line. */
export function parseStatus(text: string, file = 'status'): ProcStatus {
  const raw: Record<string, string> = {};
  const lineOf: Record<string, string> = {};
  for (const line of lines(text)) {
    const colon = line.indexOf(':');
    if (colon <= 0) throw parseError(file, line, 'no "Key:" at the start of the line');
    const key = line.slice(0, colon);
    // Name may carry spaces at its edges: keep it verbatim after the tab (the
    // kernel prints whitespace other than ' ' and backslashes escaped).
    const value = key === 'Name' ? line.slice(colon + 1).replace(/^\t/, '') : line.slice(colon + 1).trim();
    raw[key] = value;
    lineOf[key] = line;
  }
  const get = (key: string): string => {
    const v = raw[key];
    if (v === undefined) throw parseError(file, `${key}:`, 'the line is missing');
    return v;
  };
  const int = (key: string): number => dec(get(key), file, lineOf[key] ?? key, key);
  const ints = (key: string, fallback?: number[]): number[] => {
    const v = raw[key];
    if (v === undefined) {
      if (fallback) return fallback;
      throw parseError(file, `${key}:`, 'the line is missing');
    }
    return v === '' ? [] : v.split(/\s+/).map((x) => dec(x, file, lineOf[key]!, key));
  };
  const four = (key: string): [number, number, number, number] => {
    const a = ints(key);
    if (a.length !== 4) throw parseError(file, lineOf[key]!, `${key} needs 4 values`);
    return a as [number, number, number, number];
  };
  const mask = (key: string): bigint => hexBig(get(key), file, lineOf[key] ?? key, key);

  const stateText = get('State');
  const sm = /^(\S)(?:\s+\((.*)\))?$/.exec(stateText);
  if (!sm) throw parseError(file, lineOf.State!, 'State is not "X (word)"');
  const tgid = int('Tgid');
  const pid = int('Pid');
  return {
    name: get('Name'),
    // The kernel prints Umask only while the task has its fs_struct: a zombie has none.
    umask: raw.Umask === undefined && (sm[1] === 'Z' || sm[1] === 'X') ? 0 : octNum(get('Umask'), file, lineOf.Umask ?? 'Umask', 'Umask'),
    state: sm[1]!,
    stateName: sm[2] ?? '',
    tgid,
    pid,
    ppid: int('PPid'),
    tracerPid: int('TracerPid'),
    uid: four('Uid'),
    gid: four('Gid'),
    groups: ints('Groups'),
    nstgid: ints('NStgid', [tgid]),
    nspid: ints('NSpid', [pid]),
    nspgid: ints('NSpgid', []),
    nssid: ints('NSsid', []),
    threads: int('Threads'),
    sigPnd: mask('SigPnd'),
    shdPnd: mask('ShdPnd'),
    sigBlk: mask('SigBlk'),
    sigIgn: mask('SigIgn'),
    sigCgt: mask('SigCgt'),
    capInh: mask('CapInh'),
    capPrm: mask('CapPrm'),
    capEff: mask('CapEff'),
    capBnd: mask('CapBnd'),
    capAmb: mask('CapAmb'),
    noNewPrivs: raw.NoNewPrivs === undefined ? false : int('NoNewPrivs') !== 0,
    seccomp: raw.Seccomp === undefined ? 0 : int('Seccomp'),
    raw,
  };
}

/** Reads and parses /proc/PID/status (or /proc/PID/task/TID/status). */
export function readStatus(pid: PidRef, tid?: number): ProcStatus {
  const path = procPath(pid, 'status', tid);
  return parseStatus(readProcText(path), path);
}
