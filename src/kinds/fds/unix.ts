// Unix sockets within the process tree: both ends of a connected pair
// (socketpair: stream, dgram, seqpacket) with the data queued in each
// direction, the two ends in one process or in two, and listening sockets
// (bound to a path or an abstract name).
// The kernel's own account, not assumptions: /proc/net/unix (type, state,
// listening flag), fdinfo (file descriptors in flight), and unix_diag asked
// from inside the task (peer, waiting connections, backlog, the bound file).
//
// Queued data is read without consuming it: SO_PEEK_OFF set to 0 in the task,
// MSG_PEEK walks the queue (MSG_TRUNC gives each datagram's length, so message
// boundaries are kept), then SO_PEEK_OFF goes back to what the process had.
// Restore: socketpair (in the first process of the tree holding either end,
// which hands the other end over to its process when that is another), the
// queues refilled by sending from the peer, buffer
// sizes and the peek offset set; listeners are bound again (a stale socket
// file the process left is removed only when it is the very socket file the
// process had bound and no socket uses the name) and listen with the backlog.
//
// Refused, with the reason: sockets connected to a socket outside the process tree;
// pairs made by connect/accept (their ends have names); sockets that are
// neither connected nor listening; shut-down sockets; file descriptors or
// credentials in flight (SO_PASSCRED, SCM_RIGHTS); listeners with connections
// waiting to be accepted (the other side of each is a process we do not hold).
// Not kept: out-of-band data on stream sockets.
import { lstatSync, readFileSync } from 'node:fs';
import { O } from '../../sys/constants.js';
import { CrestError } from '../../sys/errors.js';
import { AF_UNIX, MSG, NR, SO, SOCK_CLOEXEC, SOL_SOCKET } from './abi.js';
import { call, chunkSize, getsockoptInt, raw, setsockoptSol, type Injector } from './inject.js';
import { parseNetUnix, SO_ACCEPTCON } from './procnet.js';
import { unixDiag, type UnixDiag } from './sockdiag.js';
import { refuseFd, type FdDumpContext, type FdKind, type FdProbe, type FdRestoreContext, type ImageOf } from './types.js';

type UnixImage = ImageOf<'unix'>;
const TYPES: Record<number, UnixImage['type']> = { 1: 'stream', 2: 'dgram', 5: 'seqpacket' };
const TYPE_NR: Record<UnixImage['type'], number> = { stream: 1, dgram: 2, seqpacket: 5 };
const EAGAIN = 11;

/** A name as people read it: a path, or "@name" for an abstract one. */
export function showName(name: Buffer): string {
  return name[0] === 0 ? `@${name.subarray(1).toString('latin1').replace(/\0/g, '@')}` : name.toString('utf8').replace(/\0+$/, '');
}

interface Injected {
  diag: UnixDiag;
  queue?: { data: Buffer; messages?: number[] };
  peekOff: number;
  rcvbuf: number;
  sndbuf: number;
  node?: { dev: number; ino: number; mode: number };
}

/** Reads the receive queue of `fd` without consuming it (SO_PEEK_OFF walk, put back after). */
function peekQueue(ij: Injector, fd: number, type: UnixImage['type'], what: string): { data: Buffer; messages?: number[] } {
  const saved = getsockoptInt(ij, fd, SOL_SOCKET, SO.PEEK_OFF, `the peek offset of ${what}`);
  setsockoptSol(ij, fd, SO.PEEK_OFF, 0, `the peek offset of ${what}`);
  const parts: Buffer[] = [];
  const messages: number[] = [];
  let current = 0;
  try {
    const chunk = chunkSize(ij);
    const flags = MSG.PEEK | MSG.DONTWAIT | (type === 'stream' ? 0 : MSG.TRUNC);
    for (;;) {
      ij.mem.reset();
      const buf = ij.mem.alloc(chunk);
      const n = raw(ij, NR.recvfrom, fd, buf, chunk, flags, 0, 0);
      if (n === -EAGAIN) break;
      if (n < 0) throw new CrestError('SOCKET_PEEK', `reading the queue of ${what} failed (errno ${-n})`);
      if (type === 'stream' && n === 0) break;
      // With MSG_TRUNC a datagram socket reports what is left of the current message, not what was copied.
      const copied = Math.min(n, chunk);
      parts.push(ij.thread.readMem(buf, copied));
      current += copied;
      if (type !== 'stream' && n <= chunk) {
        messages.push(current);
        current = 0;
      }
    }
  } finally {
    ij.mem.reset();
    setsockoptSol(ij, fd, SO.PEEK_OFF, saved, `the peek offset of ${what} back`);
  }
  const data = Buffer.concat(parts);
  return type === 'stream' ? { data } : { data, messages };
}

function describe(p: FdProbe): string {
  const e = p.sock!.unix!;
  return `unix ${TYPES[e.type] ?? `type ${e.type}`} socket${e.path ? ` ${e.path}` : ''} (${p.link})`;
}

export const unix: FdKind<'unix'> = {
  name: 'unix',
  match: (p) => p.sock?.table === 'unix',
  check(p, ctx) {
    const e = p.sock!.unix!;
    const refuse = (why: string): Error => refuseFd(ctx.hostPid, p.fd, 'unix socket', `${describe(p)}: ${why}`);
    if (!TYPES[e.type]) throw refuse('this socket type is not supported');
    const scm = Number(p.info.fields.scm_fds ?? 0);
    if (scm > 0) throw refuse(`${scm} file descriptors are in flight in its queue (SCM_RIGHTS), which crest cannot capture`);
    if ((e.flags & SO_ACCEPTCON) !== 0) return;
    if (e.state !== 3) throw refuse('it is neither connected nor listening (a lone bound or unbound socket is not supported yet)');
  },
  inject(p, ctx): Injected {
    const e = p.sock!.unix!;
    const type = TYPES[e.type]!;
    const what = describe(p);
    const refuse = (why: string): Error => refuseFd(ctx.hostPid, p.fd, 'unix socket', `${what}: ${why}`);
    const d = unixDiag(ctx, [p.st.ino]).get(p.st.ino)!;
    if (d.shutdown !== 0) throw refuse('it was shut down (shutdown(2)), which is not supported yet');
    ctx.mem.reset();
    for (const [opt, name] of [
      [SO.PASSCRED, 'SO_PASSCRED'],
      [SO.PASSSEC, 'SO_PASSSEC'],
    ] as const) {
      if (getsockoptInt(ctx, p.fd, SOL_SOCKET, opt, name) !== 0) throw refuse(`${name} is set, which is not supported yet`);
    }
    const base = {
      diag: d,
      peekOff: getsockoptInt(ctx, p.fd, SOL_SOCKET, SO.PEEK_OFF, 'SO_PEEK_OFF'),
      rcvbuf: getsockoptInt(ctx, p.fd, SOL_SOCKET, SO.RCVBUF, 'SO_RCVBUF'),
      sndbuf: getsockoptInt(ctx, p.fd, SOL_SOCKET, SO.SNDBUF, 'SO_SNDBUF'),
    };
    if (d.state === 10) {
      const waiting = d.icons?.length ?? d.rqlen?.rqueue ?? 0;
      if (waiting > 0) {
        throw refuse(`${waiting} connection${waiting > 1 ? 's are' : ' is'} waiting to be accepted; the other end of each belongs to a process crest does not hold, so they cannot be recreated`);
      }
      if (!d.name) throw refuse('it listens without a name');
      if (d.name[0] === 0) return base;
      const path = showName(d.name);
      if (!path.startsWith('/')) throw refuse(`it is bound to the relative path ${path}, which cannot be found again reliably`);
      let st;
      try {
        st = lstatSync(path);
      } catch {
        throw refuse(`its socket file ${path} was removed, so it could not be bound again by that name`);
      }
      if (!st.isSocket() || !d.vfs || st.ino !== d.vfs.ino || st.dev !== d.vfs.dev) {
        throw refuse(`${path} no longer names the socket file it bound (it was replaced)`);
      }
      return { ...base, node: { dev: st.dev, ino: st.ino, mode: st.mode & 0o7777 } };
    }
    if (d.state !== 1 || d.peer === undefined) throw refuse('it is neither connected nor listening');
    if (!ctx.fdTree.procs.some((q) => q.fds.some((x) => x.st.isSocket() && x.st.ino === d.peer))) {
      throw refuse(`it is connected to unix socket [${d.peer}], which no process of the tree holds (it is outside the job)`);
    }
    const pd = unixDiag(ctx, [d.peer]).get(d.peer)!;
    if (pd.peer !== p.st.ino) throw refuse(`its peer [${d.peer}] is connected elsewhere ([${pd.peer}])`);
    if (d.name || pd.name) {
      throw refuse(`it is one end of a connection made with connect/accept (named ${showName((d.name ?? pd.name)!)}), which is not supported yet; socketpairs are`);
    }
    const queue = peekQueue(ctx, p.fd, type, what);
    if (p.info.fields.scm_fds === undefined && (queue.data.length > 0 || (queue.messages?.length ?? 0) > 0)) {
      throw refuse("it has data queued, and this kernel's fdinfo does not show whether file descriptors travel with it (scm_fds)");
    }
    return { ...base, queue };
  },
  dump(p, ctx: FdDumpContext, id, injected) {
    const inj = injected as Injected;
    const d = inj.diag;
    const img: UnixImage = {
      kind: 'unix',
      id,
      flags: p.info.flags & ~O.CLOEXEC,
      type: TYPES[d.type]!,
      ino: p.st.ino,
      state: d.state === 10 ? 'listen' : 'pair',
      peekOff: inj.peekOff,
      rcvbuf: inj.rcvbuf,
      sndbuf: inj.sndbuf,
    };
    if (d.state === 10) {
      img.backlog = d.rqlen?.wqueue ?? 128;
      img.address = d.name!.toString('base64');
      if (inj.node) img.node = inj.node;
    } else {
      img.peer = d.peer!;
      const q = inj.queue;
      if (q && q.data.length + (q.messages?.length ?? 0) > 0) {
        img.queue = { data: ctx.putData(q.data), ...(q.messages ? { messages: q.messages } : {}) };
      }
    }
    return img;
  },
  preflight(f, ctx) {
    if (f.state === 'pair') {
      const peer = ctx.manifest.processes.flatMap((p) => p.files).find((x) => x.kind === 'unix' && x.ino === f.peer);
      if (!peer || (peer as UnixImage).peer !== f.ino) throw new CrestError('IMAGE_INVALID', `unix socket [${f.ino}] has no peer [${f.peer}] in the image`);
    }
    if (f.queue?.messages && f.queue.messages.reduce((a, b) => a + b, 0) !== f.queue.data.length) {
      throw new CrestError('IMAGE_INVALID', `unix socket [${f.ino}]: its messages do not add up to its queued bytes`);
    }
  },
  restore(f, ctx) {
    return f.state === 'listen' ? restoreListener(f, ctx) : restorePair(f, ctx);
  },
};

/** Buffer sizes: set (as half the reported value, the kernel doubles it) where a new socket differs. */
function setBuffers(ctx: FdRestoreContext, fd: number, f: UnixImage | ImageOf<'inet'>, what: string): void {
  for (const [opt, want, name] of [
    [SO.SNDBUF, f.sndbuf, 'SO_SNDBUF'],
    [SO.RCVBUF, f.rcvbuf, 'SO_RCVBUF'],
  ] as const) {
    if (getsockoptInt(ctx, fd, SOL_SOCKET, opt, name) === want) continue;
    setsockoptSol(ctx, fd, opt, Math.floor(want / 2), `${name} of ${what}`);
    const got = getsockoptInt(ctx, fd, SOL_SOCKET, opt, name);
    if (got !== want) throw new CrestError('RESTORE_MISMATCH', `${what}: ${name} came back as ${got}, not ${want} (net.core.wmem_max/rmem_max smaller here?)`);
  }
}
export { setBuffers };

/** Sends `f`'s queued bytes into it through its peer `from` (each datagram on its own). */
function refillQueue(ctx: FdRestoreContext, f: UnixImage, from: number): void {
  if (!f.queue) return;
  const at = ctx.dataAt(f.queue.data);
  const what = `the queue of unix socket [${f.ino}]`;
  const send = (off: number, len: number): number => {
    const n = raw(ctx, NR.sendto, from, at + off, len, MSG.DONTWAIT | MSG.NOSIGNAL, 0, 0);
    if (n < 0) throw new CrestError('RESTORE_SOCKET', `cannot put back ${what} (${len} bytes at ${off}): errno ${-n}`);
    return n;
  };
  if (!f.queue.messages) {
    for (let off = 0; off < f.queue.data.length; ) {
      const n = send(off, f.queue.data.length - off);
      if (n === 0) throw new CrestError('RESTORE_SOCKET', `${what}: no progress after ${off} bytes`);
      off += n;
    }
    return;
  }
  let off = 0;
  for (const len of f.queue.messages) {
    const n = send(off, len);
    if (n !== len) throw new CrestError('RESTORE_SOCKET', `${what}: a ${len}-byte message went out as ${n} bytes`);
    off += len;
  }
}

function restorePair(f: UnixImage, ctx: FdRestoreContext): number {
  const key = `unix:${Math.min(f.ino, f.peer!)}`;
  let ends = ctx.shared.get(key) as Map<number, number> | undefined;
  if (!ends) {
    // Made whole here, the first process of the tree holding either end.
    const where = ctx.tree.find((x) => x.file.kind === 'unix' && x.file.ino === f.peer)!;
    const peer = where.file as UnixImage;
    const pair = ctx.mem.alloc(8);
    call(ctx, 'socketpair', `create a unix ${f.type} socketpair`, NR.socketpair, AF_UNIX, TYPE_NR[f.type] | SOCK_CLOEXEC, 0, pair);
    const b = ctx.thread.readMem(pair, 8);
    const mine = ctx.keep(b.readInt32LE(0), `unix socket [${f.ino}]`);
    const theirs = ctx.keep(b.readInt32LE(4), `unix socket [${peer.ino}]`);
    ends = new Map([
      [f.ino, mine],
      [peer.ino, theirs],
    ]);
    ctx.shared.set(key, ends);
    for (const [img, fd] of [
      [f, mine],
      [peer, theirs],
    ] as const) {
      ctx.mem.reset();
      setBuffers(ctx, fd, img, `unix socket [${img.ino}]`);
    }
    refillQueue(ctx, f, theirs);
    refillQueue(ctx, peer, mine);
    for (const [img, fd] of [
      [f, mine],
      [peer, theirs],
    ] as const) {
      ctx.mem.reset();
      if (img.peekOff !== -1) setsockoptSol(ctx, fd, SO.PEEK_OFF, img.peekOff, `the peek offset of unix socket [${img.ino}]`);
    }
    if (where.pid !== ctx.proc.pid) ctx.handOver(where.pid, where.index, theirs);
  }
  return ends.get(f.ino)!;
}

function restoreListener(f: UnixImage, ctx: FdRestoreContext): number {
  const name = Buffer.from(f.address!, 'base64');
  const shown = showName(name);
  const what = `unix ${f.type} listener ${shown}`;
  const fd = ctx.keep(call(ctx, 'socket', `create ${what}`, NR.socket, AF_UNIX, TYPE_NR[f.type] | SOCK_CLOEXEC, 0), what);
  setBuffers(ctx, fd, f, what);
  ctx.mem.reset();
  if (name[0] !== 0) clearStaleSocketFile(ctx, shown, f);
  const addr = Buffer.alloc(2 + name.length);
  addr.writeUInt16LE(AF_UNIX, 0);
  name.copy(addr, 2);
  ctx.mem.reset();
  const r = raw(ctx, NR.bind, fd, ctx.mem.put(addr), addr.length);
  if (r < 0) {
    throw new CrestError('ADDRESS_IN_USE', `cannot bind ${what} again: ${r === -98 ? 'the name is in use' : `errno ${-r}`}`);
  }
  if (f.node) call(ctx, 'fchmodat', `give ${shown} mode ${f.node.mode.toString(8)}`, NR.fchmodat, -100, ctx.mem.str(shown), f.node.mode);
  call(ctx, 'listen', `listen on ${what} (backlog ${f.backlog})`, NR.listen, fd, f.backlog ?? 128);
  return fd;
}

/**
 * The socket file a dead listener leaves behind blocks binding its name
 * again. It is removed only when it is exactly the file the process had
 * bound (same inode) and no socket in this network namespace has the name.
 */
function clearStaleSocketFile(ctx: FdRestoreContext, path: string, f: UnixImage): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket() || !f.node || st.ino !== f.node.ino || st.dev !== f.node.dev) {
    throw new CrestError('ADDRESS_IN_USE', `${path} exists and is not the socket file the process had bound, so crest leaves it alone: remove it to restore`);
  }
  const users = [...parseNetUnix(readFileSync('/proc/self/net/unix', 'utf8')).values()].filter((e) => e.path === path);
  if (users.length > 0) throw new CrestError('ADDRESS_IN_USE', `${path} is in use by a live socket (the original process still runs?)`);
  call(ctx, 'unlinkat', `remove the stale socket file ${path}`, NR.unlinkat, -100, ctx.mem.str(path), 0);
}
