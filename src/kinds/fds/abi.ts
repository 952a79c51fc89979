// Kernel ABI numbers the fd kinds use (x86-64), beside the engine's own in
// src/sys/constants.ts: system call numbers, fcntl/ioctl requests, socket
// options, struct sizes. Names as in the kernel headers.

/** x86-64 system call numbers of the calls the fd kinds inject. */
export const NR = {
  read: 0,
  write: 1,
  close: 3,
  fstat: 5,
  poll: 7,
  lseek: 8,
  mmap: 9,
  munmap: 11,
  rt_sigprocmask: 14,
  ioctl: 16,
  pread64: 17,
  pwrite64: 18,
  sendfile: 40,
  socket: 41,
  connect: 42,
  sendto: 44,
  recvfrom: 45,
  sendmsg: 46,
  recvmsg: 47,
  shutdown: 48,
  bind: 49,
  listen: 50,
  getsockname: 51,
  getpeername: 52,
  socketpair: 53,
  setsockopt: 54,
  getsockopt: 55,
  fcntl: 72,
  flock: 73,
  ftruncate: 77,
  fchmod: 91,
  clock_gettime: 228,
  epoll_wait: 232,
  epoll_ctl: 233,
  inotify_add_watch: 254,
  inotify_rm_watch: 255,
  openat: 257,
  unlinkat: 263,
  fchmodat: 268,
  splice: 275,
  tee: 276,
  accept4: 288,
  timerfd_create: 283,
  timerfd_settime: 286,
  timerfd_gettime: 287,
  signalfd4: 289,
  eventfd2: 290,
  epoll_create1: 291,
  dup3: 292,
  pipe2: 293,
  inotify_init1: 294,
  kcmp: 312,
  memfd_create: 319,
  pidfd_open: 434,
  pidfd_getfd: 438,
} as const;

export const FCNTL = {
  DUPFD_CLOEXEC: 1030,
  GETFL: 3,
  SETFL: 4,
  SETSIG: 10,
  GETSIG: 11,
  SETOWN_EX: 15,
  GETOWN_EX: 16,
  SETLK: 6,
  OFD_SETLK: 37,
  SETPIPE_SZ: 1031,
  GETPIPE_SZ: 1032,
  ADD_SEALS: 1033,
  GET_SEALS: 1034,
} as const;

export const F_RDLCK = 0;
export const F_WRLCK = 1;
export const LOCK_SH = 1;
export const LOCK_EX = 2;
export const LOCK_NB = 4;

/** ioctl requests. */
export const IOCTL = {
  FIONREAD: 0x541b,
  /** Terminal line settings (struct termios, 36 bytes): read, and set at once (TCSANOW). */
  TCGETS: 0x5401,
  TCSETS: 0x5402,
  /** _IOW('T', 0x31, int): unlock a pty master's slave; _IO('T', 0x41): open the slave from the master. */
  TIOCSPTLCK: 0x40045431,
  TIOCGPTPEER: 0x5441,
  /** _IOW('T', 0, u64): sets a timerfd's expiration count (CONFIG_CHECKPOINT_RESTORE). */
  TFD_IOC_SET_TICKS: 0x40085400,
} as const;

export const POLLIN = 0x1;
export const POLLOUT = 0x4;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;

export const SPLICE_F_NONBLOCK = 0x2;
export const KCMP_EPOLL_TFD = 7;
export const EPOLL_CTL_ADD = 1;
export const EFD_SEMAPHORE = 1;
export const TFD_TIMER_ABSTIME = 1;
export const MFD_CLOEXEC = 1;
export const MFD_ALLOW_SEALING = 2;
export const MFD_HUGETLB = 4;
export const F_SEAL_SEAL = 1;
export const F_SEAL_EXEC = 0x20;
export const O_TMPFILE = 0o20200000;

export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const AF_NETLINK = 16;
export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;
export const SOCK_RAW = 3;
export const SOCK_SEQPACKET = 5;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const IPPROTO_IPV6 = 41;
export const NETLINK_SOCK_DIAG = 4;

export const SOL_SOCKET = 1;
export const SO = {
  REUSEADDR: 2,
  TYPE: 3,
  ERROR: 4,
  SNDBUF: 7,
  RCVBUF: 8,
  KEEPALIVE: 9,
  PASSCRED: 16,
  RCVLOWAT: 18,
  ACCEPTCONN: 30,
  PASSSEC: 34,
  PEEK_OFF: 42,
  PROTOCOL: 38,
  DOMAIN: 39,
  REUSEPORT: 15,
  PASSPIDFD: 76,
} as const;
export const TCP_NODELAY = 1;
export const TCP_INFO = 11;
export const IPV6_V6ONLY = 26;

export const MSG = {
  PEEK: 0x2,
  TRUNC: 0x20,
  DONTWAIT: 0x40,
  NOSIGNAL: 0x4000,
  CMSG_CLOEXEC: 0x40000000,
} as const;

/** TCP states (include/net/tcp_states.h). */
export const TCP_STATE: Record<number, string> = {
  1: 'ESTABLISHED', 2: 'SYN_SENT', 3: 'SYN_RECV', 4: 'FIN_WAIT1', 5: 'FIN_WAIT2', 6: 'TIME_WAIT',
  7: 'CLOSE', 8: 'CLOSE_WAIT', 9: 'LAST_ACK', 10: 'LISTEN', 11: 'CLOSING', 12: 'NEW_SYN_RECV',
};
export const TCP_ESTABLISHED = 1;
export const TCP_CLOSE = 7;
export const TCP_LISTEN = 10;

/** Default size of a new pipe (16 pages). */
export const PIPE_DEF_SIZE = 65536;
