// Unix sockets within the process tree: socketpairs (stream, dgram,
// seqpacket) with the data queued in each direction; connections made by
// connect/accept on a path or an abstract name, also not accepted yet;
// listeners (bound to a path or an abstract name) with the connections
// waiting on them; datagram sockets, bound or not, connected by name or not,
// with their queued messages and each message's sender name; unconnected
// sockets. The two ends of a connection may be in one process or in two.
// The kernel's own account, not assumptions: /proc/net/unix (type, state,
// listening flag), fdinfo (file descriptors in flight), and unix_diag asked
// from inside the task (peer, waiting connections, backlog, the bound file,
// bytes a client sent).
//
// Queued data is read without consuming it: SO_PEEK_OFF set to 0 in the task,
// MSG_PEEK walks the queue (MSG_TRUNC gives each datagram's length, so message
// boundaries are kept; recvfrom gives each datagram's sender name), then
// SO_PEEK_OFF goes back to what the process had.
//
// Which end of a named connection accept(2) returned: the end with a name
// when only one has one (a client that did not bind has none; the accepted
// end has its listener's name), else the end whose name a listener of the
// tree has.
//
// Restore: ./unixrestore.ts (the sockets that refer to each other are
// rebuilt together by the first process holding one of them; a connection
// through the tree's listener or a temporary one bound to its name).
//
// Refused, with the reason: sockets connected to a socket outside the
// process tree (a peer, a waiting connection's client, a listener); a
// connection not accepted yet whose client sent data already (the kernel
// hands those bytes out only through accept(2), which would take the
// connection from the process: CRIU refuses it too); a connection both of
// whose ends have names when the tree's listeners do not say which end was
// accepted; a relative name, or a name whose file was replaced by another;
// shut-down sockets; file descriptors or credentials in flight (SO_PASSCRED,
// SCM_RIGHTS); an unnamed datagram socket with messages it could not be sent
// again (not a socketpair end).
// Not kept: out-of-band data on stream sockets; SO_PEERCRED names the
// process that rebuilt a connection; a queued datagram's sender name that
// cannot be bound again at restore (warned); an empty datagram or seqpacket
// message that was peeked at once already (by the process, or by an earlier
// --leave-running checkpoint): MSG_PEEK skips it from then on, so it is not
// seen (refused only when nothing else is queued, where poll tells).
import { lstatSync, readFileSync } from 'node:fs';
import { O } from '../../sys/constants.js';
import { CrestError } from '../../sys/errors.js';
import { AF_UNIX, MSG, NR, SO, SOCK_CLOEXEC, SOCK_DGRAM, SOL_SOCKET } from './abi.js';
import { chunkSize, getsockoptInt, raw, setsockoptSol, type Injector } from './inject.js';
import { parseNetUnix, SO_ACCEPTCON } from './procnet.js';
import { unixDiag, type UnixDiag } from './sockdiag.js';
import { checkPath, pathsBound, restoreUnix, setBuffers, showName, TYPES } from './unixrestore.js';
import { refuseFd, type FdDumpContext, type FdKind, type FdProbe, type TreeFds } from './types.js';
import type { ImageOf } from './types.js';

export { setBuffers, showName };

type UnixImage = ImageOf<'unix'>;
type Node = NonNullable<UnixImage['node']>;
const EAGAIN = 11;
const EPROTOTYPE = 91;
const ECONNREFUSED = 111;

interface Queue {
  data: Buffer;
  messages?: number[];
  /** Each datagram's sender name (empty: an unnamed sender). */
  from?: Buffer[];
}

interface Injected {
  diag: UnixDiag;
  state: UnixImage['state'];
  peer?: number;
  accepted?: boolean;
  pending?: number[];
  queue?: Queue;
  peekOff: number;
  rcvbuf: number;
  sndbuf: number;
  node?: Node;
}

/** Reads the receive queue of `fd` without consuming it (SO_PEEK_OFF walk, put back after); with `senders`, each datagram's sender name. */
function peekQueue(ij: Injector, fd: number, type: UnixImage['type'], what: string, senders: boolean): Queue {
  const saved = getsockoptInt(ij, fd, SOL_SOCKET, SO.PEEK_OFF, `the peek offset of ${what}`);
  setsockoptSol(ij, fd, SO.PEEK_OFF, 0, `the peek offset of ${what}`);
  const parts: Buffer[] = [];
  const messages: number[] = [];
  const from: Buffer[] = [];
  let current = 0;
  try {
    const chunk = chunkSize(ij);
    const flags = MSG.PEEK | MSG.DONTWAIT | (type === 'stream' ? 0 : MSG.TRUNC);
    for (;;) {
      ij.mem.reset();
      const buf = ij.mem.alloc(chunk);
      const addr = senders ? ij.mem.alloc(112) : 0;
      const alen = senders ? ij.mem.put(Buffer.from([112, 0, 0, 0])) : 0;
      const n = raw(ij, NR.recvfrom, fd, buf, chunk, flags, addr, alen);
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
        if (senders) {
          const len = Math.min(112, ij.thread.readMem(alen, 4).readUInt32LE(0));
          from.push(len > 2 ? ij.thread.readMem(addr + 2, len - 2) : Buffer.alloc(0));
        }
      }
    }
  } finally {
    ij.mem.reset();
    setsockoptSol(ij, fd, SO.PEEK_OFF, saved, `the peek offset of ${what} back`);
  }
  const data = Buffer.concat(parts);
  if (type === 'stream') return { data };
  return senders && from.some((b) => b.length > 0) ? { data, messages, from } : { data, messages };
}

/** Whether poll(2) finds something to read on `fd` (without waiting). */
function readable(ij: Injector, fd: number): boolean {
  ij.mem.reset();
  const pfd = Buffer.alloc(8);
  pfd.writeInt32LE(fd, 0);
  pfd.writeInt16LE(1, 4); // POLLIN
  const at = ij.mem.put(pfd);
  if (raw(ij, NR.poll, at, 1, 0) <= 0) return false;
  const revents = ij.thread.readMem(at + 6, 2).readInt16LE(0);
  return (revents & 1) !== 0 && (revents & 8) === 0; // POLLIN without POLLERR
}

/** unix_diag answers of one dump (every process frozen: they hold until it ends), by inode. */
const diags = new WeakMap<TreeFds, Map<number, UnixDiag>>();

function diagOf(ctx: FdDumpContext, ino: number): UnixDiag {
  let cache = diags.get(ctx.fdTree);
  if (!cache) diags.set(ctx.fdTree, (cache = new Map()));
  if (!cache.has(ino)) {
    const d = unixDiag(ctx, [ino]).get(ino);
    if (!d) throw new CrestError('SOCK_DIAG', `unix_diag knows no socket ${ino}`);
    cache.set(ino, d);
  }
  return cache.get(ino)!;
}

/** The process and fd of the tree holding socket `ino`, for messages; undefined when none does. */
function holder(ctx: FdDumpContext, ino: number): string | undefined {
  for (const q of ctx.fdTree.procs) {
    const p = q.fds.find((x) => x.st.isSocket() && x.st.ino === ino);
    if (p) return `pid ${q.hostPid} fd ${p.fd}`;
  }
  return undefined;
}

/** The listening unix sockets of the tree, as unix_diag sees them. */
function treeListeners(ctx: FdDumpContext): UnixDiag[] {
  const inos = new Set<number>();
  for (const q of ctx.fdTree.procs) {
    for (const x of q.fds) if (x.sock?.table === 'unix' && (x.sock.unix!.flags & SO_ACCEPTCON) !== 0) inos.add(x.st.ino);
  }
  return [...inos].map((ino) => diagOf(ctx, ino));
}

/**
 * The socket file of a name in the file system: its node when the path
 * still names the file `d` reports (unix_diag's VFS), undefined when the
 * path is gone, null when another file is there now.
 */
function fileOf(d: UnixDiag, refuse: (why: string) => Error): Node | undefined | null {
  if (!d.name || d.name[0] === 0) return undefined;
  const path = showName(d.name);
  if (!path.startsWith('/')) throw refuse(`its name is the relative path ${path}, which cannot be found again reliably`);
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return undefined;
  }
  if (!st.isSocket() || !d.vfs || st.ino !== d.vfs.ino || st.dev !== d.vfs.dev) return null;
  return { dev: st.dev, ino: st.ino, mode: st.mode & 0o7777 };
}

/** The file of the socket's own name; a name whose file was replaced is refused. */
function ownFile(d: UnixDiag, refuse: (why: string) => Error): Node | undefined {
  const node = fileOf(d, refuse);
  if (node === null) throw refuse(`${showName(d.name!)} no longer names the socket file it bound (it was replaced)`);
  return node;
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
    // SS_UNCONNECTED 1 (listening, or neither connected nor listening), SS_CONNECTED 3.
    if (e.state !== 1 && e.state !== 3) throw refuse('it is connecting or disconnecting');
  },
  inject(p, ctx): Injected {
    const e = p.sock!.unix!;
    const type = TYPES[e.type]!;
    const what = describe(p);
    const refuse = (why: string): Error => refuseFd(ctx.hostPid, p.fd, 'unix socket', `${what}: ${why}`);
    const ino = p.st.ino;
    const d = diagOf(ctx, ino);
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
    const outside = (peer: number): string => `unix socket [${peer}], which no process of the tree holds (it is outside the job)`;
    const withQueue = (st: Omit<Injected, keyof typeof base>): Injected => {
      const queue = peekQueue(ctx, p.fd, type, what, type === 'dgram');
      if (p.info.fields.scm_fds === undefined && (queue.data.length > 0 || (queue.messages?.length ?? 0) > 0)) {
        throw refuse("it has data queued, and this kernel's fdinfo does not show whether file descriptors travel with it (scm_fds)");
      }
      const empty = queue.data.length === 0 && (queue.messages?.length ?? 0) === 0;
      if (type !== 'stream' && empty && readable(ctx, p.fd)) {
        // MSG_PEEK skips an empty message that was peeked at once (the kernel's guard against peeking it forever).
        throw refuse('messages are queued that MSG_PEEK does not show (empty messages peeked at before, by the process or an earlier checkpoint)');
      }
      if (type === 'dgram' && st.state !== 'pair' && !d.name && !empty) {
        throw refuse('it has no name and messages are queued for it: they could not be sent to it again');
      }
      return { ...base, ...st, ...(empty ? {} : { queue }) };
    };

    if (d.state === 10) {
      if (!d.name) throw refuse('it listens without a name');
      const node = ownFile(d, refuse);
      const pending = d.icons ?? [];
      if (pending.length === 0 && (d.rqlen?.rqueue ?? 0) > 0) throw refuse("connections wait to be accepted, and this kernel's unix_diag does not say whose");
      for (const c of pending) {
        if (c === 0) throw refuse('a connection waiting to be accepted was closed by its client already, which crest cannot recreate');
        if (!holder(ctx, c)) throw refuse(`a connection waiting to be accepted comes from ${outside(c)}`);
      }
      return { ...base, state: 'listen', ...(node ? { node } : {}), ...(pending.length > 0 ? { pending } : {}) };
    }
    if (d.state === 7 || (type === 'dgram' && d.peer === undefined)) {
      // Neither connected nor listening: a datagram socket (bound or not; one others connected to is
      // TCP_ESTABLISHED without a peer), or a stream socket not connected yet.
      const node = ownFile(d, refuse);
      if (type !== 'dgram') return { ...base, state: 'unconnected', ...(node ? { node } : {}) };
      return withQueue({ state: 'unconnected', ...(node ? { node } : {}) });
    }
    if (d.state !== 1) throw refuse('it is neither connected nor listening');
    if (type === 'dgram' && d.peer === 0) throw refuse('it is connected to a socket that was closed since');
    if (!d.peer) {
      // A client whose connection waits to be accepted: its peer is the listener's embryo socket (no inode).
      const l = type === 'dgram' ? undefined : treeListeners(ctx).find((x) => x.icons?.includes(ino));
      if (!l) throw refuse('its peer was closed, or it waits to be accepted by a listener outside the job');
      if ((d.rqlen?.wqueue ?? 0) > 0) {
        throw refuse(
          `its connection to ${showName(l.name!)} waits to be accepted with data it sent already: the kernel hands those bytes out only through accept(2), which would take the connection from the listening process`,
        );
      }
      const node = ownFile(d, refuse);
      return { ...base, state: 'connected', peer: l.ino, ...(node ? { node } : {}) };
    }
    if (!holder(ctx, d.peer)) throw refuse(`it is connected to ${outside(d.peer)}`);
    const pd = diagOf(ctx, d.peer);
    if (type === 'dgram') {
      if (d.peer !== ino && pd.peer === ino && (!d.name || !pd.name)) {
        // Connected both ways without two names: a socketpair (an end may have been bound since).
        const q = withQueue({ state: 'pair', peer: d.peer, ...fileState(d, refuse) });
        const foreign = q.queue?.from?.find((n) => n.length > 0 && !(pd.name && n.equals(pd.name)));
        if (foreign) throw refuse(`messages from ${showName(foreign)} are queued, not from its peer: a socketpair end could not be given them again`);
        return q;
      }
      if (!pd.name) throw refuse(`it is connected to unix socket [${d.peer}], which has no name to connect to again`);
      return withQueue({ state: 'connected', peer: d.peer, ...fileState(d, refuse) });
    }
    if (pd.peer !== ino) throw refuse(`its peer [${d.peer}] is connected elsewhere ([${pd.peer}])`);
    if (!d.name && !pd.name) return withQueue({ state: 'pair', peer: d.peer });
    const accepted = acceptedEnd(ctx, d, pd, refuse);
    if (!accepted) return withQueue({ state: 'connected', peer: d.peer, ...fileState(d, refuse) });
    // The accepted end: its name and file are its listener's.
    const node = fileOf(d, refuse);
    const listens = treeListeners(ctx).find((l) => l.name?.equals(d.name!));
    if (listens && listens.type !== d.type) {
      throw refuse(`it was accepted on ${showName(d.name!)}, where a ${TYPES[listens.type]} listener of the tree listens now: the connection could not be made there again`);
    }
    if (node === null && !listens) throw refuse(`it was accepted on ${showName(d.name!)}, which now names another file: that name could not be bound again to rebuild the connection`);
    return withQueue({ state: 'connected', peer: d.peer, accepted: true, ...(node ? { node } : {}) });
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
      state: inj.state,
      peekOff: inj.peekOff,
      rcvbuf: inj.rcvbuf,
      sndbuf: inj.sndbuf,
    };
    if (inj.peer !== undefined) img.peer = inj.peer;
    if (inj.state === 'listen') img.backlog = d.rqlen?.wqueue ?? 128;
    if (inj.pending) img.pending = inj.pending;
    if (inj.accepted) img.accepted = true;
    if (d.name) img.address = d.name.toString('base64');
    if (inj.node) img.node = inj.node;
    const q = inj.queue;
    if (q) {
      img.queue = { data: ctx.putData(q.data), ...(q.messages ? { messages: q.messages } : {}), ...(q.from ? { from: q.from.map((b) => b.toString('base64')) } : {}) };
    }
    return img;
  },
  preflight(f, ctx) {
    const bad = (why: string): Error => new CrestError('IMAGE_INVALID', `unix socket [${f.ino}]: ${why}`);
    const find = (ino: number): UnixImage | undefined =>
      ctx.manifest.processes.flatMap((p) => p.files).find((x): x is UnixImage => x.kind === 'unix' && x.ino === ino);
    const peer = f.peer === undefined ? undefined : find(f.peer);
    if ((f.state === 'pair' || f.state === 'connected') && (!peer || peer.type !== f.type)) throw bad(`it has no peer [${f.peer}] of its type in the image`);
    if (f.state === 'pair' && peer!.peer !== f.ino) throw bad(`its peer [${f.peer}] is not connected to it`);
    if (f.state === 'connected' && f.type === 'dgram' && !peer!.address) throw bad(`it is connected to [${f.peer}], which has no name`);
    if (f.state === 'connected' && f.type !== 'dgram') {
      if (peer!.state === 'listen') {
        if (f.accepted || !peer!.pending?.includes(f.ino) || f.queue) throw bad(`it is not among the connections waiting on [${f.peer}]`);
      } else if (peer!.state !== 'connected' || peer!.peer !== f.ino || !!peer!.accepted === !!f.accepted || !(f.accepted ? f : peer!).address) {
        throw bad(`it and its peer [${f.peer}] are not the two ends of one accepted connection`);
      }
    }
    if ((f.state === 'listen' || f.accepted) && !f.address) throw bad('it has no name');
    for (const c of f.pending ?? []) {
      const client = find(c);
      if (f.state !== 'listen' || client?.state !== 'connected' || client.peer !== f.ino) throw bad(`its waiting connection [${c}] is not a client of it in the image`);
    }
    if (f.queue?.messages && f.queue.messages.reduce((a, b) => a + b, 0) !== f.queue.data.length) throw bad('its messages do not add up to its queued bytes');
    if (f.queue?.from && f.queue.from.length !== (f.queue.messages?.length ?? -1)) throw bad('its messages and their senders do not match');
    if (f.type === 'dgram' && f.state !== 'pair' && f.queue && !f.address) throw bad('messages are queued for it, and it has no name to send them to');
    // Before any process exists: a file at one of its paths that is not the image's own stops the restore here, untouched.
    const all = ctx.manifest.processes.flatMap((p) => p.files).filter((x): x is UnixImage => x.kind === 'unix');
    for (const [path, node] of pathsBound(f, all)) checkPath(path, node ?? all.find((x) => x.address === f.address && x.node)?.node);
  },
  restore(f, ctx) {
    return restoreUnix(f, ctx);
  },
};

/** The node of a socket's own name (a connected client's, a datagram socket's), as an optional field. */
function fileState(d: UnixDiag, refuse: (why: string) => Error): { node?: Node } {
  const node = ownFile(d, refuse);
  return node ? { node } : {};
}

/** The end accept(2) returned, by connection (the lower inode's key), decided once per dump for both ends. */
const acceptedEnds = new WeakMap<TreeFds, Map<number, number>>();

/**
 * Whether `d` is the end of its connection that accept(2) returned (`pd`
 * the other end; at least one of them has a name). The accepted end carries
 * its listener's name; a client has a name only if it bound one. With two
 * names: the end whose name a listener of the network namespace (in the
 * tree or not) has; else, for a name whose socket file is still there, a
 * datagram socket connecting to it in the task tells whether a socket is
 * bound to that file (EPROTOTYPE: the client's own name) or none is
 * (ECONNREFUSED: the closed listener's).
 */
function acceptedEnd(ctx: FdDumpContext, d: UnixDiag, pd: UnixDiag, refuse: (why: string) => Error): boolean {
  if (!pd.name) return true;
  if (!d.name) return false;
  let cache = acceptedEnds.get(ctx.fdTree);
  if (!cache) acceptedEnds.set(ctx.fdTree, (cache = new Map()));
  const key = Math.min(d.ino, pd.ino);
  let which = cache.get(key);
  if (which === undefined) {
    const listening = new Set(
      [...parseNetUnix(readFileSync(`/proc/${ctx.hostPid}/net/unix`, 'utf8')).values()].filter((e) => (e.flags & SO_ACCEPTCON) !== 0 && e.type === d.type).map((e) => e.path),
    );
    const [a, b] = [listening.has(showName(d.name)), listening.has(showName(pd.name))];
    if (a !== b) which = a ? d.ino : pd.ino;
    else if (!a) {
      const [pa, pb] = [boundProbe(ctx, d), boundProbe(ctx, pd)];
      const dIsClient = pa === 'bound' || pb === 'free';
      const pdIsClient = pb === 'bound' || pa === 'free';
      if (dIsClient !== pdIsClient) which = dIsClient ? pd.ino : d.ino;
    }
    if (which === undefined) {
      throw refuse(
        `both ends of its connection have names (${showName(d.name)}, ${showName(pd.name)}) and crest cannot tell which end accept(2) returned (${a ? 'listeners have both names' : 'no listener has either, and their socket files do not tell'})`,
      );
    }
    cache.set(key, which);
  }
  return which === d.ino;
}

/**
 * Whether a socket is bound to the socket file of `d`'s name (its path
 * naming the very file unix_diag reports): a datagram socket made in the
 * task connects to it and is closed again; nothing else changes (a stream
 * or seqpacket socket found there refuses a datagram peer).
 */
function boundProbe(ctx: FdDumpContext, d: UnixDiag): 'bound' | 'free' | null {
  if (!d.name || d.name[0] === 0 || !d.vfs) return null;
  const path = showName(d.name);
  try {
    const st = lstatSync(path);
    if (!st.isSocket() || st.ino !== d.vfs.ino || st.dev !== d.vfs.dev) return null;
  } catch {
    return null;
  }
  ctx.mem.reset();
  const fd = raw(ctx, NR.socket, AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return null;
  try {
    const a = Buffer.alloc(2 + d.name.length);
    a.writeUInt16LE(AF_UNIX, 0);
    d.name.copy(a, 2);
    const r = raw(ctx, NR.connect, fd, ctx.mem.put(a), a.length);
    return r === -EPROTOTYPE ? 'bound' : r === -ECONNREFUSED ? 'free' : null;
  } finally {
    raw(ctx, NR.close, fd);
  }
}
