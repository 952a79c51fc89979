// /proc/PID/fdinfo/FD: "pos:\t0", "flags:\t0100002", "mnt_id:\t24", "ino:\t3",
// then kind-specific lines (eventfd-count, tfd, inotify, fanotify, timerfd...).
import { type PidRef, dec, octNum, parseError, procPath, readProcText } from './util.js';

/** Parsed /proc/PID/fdinfo/FD. */
export interface FdInfo {
  /** File position. */
  pos: number;
  /** open(2) flags, printed in octal (O_CLOEXEC included as 02000000). */
  flags: number;
  mntId: number;
  /** Inode number (Linux 5.14+). */
  ino?: number;
  /**
   * Every "key: value" line by key, value trimmed. A key seen more than once
   * (epoll "tfd", inotify "inotify wd" lines) holds its values joined by "\n".
   */
  fields: Record<string, string>;
  /** The lines as printed, in order. */
  lines: string[];
}

/** Parses the text of /proc/PID/fdinfo/FD. Throws CrestError PROC_PARSE on malformed input. */
export function parseFdinfo(text: string, file = 'fdinfo'): FdInfo {
  const fields: Record<string, string> = {};
  const all = text.split('\n').filter((l) => l !== '');
  const lineOf: Record<string, string> = {};
  for (const line of all) {
    const colon = line.indexOf(':');
    if (colon <= 0) throw parseError(file, line, 'no "key:" in the line');
    const key = line.slice(0, colon).trim();
    const value = line.slice(colon + 1).trim();
    if (key in fields) fields[key] += `\n${value}`;
    else {
      fields[key] = value;
      lineOf[key] = line;
    }
  }
  for (const k of ['pos', 'flags', 'mnt_id']) {
    if (fields[k] === undefined) throw parseError(file, `${k}:`, 'the line is missing');
  }
  const out: FdInfo = {
    pos: dec(fields.pos, file, lineOf.pos!, 'pos'),
    flags: octNum(fields.flags, file, lineOf.flags!, 'flags'),
    mntId: dec(fields.mnt_id, file, lineOf.mnt_id!, 'mnt_id'),
    fields,
    lines: all,
  };
  if (fields.ino !== undefined) out.ino = dec(fields.ino, file, lineOf.ino!, 'ino');
  return out;
}

/** Reads and parses /proc/PID/fdinfo/FD. */
export function readFdinfo(pid: PidRef, fd: number): FdInfo {
  const path = procPath(pid, `fdinfo/${fd}`);
  return parseFdinfo(readProcText(path), path);
}
