// unix_diag (sock_diag netlink) queries made from inside the task: the only
// place the kernel tells a unix socket's peer, the connections waiting on a
// listener, its backlog and its bound file's inode. The netlink socket is
// opened in the task (its network namespace, crest's native layer untouched),
// asked about one socket inode at a time, and closed again.
import { CrestError } from '../../sys/errors.js';
import { AF_NETLINK, AF_UNIX, NETLINK_SOCK_DIAG, NR, SOCK_CLOEXEC, SOCK_RAW, MSG } from './abi.js';
import { call, raw, type Injector } from './inject.js';
import { kdevToStatDev } from './fdinfo.js';

const SOCK_DIAG_BY_FAMILY = 20;
const NLM_F_REQUEST = 1;
const NLMSG_ERROR = 2;
const UDIAG_SHOW_NAME = 0x1;
const UDIAG_SHOW_VFS = 0x2;
const UDIAG_SHOW_PEER = 0x4;
const UDIAG_SHOW_ICONS = 0x8;
const UDIAG_SHOW_RQLEN = 0x10;
const UNIX_DIAG_NAME = 0;
const UNIX_DIAG_VFS = 1;
const UNIX_DIAG_PEER = 2;
const UNIX_DIAG_ICONS = 3;
const UNIX_DIAG_RQLEN = 4;
const UNIX_DIAG_SHUTDOWN = 6;

/** What unix_diag reports about one socket. */
export interface UnixDiag {
  ino: number;
  /** SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5. */
  type: number;
  /** TCP_ESTABLISHED 1 (connected), TCP_CLOSE 7, TCP_LISTEN 10. */
  state: number;
  /** sun_path bytes of the bound name (an abstract one starts with NUL); absent when unbound. */
  name?: Buffer;
  /** The bound socket file's inode and device (stat(2) encoding). */
  vfs?: { ino: number; dev: number };
  peer?: number;
  /** Connections waiting on a listener (their inodes). */
  icons?: number[];
  /** Listener: waiting connections and backlog; otherwise bytes to read and bytes in flight. */
  rqlen?: { rqueue: number; wqueue: number };
  shutdown: number;
}

/** Parses one SOCK_DIAG_BY_FAMILY answer (nlmsghdr + unix_diag_msg + attributes). */
export function parseUnixDiag(b: Buffer): UnixDiag {
  const len = b.readUInt32LE(0);
  const type = b.readUInt16LE(4);
  if (type === NLMSG_ERROR) {
    const err = -b.readInt32LE(16);
    throw new CrestError('SOCK_DIAG', `unix_diag refused the query (errno ${err})`);
  }
  if (type !== SOCK_DIAG_BY_FAMILY || len > b.length || len < 32) throw new CrestError('SOCK_DIAG', `unexpected unix_diag answer (type ${type}, ${len} bytes)`);
  const out: UnixDiag = { type: b.readUInt8(17), state: b.readUInt8(18), ino: b.readUInt32LE(20), shutdown: 0 };
  for (let at = 32; at + 4 <= len; ) {
    const alen = b.readUInt16LE(at);
    const atype = b.readUInt16LE(at + 2) & 0x3fff;
    if (alen < 4) break;
    const p = b.subarray(at + 4, at + alen);
    if (atype === UNIX_DIAG_NAME) out.name = Buffer.from(p);
    else if (atype === UNIX_DIAG_VFS) out.vfs = { ino: p.readUInt32LE(0), dev: kdevToStatDev(p.readUInt32LE(4)) };
    else if (atype === UNIX_DIAG_PEER) out.peer = p.readUInt32LE(0);
    else if (atype === UNIX_DIAG_ICONS) out.icons = Array.from({ length: p.length / 4 }, (_, i) => p.readUInt32LE(i * 4));
    else if (atype === UNIX_DIAG_RQLEN) out.rqlen = { rqueue: p.readUInt32LE(0), wqueue: p.readUInt32LE(4) };
    else if (atype === UNIX_DIAG_SHUTDOWN) out.shutdown = p.readUInt8(0);
    at += (alen + 3) & ~3;
  }
  return out;
}

/** Asks unix_diag about the unix sockets `inodes` from inside the task (an injected netlink socket, closed again). */
export function unixDiag(ij: Injector, inodes: readonly number[]): Map<number, UnixDiag> {
  const out = new Map<number, UnixDiag>();
  ij.mem.reset();
  const nl = raw(ij, NR.socket, AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (nl < 0) throw new CrestError('SOCK_DIAG', `cannot open a sock_diag netlink socket in the process (errno ${-nl}; at its fd limit?)`);
  try {
    for (const ino of inodes) {
      ij.mem.reset();
      const req = Buffer.alloc(40);
      req.writeUInt32LE(40, 0);
      req.writeUInt16LE(SOCK_DIAG_BY_FAMILY, 4);
      req.writeUInt16LE(NLM_F_REQUEST, 6);
      req.writeUInt32LE(ino, 8); // sequence number
      req.writeUInt8(AF_UNIX, 16);
      req.writeUInt32LE(0xffffffff, 20); // all states
      req.writeUInt32LE(ino, 24);
      req.writeUInt32LE(UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN, 28);
      req.writeUInt32LE(0xffffffff, 32); // no cookie
      req.writeUInt32LE(0xffffffff, 36);
      const at = ij.mem.put(req);
      call(ij, 'sendto', `ask unix_diag about socket ${ino}`, NR.sendto, nl, at, 40, 0, 0, 0);
      const size = 8192;
      const buf = ij.mem.alloc(size);
      const n = call(ij, 'recvfrom', `read unix_diag's answer about socket ${ino}`, NR.recvfrom, nl, buf, size, MSG.DONTWAIT, 0, 0);
      const d = parseUnixDiag(ij.thread.readMem(buf, n));
      if (d.ino !== ino) throw new CrestError('SOCK_DIAG', `unix_diag answered about socket ${d.ino}, not ${ino}`);
      out.set(ino, d);
    }
  } finally {
    raw(ij, NR.close, nl);
  }
  return out;
}
