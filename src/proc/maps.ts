// /proc/PID/maps: one line per mapping.
//   start-end perms offset major:minor inode [padding path]
import { type PidRef, lines, parseError, procPath, readProcText } from './util.js';

/** One mapping of /proc/PID/maps. */
export interface MapEntry {
  /** First address (inclusive). Exact for user space (< 2^47); see `vsyscall`. */
  start: number;
  /** End address (exclusive). */
  end: number;
  /** The four permission characters as printed, e.g. 'r-xp'. */
  perms: string;
  read: boolean;
  write: boolean;
  exec: boolean;
  /** 's' (shared) rather than 'p' (private, copy-on-write). */
  shared: boolean;
  /** Offset into the file in bytes (0 for anonymous memory). */
  offset: number;
  devMajor: number;
  devMinor: number;
  inode: number;
  /**
   * File path or label ('[heap]', '[stack]', '[vdso]', '[vvar]', '[vvar_vclock]',
   * '[vsyscall]', '[anon:name]', ...), '' when none. The ' (deleted)' suffix is
   * removed and reported in `deleted`. The kernel's only escape, '\012' for a
   * newline, is decoded.
   */
  path: string;
  /** The path carried the ' (deleted)' suffix (unlinked file, memfd, SysV shm, anonymous shared). */
  deleted: boolean;
  /**
   * True for the fixed kernel page at ffffffffff600000 (and anything else above
   * 2^53, whose addresses are not exact in JS numbers). Callers skip these.
   */
  vsyscall: boolean;
}

// Header: start-end perms offset maj:min inode, then optional padding and path.
const HEADER = /^([0-9a-f]+)-([0-9a-f]+) ([r-][w-][x-][ps]) ([0-9a-f]+) ([0-9a-f]+):([0-9a-f]+) (\d+)(?: (.*))?$/;

/** Parses one maps-format header line (also the first line of each smaps entry); null when it is not one. */
export function parseMapLine(line: string, file = 'maps'): MapEntry | null {
  const m = HEADER.exec(line);
  if (!m) return null;
  const [, s, e, perms, off, maj, min, ino, rest] = m as unknown as [string, string, string, string, string, string, string, string, string | undefined];
  const start = parseInt(s, 16);
  const end = parseInt(e, 16);
  let path = (rest ?? '').replace(/^ +/, '');
  let deleted = false;
  if (path.endsWith(' (deleted)')) {
    deleted = true;
    path = path.slice(0, -' (deleted)'.length);
  }
  if (path.includes('\\012')) path = path.replaceAll('\\012', '\n');
  const inode = Number(ino);
  const vsyscall = path === '[vsyscall]' || !Number.isSafeInteger(start) || !Number.isSafeInteger(end);
  if (!vsyscall && end < start) throw parseError(file, line, 'end address below start address');
  if (!Number.isSafeInteger(inode)) throw parseError(file, line, 'inode does not fit a JS number');
  return {
    start,
    end,
    perms,
    read: perms[0] === 'r',
    write: perms[1] === 'w',
    exec: perms[2] === 'x',
    shared: perms[3] === 's',
    offset: parseInt(off, 16),
    devMajor: parseInt(maj, 16),
    devMinor: parseInt(min, 16),
    inode,
    path,
    deleted,
    vsyscall,
  };
}

/** Parses the text of /proc/PID/maps. Throws CrestError PROC_PARSE naming the bad line. */
export function parseMaps(text: string, file = 'maps'): MapEntry[] {
  const out: MapEntry[] = [];
  for (const line of lines(text)) {
    const entry = parseMapLine(line, file);
    if (!entry) throw parseError(file, line, 'not a mapping line');
    out.push(entry);
  }
  return out;
}

/** Reads and parses /proc/PID/maps (or a thread's, with `tid`). */
export function readMaps(pid: PidRef, tid?: number): MapEntry[] {
  const path = procPath(pid, 'maps', tid);
  return parseMaps(readProcText(path), path);
}

/** Size in bytes of a mapping. */
export function mappingSize(e: MapEntry): number {
  return e.end - e.start;
}
