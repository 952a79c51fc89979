// Shared helpers of the /proc parsers: the one error shape for malformed
// input, the one way to read a /proc file, and small number parsers.
import { readFileSync } from 'node:fs';
import { CrestError } from '../sys/errors.js';

/** A process reference: a numeric pid, or 'self'. */
export type PidRef = number | 'self';

/** Path of a file under /proc/PID (or /proc/PID/task/TID when `tid` is given). */
export function procPath(pid: PidRef, file: string, tid?: number): string {
  return tid === undefined ? `/proc/${pid}/${file}` : `/proc/${pid}/task/${tid}/${file}`;
}

/** The PROC_PARSE error: names the file and quotes the offending line. */
export function parseError(file: string, line: string | number, why: string): CrestError {
  const where = typeof line === 'number' ? `at byte ${line}` : `in line ${JSON.stringify(line.length > 200 ? `${line.slice(0, 200)}...` : line)}`;
  return new CrestError('PROC_PARSE', `cannot parse ${file}: ${why} ${where}`);
}

/**
 * Reads a /proc file whole. A vanished process (ENOENT, ESRCH) becomes
 * CrestError PROC_GONE, anything else PROC_READ; the fs error is the cause.
 */
export function readProcFile(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ESRCH') {
      throw new CrestError('PROC_GONE', `cannot read ${path}: the process or file is gone (${code})`, { cause: e });
    }
    throw new CrestError('PROC_READ', `cannot read ${path}: ${code ?? String(e)}`, { cause: e });
  }
}

/**
 * Reads a /proc file as UTF-8 text. File names that are not valid UTF-8
 * come back with U+FFFD in them; such paths cannot be reopened by name.
 */
export function readProcText(path: string): string {
  return readProcFile(path).toString('utf8');
}

/** Splits file text into lines, dropping the final empty piece after the last newline. */
export function lines(text: string): string[] {
  const out = text.split('\n');
  if (out.length > 0 && out[out.length - 1] === '') out.pop();
  return out;
}

const DEC = /^-?\d+$/;
const UDEC = /^\d+$/;
const HEX = /^[0-9a-fA-F]+$/;
const OCT = /^[0-7]+$/;

/** Decimal integer that must fit a JS number exactly; else PROC_PARSE. */
export function dec(s: string | undefined, file: string, line: string, what: string): number {
  if (s === undefined || !DEC.test(s)) throw parseError(file, line, `${what} is not a decimal number`);
  const n = Number(s);
  if (!Number.isSafeInteger(n)) throw parseError(file, line, `${what} (${s}) does not fit a JS number`);
  return n;
}

/** Unsigned decimal of any size as bigint. */
export function udecBig(s: string | undefined, file: string, line: string, what: string): bigint {
  if (s === undefined || !UDEC.test(s)) throw parseError(file, line, `${what} is not an unsigned decimal number`);
  return BigInt(s);
}

/** Hexadecimal (no 0x) as a JS number; values above 2^53 lose precision (callers decide). */
export function hexNum(s: string | undefined, file: string, line: string, what: string): number {
  if (s === undefined || !HEX.test(s)) throw parseError(file, line, `${what} is not hexadecimal`);
  return parseInt(s, 16);
}

/** Hexadecimal (no 0x) as bigint, exact at any size. */
export function hexBig(s: string | undefined, file: string, line: string, what: string): bigint {
  if (s === undefined || !HEX.test(s)) throw parseError(file, line, `${what} is not hexadecimal`);
  return BigInt(`0x${s}`);
}

/** Octal (as /proc prints flags and umask) as a JS number. */
export function octNum(s: string | undefined, file: string, line: string, what: string): number {
  if (s === undefined || !OCT.test(s)) throw parseError(file, line, `${what} is not octal`);
  return parseInt(s, 8);
}
