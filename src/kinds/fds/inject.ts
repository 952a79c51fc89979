// Small helpers over injected system calls that the fd kinds share: an int
// read back from the scratch area, socket options, fcntl, chunked reads of
// an fd into crest. Each runs in a task we hold (the dump's injection window
// or the husk), through its scratch area.
import type { Thread } from '../../tracer/tracer.js';
import type { ScratchAllocator } from '../types.js';
import { FCNTL, NR, SOL_SOCKET } from './abi.js';

/** The parts of a dump or restore context the helpers need. */
export interface Injector {
  thread: Thread;
  mem: ScratchAllocator;
  scratch: number;
  scratchSize: number;
}

/** A system call that must succeed; its result as a number. */
export function call(ij: Injector, name: string, op: string, nr: number, ...args: (number | bigint)[]): number {
  return Number(ij.thread.syscall(name, op, nr, ...args));
}

/** The raw result (negative errno on failure). */
export function raw(ij: Injector, nr: number, ...args: (number | bigint)[]): number {
  return Number(ij.thread.syscallRaw(nr, ...args));
}

/** getsockopt for an int-sized option. */
export function getsockoptInt(ij: Injector, fd: number, level: number, opt: number, what: string): number {
  const val = ij.mem.alloc(8);
  const len = ij.mem.put(Buffer.from([4, 0, 0, 0]));
  call(ij, 'getsockopt', `read ${what} of fd ${fd}`, NR.getsockopt, fd, level, opt, val, len);
  return ij.thread.readMem(val, 4).readInt32LE(0);
}

/** getsockopt for an int option; null when the kernel does not know it (ENOPROTOOPT). */
export function getsockoptIntMaybe(ij: Injector, fd: number, level: number, opt: number): number | null {
  const val = ij.mem.alloc(8);
  const len = ij.mem.put(Buffer.from([4, 0, 0, 0]));
  const r = raw(ij, NR.getsockopt, fd, level, opt, val, len);
  if (r < 0) return null;
  return ij.thread.readMem(val, 4).readInt32LE(0);
}

/** setsockopt for an int option. */
export function setsockoptInt(ij: Injector, fd: number, level: number, opt: number, value: number, what: string): void {
  const b = Buffer.alloc(4);
  b.writeInt32LE(value, 0);
  call(ij, 'setsockopt', `set ${what} of fd ${fd} to ${value}`, NR.setsockopt, fd, level, opt, ij.mem.put(b), 4);
}

export function setsockoptSol(ij: Injector, fd: number, opt: number, value: number, what: string): void {
  setsockoptInt(ij, fd, SOL_SOCKET, opt, value, what);
}

/** fcntl with an int argument. */
export function fcntl(ij: Injector, fd: number, cmd: number, arg: number, what: string): number {
  return call(ij, 'fcntl', `${what} (fd ${fd})`, NR.fcntl, fd, cmd, arg);
}

/** Sets the file status flags of a description (F_SETFL changes O_APPEND, O_NONBLOCK, O_ASYNC, O_DIRECT, O_NOATIME). */
export function setFlags(ij: Injector, fd: number, flags: number, what: string): void {
  fcntl(ij, fd, FCNTL.SETFL, flags, `set the status flags of ${what}`);
}

/** ioctl(fd, FIONREAD-like request, &int): the int. */
export function ioctlInt(ij: Injector, fd: number, req: number, what: string): number {
  const out = ij.mem.alloc(8);
  call(ij, 'ioctl', `${what} (fd ${fd})`, NR.ioctl, fd, req, out);
  return ij.thread.readMem(out, 4).readInt32LE(0);
}

/** Room in the scratch area for one chunk of data (what is left after the small structs). */
export function chunkSize(ij: Injector): number {
  // Keep a margin for the structs allocated beside the chunk.
  return Math.max(4096, Math.floor((ij.scratchSize - 4096) / 4096) * 4096);
}

/** Writes `data` through fd `fd` in the task from its scratch area (for small payloads). */
export function writeAll(ij: Injector, fd: number, data: Buffer, what: string): void {
  const chunk = chunkSize(ij);
  for (let off = 0; off < data.length; ) {
    ij.mem.reset();
    const part = data.subarray(off, off + chunk);
    const at = ij.mem.put(part);
    const n = call(ij, 'write', `write ${what}`, NR.write, fd, at, part.length);
    if (n <= 0) throw new Error(`write of ${what} made no progress`);
    off += n;
  }
}
