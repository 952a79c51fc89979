// /proc/PID/auxv: the ELF auxiliary vector as native (x86-64: u64) pairs.
import { type PidRef, parseError, procPath, readProcFile } from './util.js';

/** AT_* types crest refers to by name. */
export const AT = {
  NULL: 0, PHDR: 3, PHENT: 4, PHNUM: 5, PAGESZ: 6, BASE: 7, ENTRY: 9, UID: 11, EUID: 12,
  GID: 13, EGID: 14, PLATFORM: 15, HWCAP: 16, CLKTCK: 17, SECURE: 23, RANDOM: 25, HWCAP2: 26,
  EXECFN: 31, SYSINFO_EHDR: 33, MINSIGSTKSZ: 51, RSEQ_FEATURE_SIZE: 27, RSEQ_ALIGN: 28,
} as const;

/** One auxv entry: [type, value]. */
export type AuxvEntry = [type: number, value: bigint];

/**
 * Parses /proc/PID/auxv bytes (little-endian u64 pairs) up to, not including,
 * AT_NULL. An empty buffer (kernel threads) gives []. Throws PROC_PARSE when the
 * length is not a whole number of pairs or AT_NULL is missing.
 */
export function parseAuxv(buf: Buffer, file = 'auxv'): AuxvEntry[] {
  if (buf.length === 0) return [];
  if (buf.length % 16 !== 0) throw parseError(file, buf.length - (buf.length % 16), `length ${buf.length} is not a multiple of 16`);
  const out: AuxvEntry[] = [];
  for (let off = 0; off < buf.length; off += 16) {
    const type = buf.readBigUInt64LE(off);
    const value = buf.readBigUInt64LE(off + 8);
    if (type === 0n) return out;
    if (type > BigInt(Number.MAX_SAFE_INTEGER)) throw parseError(file, off, `entry type ${type} is out of range`);
    out.push([Number(type), value]);
  }
  throw parseError(file, buf.length, 'no AT_NULL entry before the end');
}

/** Reads and parses /proc/PID/auxv. */
export function readAuxv(pid: PidRef): AuxvEntry[] {
  const path = procPath(pid, 'auxv');
  return parseAuxv(readProcFile(path), path);
}

/** Value of one AT_* type, or undefined. */
export function auxvGet(entries: readonly AuxvEntry[], type: number): bigint | undefined {
  return entries.find(([t]) => t === type)?.[1];
}
