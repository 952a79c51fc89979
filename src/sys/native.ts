// The typed surface of the native addon (native/crest.c), and the one
// loader for it. Every call is synchronous, makes one system call (or a
// fixed, tiny sequence), and throws SyscallError on failure. No policy here.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CrestError, SyscallError } from './errors.js';

/** Result of waitpid(2). `pid` is 0 when WNOHANG found nothing. */
export interface WaitResult {
  pid: number;
  status: number;
}

/** PTRACE_GET_RSEQ_CONFIGURATION result. */
export interface RseqConfig {
  rseqAbiPointer: bigint;
  rseqAbiSize: number;
  flags: number;
  signature: number;
}

/** The addon's exports. Addresses are JS numbers (user space is below 2^47). */
export interface Native {
  /** Hands the SyscallError class to the addon; called once by the loader. */
  setErrorClass(ctor: typeof SyscallError): void;

  ptraceSeize(pid: number, options: number): void;
  ptraceInterrupt(pid: number): void;
  ptraceDetach(pid: number, sig: number): void;
  ptraceCont(pid: number, sig: number): void;
  ptraceSingleStep(pid: number, sig: number): void;
  /** PTRACE_SYSCALL: run to the next system-call entry or exit stop. */
  ptraceSyscall(pid: number, sig: number): void;
  ptraceSetOptions(pid: number, options: number): void;
  /** user_regs_struct (27 x u64) via PTRACE_GETREGSET NT_PRSTATUS. */
  ptraceGetRegs(pid: number): BigUint64Array;
  ptraceSetRegs(pid: number, regs: BigUint64Array): void;
  /** PTRACE_GETREGSET for any note type; returns exactly the bytes the kernel filled. */
  ptraceGetRegset(pid: number, noteType: number, maxSize: number): Buffer;
  ptraceSetRegset(pid: number, noteType: number, data: Buffer): void;
  ptraceGetSigmask(pid: number): bigint;
  ptraceSetSigmask(pid: number, mask: bigint): void;
  /** PTRACE_PEEKSIGINFO: pending signals (128-byte siginfo each), shared or per-thread queue. */
  ptracePeekSiginfo(pid: number, shared: boolean, max: number): Buffer[];
  /** PTRACE_GETSIGINFO: the siginfo of the signal that caused the current stop. */
  ptraceGetSiginfo(pid: number): Buffer;
  ptraceGetEventMsg(pid: number): bigint;
  /** null when the thread has no rseq registered (rseqAbiPointer 0). */
  ptraceGetRseqConfig(pid: number): RseqConfig | null;

  /** waitpid(2); `flags` may include WNOHANG, __WALL. EINTR is retried. */
  waitpid(pid: number, flags: number): WaitResult;

  /** process_vm_readv into buf[off, off+len); returns bytes read (may be short). */
  processVmReadv(pid: number, addr: number, buf: Buffer, off: number, len: number): number;
  processVmWritev(pid: number, addr: number, buf: Buffer, off: number, len: number): number;

  kill(pid: number, sig: number): void;
  tgkill(tgid: number, tid: number, sig: number): void;
  /** kcmp(2); returns 0 equal, 1 less, 2 greater, 3 not ordered. */
  kcmp(pid1: number, pid2: number, type: number, idx1: number, idx2: number): number;
  getRobustList(pid: number): { head: bigint; len: number };
  /** prlimit64(2) read-only: [soft, hard]; RLIM_INFINITY is 0xffffffffffffffffn. */
  prlimit(pid: number, resource: number): [bigint, bigint];
  /** capget(2) v3 for `pid`: 64-bit masks. */
  capget(pid: number): { effective: bigint; permitted: bigint; inheritable: bigint };
  pidfdOpen(pid: number, flags: number): number;
  /** flock(2): LOCK_SH 1, LOCK_EX 2, LOCK_NB 4, LOCK_UN 8; EWOULDBLOCK (EAGAIN) when held elsewhere with LOCK_NB. */
  flock(fd: number, operation: number): void;
  /** pidfd_getfd(2): a copy in crest of fd `targetfd` of the process behind `pidfd`. */
  pidfdGetfd(pidfd: number, targetfd: number): number;
  close(fd: number): void;
  /** getsockopt(2) into `size` bytes; returns exactly the bytes the kernel filled. */
  getsockopt(fd: number, level: number, name: number, size: number): Buffer;
  setsockopt(fd: number, level: number, name: number, value: Buffer): void;
  /** ioctl(2) with an int result (SIOCINQ, SIOCOUTQ, SIOCOUTQNSD). */
  ioctlInt(fd: number, request: number): number;
  /** ioctl(2) on a buffer read and written in place (struct ifreq, 40 bytes). */
  ioctlBuffer(fd: number, request: number, arg: Buffer): void;
  /** recv(2)/send(2) on buf[off, off+len); returns the bytes moved. */
  recv(fd: number, buf: Buffer, off: number, len: number, flags: number): number;
  send(fd: number, buf: Buffer, off: number, len: number, flags: number): number;
  bind(fd: number, sockaddr: Buffer): void;
  connect(fd: number, sockaddr: Buffer): void;
  /** getsockname(2), or getpeername(2) with `peer`: the sockaddr bytes. */
  sockName(fd: number, peer: boolean): Buffer;
  /** libzstd's version, or null when the addon was built without it (no libzstd-dev). */
  zstdVersion(): string | null;
  /** Compresses src[srcOff, +srcLen) into dst[dstOff, +dstLen) as one zstd frame; returns its size. */
  zstdCompress(src: Buffer, srcOff: number, srcLen: number, dst: Buffer, dstOff: number, dstLen: number, level: number): number;
  /**
   * The same on the libuv pool (a spare core): resolves to the frame's size.
   * Neither buffer may be touched until it settles.
   */
  zstdCompressAsync(src: Buffer, srcOff: number, srcLen: number, dst: Buffer, dstOff: number, dstLen: number, level: number): Promise<number>;
  /** Decompresses one frame src[srcOff, +srcLen) into dst[dstOff, +dstLen); returns the bytes written. */
  zstdDecompress(src: Buffer, srcOff: number, srcLen: number, dst: Buffer, dstOff: number, dstLen: number): number;
  /** A page-aligned Buffer of `size` bytes backed by its own anonymous mmap (for O_DIRECT I/O). */
  mmapBuffer(size: number): Buffer;
  /** uname release string, e.g. "6.18.44". */
  unameRelease(): string;
  /** getxattr(2) on a path; null when the attribute is absent (ENODATA). */
  getxattr(path: string, name: string): Buffer | null;
  /** Probe: userfaultfd(UFFD_USER_MODE_ONLY|O_CLOEXEC) + UFFDIO_API; features the kernel offers. */
  uffdProbe(): { ok: boolean; errno: number; features: bigint };
  /** Probe: ioctl(PAGEMAP_SCAN) on /proc/self/pagemap over one page of our own memory. */
  pagemapScanProbe(): { ok: boolean; errno: number };
  /**
   * ioctl(PAGEMAP_SCAN) on a pagemap fd: regions of [start, end) whose
   * categories match, as u64 {start, end, categories} triples in `out`;
   * flags 1 = PM_SCAN_WP_MATCHING (write-protect them again), 2 =
   * PM_SCAN_CHECK_WPASYNC. Stops early when `out` is full (see walkEnd).
   */
  pagemapScan(fd: number, start: number, end: number, flags: number, categoryMask: number, anyofMask: number, returnMask: number, out: Buffer): { n: number; walkEnd: number };
}

let cached: Native | undefined;

/** Loads the compiled addon once, naming every place it looked when it is missing. */
export function native(): Native {
  if (cached) return cached;
  const here = dirname(fileURLToPath(import.meta.url));
  // dist/src/sys -> package root is three levels up; src/sys (ts-node style) two.
  const roots = [join(here, '..', '..', '..'), join(here, '..', '..')];
  const tried: string[] = [];
  const require = createRequire(import.meta.url);
  for (const root of roots) {
    for (const sub of ['build/Release/crest_native.node', 'build/Debug/crest_native.node']) {
      const p = join(root, sub);
      tried.push(p);
      if (existsSync(p)) {
        const mod = require(p) as Native;
        mod.setErrorClass(SyscallError);
        cached = mod;
        return mod;
      }
    }
  }
  throw new CrestError(
    'NATIVE_MISSING',
    `crest's native addon is not built; looked in:\n  ${tried.join('\n  ')}\nrun \`npm ci\` (or \`npm run build\`) in the crest package`,
  );
}
