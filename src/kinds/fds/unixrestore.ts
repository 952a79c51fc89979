// Rebuilding the unix sockets of an image (the restore half of ./unix.ts).
//
// Sockets that refer to each other are rebuilt together, in one husk: a
// socketpair's two ends, a connection's two ends, a listener and the
// connections made on its name, a datagram socket and the sockets connected
// to its name or whose messages wait in its queue. Together means linked by
// a peer, a waiting connection, a shared name or a queued message's sender
// name (a "cluster"). The first process of the tree (image order) holding
// any socket of a cluster builds all of it, and hands each socket another
// process holds over to that process, which takes it instead of making it;
// so the order of the steps below is crest's alone, whatever the order of
// the processes.
//
// The kernel's facts this rests on (net/unix/af_unix.c):
// - the socket accept(2) returns carries its listener's address (the same
//   unix_address, and the listener's path, copied in unix_stream_connect):
//   getsockname on it and getpeername on its client give the listener's
//   name. So a connection is rebuilt by connecting the client to a listener
//   bound to that name and accepting: the tree's own listener when it still
//   listens on the name, else a temporary one bound to the name for the
//   moment, closed once its connections are accepted;
// - binding a name in the file system creates its socket file (mknod) and
//   fails with EADDRINUSE when anything is at the path; closing the socket
//   leaves the file. A stale file is removed only when it is the very
//   socket file the image recorded and no socket of the namespace has the
//   name; a file crest made for a name that had no file at the checkpoint
//   is removed again at the end;
// - a connected datagram socket takes messages from its peer only
//   (unix_may_send), so queued messages are put back before it connects; a
//   message's sender name (what recvfrom returns) is the sending socket's
//   address, so each is sent from a socket bound to that name: the tree's
//   own, else a temporary one (closed after; the queued message keeps its
//   name). A name that cannot be bound again (the path holds another file,
//   another socket has the name) is lost: the message comes from an
//   unnamed socket, with a warning.
// - unix_stream_connect sets SO_PEERCRED from the calling process: the
//   restored connections report the process that rebuilt them (uid and gid
//   are the job's, as before).
import { lstatSync, readFileSync } from 'node:fs';
import { CrestError } from '../../sys/errors.js';
import { AF_UNIX, MSG, NR, SO, SOCK_CLOEXEC, SOCK_NONBLOCK, SOL_SOCKET } from './abi.js';
import { call, getsockoptInt, raw, setsockoptSol } from './inject.js';
import { parseNetUnix } from './procnet.js';
import { unixDiag } from './sockdiag.js';
import type { FdRestoreContext, ImageOf, TreeFile } from './types.js';

type UnixImage = ImageOf<'unix'>;
type Node = NonNullable<UnixImage['node']>;

export const TYPES: Record<number, UnixImage['type']> = { 1: 'stream', 2: 'dgram', 5: 'seqpacket' };
const TYPE_NR: Record<UnixImage['type'], number> = { stream: 1, dgram: 2, seqpacket: 5 };
const EAGAIN = 11;
const EADDRINUSE = 98;

/** A name as people read it: a path, or "@name" for an abstract one. */
export function showName(name: Buffer): string {
  return name[0] === 0 ? `@${name.subarray(1).toString('latin1').replace(/\0/g, '@')}` : name.toString('utf8').replace(/\0+$/, '');
}

/** struct sockaddr_un for `name` (sun_path bytes as the kernel reports them). */
function sockaddr(name: Buffer): Buffer {
  const a = Buffer.alloc(2 + name.length);
  a.writeUInt16LE(AF_UNIX, 0);
  name.copy(a, 2);
  return a;
}

/** Buffer sizes: set (as half the reported value, the kernel doubles it) where a new socket differs. */
export function setBuffers(ctx: FdRestoreContext, fd: number, f: UnixImage | ImageOf<'inet'>, what: string): void {
  for (const [opt, want, name] of [
    [SO.SNDBUF, f.sndbuf, 'SO_SNDBUF'],
    [SO.RCVBUF, f.rcvbuf, 'SO_RCVBUF'],
  ] as const) {
    ctx.mem.reset();
    if (getsockoptInt(ctx, fd, SOL_SOCKET, opt, name) === want) continue;
    setsockoptSol(ctx, fd, opt, Math.floor(want / 2), `${name} of ${what}`);
    const got = getsockoptInt(ctx, fd, SOL_SOCKET, opt, name);
    if (got !== want) throw new CrestError('RESTORE_MISMATCH', `${what}: ${name} came back as ${got}, not ${want} (net.core.wmem_max/rmem_max smaller here?)`);
  }
}

/** Sends `f`'s queued bytes into it through its connected peer `from` (each message on its own). */
function refillFromPeer(ctx: FdRestoreContext, f: UnixImage, from: number): void {
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

/** One unix socket of the image, where it is. */
interface Member {
  pid: number;
  index: number;
  f: UnixImage;
}

const clusterMaps = new WeakMap<readonly TreeFile[], Map<number, Member[]>>();

/** The sockets rebuilt together with socket `ino` (itself included), in image order. */
export function clusterOf(tree: readonly TreeFile[], ino: number): Member[] {
  let map = clusterMaps.get(tree);
  if (!map) {
    map = clusters(tree);
    clusterMaps.set(tree, map);
  }
  const c = map.get(ino);
  if (!c) throw new CrestError('INTERNAL', `unix socket [${ino}] is not in the image's tree`);
  return c;
}

/** Union-find over the tree's unix sockets: peers, waiting connections, shared names, queued messages' senders. */
function clusters(tree: readonly TreeFile[]): Map<number, Member[]> {
  const members: Member[] = tree.flatMap((t) => (t.file.kind === 'unix' ? [{ pid: t.pid, index: t.index, f: t.file }] : []));
  const parent = new Map<number, number>(members.map((m) => [m.f.ino, m.f.ino]));
  const find = (x: number): number => {
    while (parent.get(x) !== x) x = parent.get(x)!;
    return x;
  };
  const union = (a: number, b: number): void => {
    if (parent.has(a) && parent.has(b)) parent.set(find(a), find(b));
  };
  const byName = new Map<string, number>();
  for (const { f } of members) {
    if (f.peer !== undefined) union(f.ino, f.peer);
    for (const c of f.pending ?? []) union(f.ino, c);
    if (f.address) {
      const other = byName.get(f.address);
      if (other === undefined) byName.set(f.address, f.ino);
      else union(other, f.ino);
    }
  }
  for (const { f } of members) {
    for (const n of f.queue?.from ?? []) {
      const other = n ? byName.get(n) : undefined;
      if (other !== undefined) union(other, f.ino);
    }
  }
  const groups = new Map<number, Member[]>();
  for (const m of members) {
    const r = find(m.f.ino);
    groups.set(r, [...(groups.get(r) ?? []), m]);
  }
  const out = new Map<number, Member[]>();
  for (const g of groups.values()) for (const m of g) out.set(m.f.ino, g);
  return out;
}

/** Socket `f`'s husk fd: made with its whole cluster by the first of its processes, taken by the others. */
export function restoreUnix(f: UnixImage, ctx: FdRestoreContext): number {
  const made = ctx.shared.get(`unix:${f.ino}`) as number | undefined;
  if (made !== undefined) return made;
  const members = clusterOf(ctx.tree, f.ino);
  const fds = new Build(ctx, members).run();
  for (const m of members) {
    const fd = fds.get(m.f.ino);
    if (fd === undefined) throw new CrestError('INTERNAL', `unix socket [${m.f.ino}] was not rebuilt with its cluster`);
    if (m.pid === ctx.proc.pid) ctx.shared.set(`unix:${m.f.ino}`, fd);
    else ctx.handOver(m.pid, m.index, fd);
  }
  return fds.get(f.ino)!;
}

/** The rebuilding of one cluster in the husk; run() returns each socket's (kept) fd by inode. */
class Build {
  private readonly fds = new Map<number, number>();
  private readonly byIno: Map<number, UnixImage>;
  /** Paths whose socket files this build made for names that had none at the checkpoint: removed at the end. */
  private readonly unlinkAtEnd = new Set<string>();

  constructor(
    private readonly ctx: FdRestoreContext,
    private readonly members: readonly Member[],
  ) {
    this.byIno = new Map(members.map((m) => [m.f.ino, m.f]));
  }

  run(): Map<number, number> {
    const all = this.members.map((m) => m.f);
    // The ends of the connections accepted on each name, by name (image order).
    const acceptedOn = new Map<string, UnixImage[]>();
    for (const f of all) if (f.state === 'connected' && f.accepted) acceptedOn.set(f.address!, [...(acceptedOn.get(f.address!) ?? []), f]);
    const listenerOf = (address: string, type: UnixImage['type']): UnixImage | undefined =>
      all.find((l) => l.state === 'listen' && l.address === address && l.type === type);
    // Every name in the file system this build binds: its stale file (if the image's own) goes first.
    const paths = new Map<string, Node | undefined>();
    for (const f of all) {
      for (const [path, node] of pathsBound(f, all)) if (!paths.has(path) || node) paths.set(path, node ?? paths.get(path));
    }
    for (const [path, node] of paths) {
      this.clearStale(path, node);
      if (!node) this.unlinkAtEnd.add(path);
    }

    // Socketpairs, and every socket with a name of its own (listeners, clients, datagram sockets), bound.
    for (const f of all) {
      if (this.fds.has(f.ino) || f.accepted) continue;
      if (f.state === 'pair') this.makePair(f, this.byIno.get(f.peer!)!);
      else this.fds.set(f.ino, this.socket(f.type, what(f)));
    }
    for (const f of all) if (f.address && !f.accepted) this.bindOwn(f);
    for (const f of all) {
      if (f.state !== 'listen') continue;
      this.ctx.mem.reset();
      call(this.ctx, 'listen', `listen on ${what(f)} (backlog ${f.backlog})`, NR.listen, this.fds.get(f.ino)!, f.backlog ?? 128);
    }
    for (const [ino, fd] of this.fds) setBuffers(this.ctx, fd, this.byIno.get(ino)!, what(this.byIno.get(ino)!));
    // Datagrams from named senders, before the receiver connects (it would take its peer's only).
    for (const f of all) if (f.type === 'dgram' && f.state !== 'pair' && f.queue) this.refillByName(f);
    // Connections made by connect/accept: through the tree's listener on the name, or a temporary one.
    for (const [address, ends] of acceptedOn) this.acceptAll(address, ends, listenerOf(address, ends[0]!.type));
    for (const l of all) {
      for (const c of l.state === 'listen' ? (l.pending ?? []) : []) this.connectTo(this.fds.get(c)!, Buffer.from(l.address!, 'base64'), `unix socket [${c}]`);
    }
    for (const f of all) {
      if (f.type !== 'dgram' || f.state !== 'connected') continue;
      const to = f.peer === f.ino ? f : this.byIno.get(f.peer!)!;
      this.connectTo(this.fds.get(f.ino)!, Buffer.from(to.address!, 'base64'), what(f));
    }
    for (const f of all) {
      if (f.queue && (f.type !== 'dgram' || f.state === 'pair')) refillFromPeer(this.ctx, f, this.fds.get(f.peer!)!);
    }
    for (const f of all) {
      this.ctx.mem.reset();
      if (f.state !== 'listen' && f.peekOff !== -1) setsockoptSol(this.ctx, this.fds.get(f.ino)!, SO.PEEK_OFF, f.peekOff, `the peek offset of ${what(f)}`);
    }
    for (const path of this.unlinkAtEnd) this.unlink(path);
    return this.fds;
  }

  /** A new socket of the husk, kept above the process's fds (non-blocking until the files stage sets its flags). */
  private socket(type: UnixImage['type'], label: string): number {
    this.ctx.mem.reset();
    return this.ctx.keep(call(this.ctx, 'socket', `create ${label}`, NR.socket, AF_UNIX, TYPE_NR[type] | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), label);
  }

  /** A socket for the moment (a temporary listener or sender), closed by the caller. */
  private tempSocket(type: UnixImage['type'], label: string): number {
    this.ctx.mem.reset();
    return call(this.ctx, 'socket', `create ${label}`, NR.socket, AF_UNIX, TYPE_NR[type] | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  }

  private makePair(f: UnixImage, peer: UnixImage): void {
    const ctx = this.ctx;
    ctx.mem.reset();
    const pair = ctx.mem.alloc(8);
    call(ctx, 'socketpair', `create a unix ${f.type} socketpair`, NR.socketpair, AF_UNIX, TYPE_NR[f.type] | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, pair);
    const b = ctx.thread.readMem(pair, 8);
    this.fds.set(f.ino, ctx.keep(b.readInt32LE(0), what(f)));
    this.fds.set(peer.ino, ctx.keep(b.readInt32LE(4), what(peer)));
  }

  /** bind(2) of `fd` to `name`: 0 or -errno. */
  private bind(fd: number, name: Buffer): number {
    this.ctx.mem.reset();
    const a = sockaddr(name);
    return raw(this.ctx, NR.bind, fd, this.ctx.mem.put(a), a.length);
  }

  /** Binds socket `f` to its own name again, with its file's permission bits. */
  private bindOwn(f: UnixImage): void {
    const name = Buffer.from(f.address!, 'base64');
    const r = this.bind(this.fds.get(f.ino)!, name);
    if (r < 0) {
      throw new CrestError('ADDRESS_IN_USE', `cannot bind ${what(f)} again: ${r === -EADDRINUSE ? 'the name is in use' : `errno ${-r}`}`);
    }
    this.chmod(name, f.node);
  }

  private chmod(name: Buffer, node: Node | undefined): void {
    if (!node || name[0] === 0) return;
    const path = showName(name);
    this.ctx.mem.reset();
    call(this.ctx, 'fchmodat', `give ${path} mode ${node.mode.toString(8)}`, NR.fchmodat, -100, this.ctx.mem.str(path), node.mode);
  }

  private connectTo(fd: number, name: Buffer, label: string): void {
    this.ctx.mem.reset();
    const a = sockaddr(name);
    const r = raw(this.ctx, NR.connect, fd, this.ctx.mem.put(a), a.length);
    if (r < 0) {
      const why = r === -111 ? 'connection refused' : r === -EAGAIN ? "the listener's backlog is full" : `errno ${-r}`;
      throw new CrestError('RESTORE_SOCKET', `cannot connect ${label} to ${showName(name)} again: ${why}`);
    }
  }

  /**
   * The connections accepted on `address`: each client connects, the
   * listener (the tree's own, or a temporary one with that name) accepts.
   * No one else connects in between (checked: the accepted socket's peer
   * must be the client just connected).
   */
  private acceptAll(address: string, ends: readonly UnixImage[], listener: UnixImage | undefined): void {
    const ctx = this.ctx;
    const name = Buffer.from(address, 'base64');
    const shown = showName(name);
    let lfd: number;
    if (listener) {
      lfd = this.fds.get(listener.ino)!;
    } else {
      lfd = this.tempSocket(ends[0]!.type, `a listener on ${shown} for a moment`);
      const r = this.bind(lfd, name);
      if (r < 0) {
        throw new CrestError('ADDRESS_IN_USE', `cannot bind ${shown} for a moment to rebuild the connections accepted on it: ${r === -EADDRINUSE ? 'the name is in use' : `errno ${-r}`}`);
      }
      this.chmod(name, ends.find((e) => e.node)?.node);
      call(ctx, 'listen', `listen on ${shown} for a moment`, NR.listen, lfd, ends.length);
    }
    for (const s of ends) {
      const client = this.fds.get(s.peer!)!;
      this.connectTo(client, name, `unix socket [${s.peer}]`);
      ctx.mem.reset();
      const fd = ctx.keep(call(ctx, 'accept4', `accept the connection of unix socket [${s.peer}] on ${shown}`, NR.accept4, lfd, 0, 0, SOCK_CLOEXEC | SOCK_NONBLOCK), what(s));
      const mine = this.inode(fd);
      const peer = unixDiag(ctx, [mine]).get(mine)?.peer;
      if (peer !== this.inode(client)) {
        throw new CrestError('RESTORE_SOCKET', `another socket connected to ${shown} while crest rebuilt the connections on it (a process outside the job?): try again`);
      }
      this.fds.set(s.ino, fd);
      setBuffers(ctx, fd, s, what(s));
    }
    if (!listener) raw(ctx, NR.close, lfd);
  }

  /** The inode of husk fd `fd` (fstat's st_ino). */
  private inode(fd: number): number {
    this.ctx.mem.reset();
    const st = this.ctx.mem.alloc(144);
    call(this.ctx, 'fstat', `fstat fd ${fd}`, NR.fstat, fd, st);
    return Number(this.ctx.thread.readMem(st + 8, 8).readBigUInt64LE(0));
  }

  /** A datagram socket's queue, each message sent to its name from a socket with the sender's name. */
  private refillByName(f: UnixImage): void {
    const ctx = this.ctx;
    const q = f.queue!;
    const to = sockaddr(Buffer.from(f.address!, 'base64'));
    const at = ctx.dataAt(q.data);
    const messages = q.messages ?? [];
    const from = q.from ?? messages.map(() => '');
    // Temporary senders by the name they stand for ("" unnamed): the fd, and the file made for a path name.
    const temps = new Map<string, { fd: number; path: string | null }>();
    const lost = new Set<string>();
    const drop = (n: string): void => {
      const t = temps.get(n)!;
      temps.delete(n);
      raw(ctx, NR.close, t.fd);
      if (t.path) this.unlink(t.path);
    };
    const tempSender = (n: string): number => {
      const had = temps.get(n);
      if (had) return had.fd;
      const fd = this.tempSocket('dgram', 'a sender for a moment');
      let path: string | null = null;
      if (n !== '') {
        const name = Buffer.from(n, 'base64');
        path = name[0] === 0 ? null : showName(name);
        if ((path !== null && exists(path)) || this.bind(fd, name) !== 0) {
          // The name is another's now: the message comes from an unnamed socket.
          lost.add(showName(name));
          raw(ctx, NR.close, fd);
          return tempSender('');
        }
      }
      temps.set(n, { fd, path });
      return fd;
    };
    const senderOf = (n: string): number => {
      const own = n === '' ? undefined : this.members.find((m) => m.f.address === n && m.f.type === 'dgram' && !m.f.accepted);
      return own ? this.fds.get(own.f.ino)! : tempSender(n);
    };
    let off = 0;
    messages.forEach((len, i) => {
      const n = from[i] ?? '';
      const send = (fd: number): number => {
        ctx.mem.reset();
        return raw(ctx, NR.sendto, fd, at + off, len, MSG.DONTWAIT | MSG.NOSIGNAL, ctx.mem.put(to), to.length);
      };
      const fd = senderOf(n);
      let r = send(fd);
      const temp = [...temps].find(([, t]) => t.fd === fd);
      if (r === -EAGAIN && temp) {
        // A temporary sender's buffer is full (each message stays charged to it until read): a fresh one.
        drop(temp[0]);
        r = send(tempSender(temp[0]));
      }
      if (r !== len) {
        throw new CrestError('RESTORE_SOCKET', `cannot put back message ${i} (${len} bytes) of ${what(f)}: ${r < 0 ? `errno ${-r}` : `${r} bytes went`}`);
      }
      off += len;
    });
    for (const n of [...temps.keys()]) drop(n);
    if (lost.size > 0) {
      ctx.warnings.push(`${what(f)}: queued messages from ${[...lost].join(', ')} now come from an unnamed socket (that name could not be bound again)`);
    }
  }

  /**
   * The socket file a dead socket left behind blocks binding its name
   * again. It is removed only when it is exactly the file the image
   * recorded for the name (same inode) and no socket in the job's network
   * namespace has the name.
   */
  private clearStale(path: string, node: Node | undefined): void {
    if (!checkPath(path, node)) return;
    const users = [...parseNetUnix(readFileSync(`/proc/${this.ctx.huskHostPid}/net/unix`, 'utf8')).values()].filter((e) => e.path === path);
    if (users.length > 0) throw new CrestError('ADDRESS_IN_USE', `${path} is in use by a live socket (the original process still runs?)`);
    this.unlink(path);
  }

  private unlink(path: string): void {
    this.ctx.mem.reset();
    call(this.ctx, 'unlinkat', `remove the socket file ${path}`, NR.unlinkat, -100, this.ctx.mem.str(path), 0);
  }
}

/**
 * Whether a file is at `path` that the restore may remove (the socket file
 * `node` the image recorded); a file that is not is refused, left alone.
 */
export function checkPath(path: string, node: Node | undefined): boolean {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return false;
  }
  if (!st.isSocket() || !node || st.ino !== node.ino || st.dev !== node.dev) {
    throw new CrestError('ADDRESS_IN_USE', `${path} exists and is not the socket file the process had bound, so crest leaves it alone: remove it to restore`);
  }
  return true;
}

/** The paths an image's unix socket `f` binds at restore (its own name, or the name its connection was accepted on when no listener of the image has it), with the node recorded for each. */
export function pathsBound(f: UnixImage, all: readonly UnixImage[]): [string, Node | undefined][] {
  if (!f.address) return [];
  const name = Buffer.from(f.address, 'base64');
  if (name[0] === 0) return [];
  if (f.accepted && all.some((l) => l.state === 'listen' && l.address === f.address && l.type === f.type)) return [];
  return [[showName(name), f.node]];
}

function exists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** A socket as messages name it. */
function what(f: UnixImage): string {
  const name = f.address ? ` ${showName(Buffer.from(f.address, 'base64'))}` : '';
  return `unix ${f.type} socket [${f.ino}]${name}`;
}
