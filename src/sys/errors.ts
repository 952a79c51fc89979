// Error types shared by every layer. Native code throws SyscallError
// instances (the class is handed to the addon once at load), and higher
// layers wrap them in CrestError with a stable `code` and the `cause`.
import { constants } from 'node:os';

const errnoNames = new Map<number, string>();
for (const [name, value] of Object.entries(constants.errno)) {
  if (!errnoNames.has(value)) errnoNames.set(value, name);
}

/** Name of an errno value ("EPERM"), or "E<number>" when unknown. */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

/** Any failure crest reports: a stable machine-readable code and a message meant for people. */
export class CrestError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CrestError';
    this.code = code;
  }
}

/** A failed system call: which call, what it was for, errno (number and name) and the pid it was about. */
export class SyscallError extends CrestError {
  readonly syscall: string;
  readonly op: string;
  readonly errno: number;
  readonly errnoName: string;
  readonly pid: number;
  constructor(syscall: string, op: string, errno: number, pid: number) {
    const name = errnoName(errno);
    super(
      `SYSCALL_${name}`,
      `${syscall}${op ? ` (${op})` : ''} failed${pid > 0 ? ` for pid ${pid}` : ''}: ${name}`,
    );
    this.name = 'SyscallError';
    this.syscall = syscall;
    this.op = op;
    this.errno = errno;
    this.errnoName = name;
    this.pid = pid;
  }
}

/** True when `e` is a SyscallError carrying errno name `name`. */
export function isErrno(e: unknown, name: string): boolean {
  return e instanceof SyscallError && e.errnoName === name;
}
