// Kernel ABI numbers crest uses (x86-64). Kept in one place so the rest of the
// code reads as names, not magic numbers.

/** x86-64 system call numbers. */
export const SYS = {
  read: 0,
  write: 1,
  open: 2,
  close: 3,
  fstat: 5,
  lseek: 8,
  mmap: 9,
  mprotect: 10,
  munmap: 11,
  brk: 12,
  rt_sigaction: 13,
  rt_sigprocmask: 14,
  pread64: 17,
  mremap: 25,
  madvise: 28,
  mlock: 149,
  dup: 32,
  pause: 34,
  nanosleep: 35,
  getitimer: 36,
  setitimer: 38,
  getpid: 39,
  fcntl: 72,
  chdir: 80,
  fchdir: 81,
  umask: 95,
  setpgid: 109,
  setsid: 112,
  wait4: 61,
  waitid: 247,
  kill: 62,
  getpriority: 140,
  setpriority: 141,
  sched_setscheduler: 144,
  prctl: 157,
  sched_setaffinity: 203,
  sigaltstack: 131,
  personality: 135,
  rt_sigqueueinfo: 129,
  capget: 125,
  capset: 126,
  gettid: 186,
  set_tid_address: 218,
  timer_create: 222,
  timer_settime: 223,
  timer_gettime: 224,
  timer_delete: 226,
  exit_group: 231,
  openat: 257,
  set_robust_list: 273,
  dup3: 292,
  rt_tgsigqueueinfo: 297,
  prlimit64: 302,
  rseq: 334,
  clone3: 435,
} as const;

export const PTRACE_O = {
  TRACESYSGOOD: 1,
  TRACECLONE: 8,
  EXITKILL: 0x100000,
} as const;

export const PTRACE_EVENT_STOP = 128;
export const PTRACE_EVENT_CLONE = 3;
export const PTRACE_EVENT_FORK = 1;
export const __WALL = 0x40000000;
export const WNOHANG = 1;

export const SIG = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGTRAP: 5,
  SIGKILL: 9,
  SIGUSR1: 10,
  SIGSEGV: 11,
  SIGUSR2: 12,
  SIGTERM: 15,
  SIGCHLD: 17,
  SIGCONT: 18,
  SIGSTOP: 19,
  SIGTSTP: 20,
  SIGTTIN: 21,
  SIGTTOU: 22,
} as const;

export const NT = {
  PRSTATUS: 1,
  PRFPREG: 2,
  X86_XSTATE: 0x202,
} as const;

export const PROT = { NONE: 0, READ: 1, WRITE: 2, EXEC: 4 } as const;
export const MAP = {
  SHARED: 0x01,
  PRIVATE: 0x02,
  FIXED: 0x10,
  ANONYMOUS: 0x20,
  GROWSDOWN: 0x100,
  NORESERVE: 0x4000,
  POPULATE: 0x8000,
  FIXED_NOREPLACE: 0x100000,
} as const;
export const MREMAP = { MAYMOVE: 1, FIXED: 2 } as const;
export const MADV = {
  DONTFORK: 10,
  MERGEABLE: 12,
  HUGEPAGE: 14,
  NOHUGEPAGE: 15,
  DONTDUMP: 16,
  WIPEONFORK: 18,
  POPULATE_WRITE: 23,
} as const;

export const O = {
  RDONLY: 0,
  WRONLY: 1,
  RDWR: 2,
  ACCMODE: 3,
  CREAT: 0o100,
  EXCL: 0o200,
  NOCTTY: 0o400,
  TRUNC: 0o1000,
  APPEND: 0o2000,
  NONBLOCK: 0o4000,
  LARGEFILE: 0o100000,
  DIRECTORY: 0o200000,
  NOFOLLOW: 0o400000,
  CLOEXEC: 0o2000000,
  PATH: 0o10000000,
} as const;
export const AT_FDCWD = -100;
export const F = { DUPFD: 0, GETFD: 1, SETFD: 2, GETFL: 3, SETFL: 4, DUPFD_CLOEXEC: 1030 } as const;

export const PR = {
  SET_PDEATHSIG: 1,
  GET_DUMPABLE: 3,
  CAPBSET_DROP: 24,
  SET_MM: 35,
  SET_MM_MAP: 14,
  SET_MM_MAP_SIZE: 15,
  SET_NO_NEW_PRIVS: 38,
  GET_TID_ADDRESS: 40,
  CAP_AMBIENT: 47,
  CAP_AMBIENT_RAISE: 2,
  CAP_AMBIENT_CLEAR_ALL: 4,
} as const;

export const RSEQ_FLAG_UNREGISTER = 1;
export const KCMP_FILE = 0;
export const PAGE_SIZE = 4096;
/** Restart codes a syscall interrupted by a stop leaves in rax (negated). */
export const ERESTARTSYS = 512;
export const ERESTARTNOINTR = 513;
export const ERESTARTNOHAND = 514;
export const ERESTART_RESTARTBLOCK = 516;
export const EINTR = 4;
export const RLIMIT_COUNT = 16;
export const CAP_CHECKPOINT_RESTORE = 40;
export const CAP_LAST_CAP_MAX = 63;
