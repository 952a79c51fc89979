// TCP connections: every TCP socket in a state other than LISTEN and CLOSE
// (bound and listening sockets are ./inet.ts's).
//
// repair (a job with its own network namespace, `crest run --net`): the
// connection is recreated exactly with TCP_REPAIR. TCP_REPAIR needs
// CAP_NET_ADMIN over the socket's network namespace: the job's processes do
// not hold it, but crest does (its euid created the job's user namespace,
// which owns the network namespace), so crest takes its own copy of the
// socket (pidfd_getfd; crest is the tracer) and reads everything there, no
// injection: sequence numbers (TCP_QUEUE_SEQ), both queues (MSG_PEEK in
// repair mode: the send queue from the first unacknowledged byte, the
// receive queue from the first unread one), the negotiated options (MSS,
// window scales, SACK, timestamps), the window (TCP_REPAIR_WINDOW) and the
// timestamp clock (TCP_TIMESTAMP).
//
// What still moves while it is read (Linux 6.18: net/ipv4/tcp_output.c,
// tcp_timer.c, and measured on our machines). The processes are frozen and
// the job's loopback is down (./netlock.ts): nothing arrives any more, so
// snd_una, rcv_nxt and the receive queue stay put; nobody writes, so
// write_seq and the bytes of the send queue stay put. TCP's timers run on,
// though. Facing a window smaller than one MSS (the peer's receive buffer
// nearly full), the persist timer (tcp_probe_timer -> tcp_send_probe0 ->
// tcp_write_wakeup) cuts a window's worth off the unsent data and sends it:
// the device is down, the segment is lost, yet tcp_event_new_data_sent
// moves snd_nxt on (measured: 15360 bytes went from unsent to sent about
// 100 ms after loopback went down; the retransmission timer then resends
// them in vain). The loss probe and TSQ paths (tcp_send_loss_probe,
// tcp_tsq_write) call tcp_write_xmit, which can do the same. TCP_REPAIR
// stops none of it (the same with every socket of the job in repair mode,
// with or without a queue selected); with the send queue selected
// (TCP_REPAIR_QUEUE), tcp_write_xmit even takes the whole unsent part as
// sent without transmitting it. So a read is one moment when write_seq,
// snd_una, rcv_nxt and both queue lengths are the same before and after
// it, whatever snd_nxt did: the split of the send queue between sent and
// unsent is recorded as last seen (every byte the peer may hold counts as
// sent then: the peer's rcv_nxt cannot pass our snd_nxt) and decided again
// at restore. The send queue is selected only around its peek, which runs
// under the socket lock and so reads the queue whole at one moment.
//
// Restore, in two steps:
//   1. in the husk's files stage: a socket in repair mode (crest again, on
//      its copy): sequence numbers, bind, connect (no SYN in repair mode),
//      options, timestamp clock, the receive queue, the window;
//   2. once every process of the job is built (finishTcp): the send queue,
//      its part the peer may hold in repair mode (queued as sent: the peer
//      may acknowledge it, the retransmission timer resends it), repair
//      off, the rest sent the ordinary way (out at once). When the peer's
//      end is in the image too, the part it may hold is exactly up to its
//      rcv_nxt; otherwise it is what was sent at the checkpoint. Only now:
//      a connection's peer must exist before it may send anything (a
//      segment to a port nobody holds is answered with a reset).
// Both queues must fit their socket's buffer whole, or the restore fails.
// A queue takes more socket memory (skb truesize) than its bytes, and how
// much more depends on how it was cut into skbs: the image's SO_SNDBUF, full
// at the checkpoint, can be a few KiB short for the same bytes requeued.
// SO_SNDBUF cannot make room (capped at net.core.wmem_max, which the owner
// of a network namespace may not write, and it locks autotuning), but the
// namespace's own tcp_wmem/tcp_rmem defaults, which a new socket starts
// from, are writable by their owner: they are raised to what the queues
// need (bytes plus a bound on the per-skb overhead) while the socket is
// made.
//
// closed (`--tcp-close`): the process gets back a TCP socket whose peer
// reset the connection: recv gives ECONNRESET, then 0; poll reports it
// readable and hung up, so an event loop closes it and a server carries on.
// Made in the husk by connecting to a throwaway listener on loopback whose
// end is closed with a zero linger (a reset).
//
// Refused (without --tcp-close): connections outside a job's own network
// namespace (crest holds no capability there), and states other than
// ESTABLISHED (half-closed, connecting ...).
import { openSync, readSync, closeSync } from 'node:fs';
import { resolve } from 'node:path';
import { O } from '../../sys/constants.js';
import { faultArg, stall } from '../../fault.js';
import { CrestError, isErrno } from '../../sys/errors.js';
import { native } from '../../sys/native.js';
import type { DataRef } from '../../image/schema.js';
import type { SharedObjects } from '../objects.js';
import { AF_INET, AF_INET6, IPPROTO_TCP, MSG, NR, POLLERR, POLLHUP, SO, SOCK_CLOEXEC, SOCK_STREAM, SOL_SOCKET, TCP_ESTABLISHED, TCP_INFO, TCP_NODELAY, TCP_STATE } from './abi.js';
import { call, getsockoptInt, raw, setsockoptInt } from './inject.js';
import { decodeSockaddr, encodeSockaddr } from './inet.js';
import { refuseFd, type FdDumpContext, type FdKind, type FdProbe, type FdRestoreContext, type ImageOf } from './types.js';
import type { TcpPolicy } from '../types.js';

type TcpImage = ImageOf<'tcp'>;
type Repair = NonNullable<TcpImage['repair']>;

const TCP_MAXSEG = 2;
const TCP_KEEPIDLE = 4;
const TCP_KEEPINTVL = 5;
const TCP_KEEPCNT = 6;
const TCP_REPAIR = 19;
const TCP_REPAIR_QUEUE = 20;
const TCP_QUEUE_SEQ = 21;
const TCP_REPAIR_OPTIONS = 22;
const TCP_TIMESTAMP = 24;
const TCP_REPAIR_WINDOW = 29;
const TCP_NO_QUEUE = 0;
const TCP_RECV_QUEUE = 1;
const TCP_SEND_QUEUE = 2;
const TCPOPT_MSS = 2;
const TCPOPT_WINDOW = 3;
const TCPOPT_SACK_PERM = 4;
const TCPOPT_TIMESTAMP = 8;
const TCPI_OPT_TIMESTAMPS = 1;
const TCPI_OPT_SACK = 2;
const TCPI_OPT_WSCALE = 4;
const SIOCINQ = 0x541b;
const SIOCOUTQ = 0x5411;
const SIOCOUTQNSD = 0x894b;
const SO_LINGER = 13;
const NR_ACCEPT4 = 288;

/** host:port as people write it. */
function hostPort(a: { address: string; port: number }): string {
  return a.address.includes(':') ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}

function describe(f: Pick<TcpImage, 'local' | 'remote'>): string {
  return `${hostPort(f.local)} -> ${hostPort(f.remote)}`;
}

/** What becomes of a connection in state `state` under `policy`: repaired, closed, or the refusal's reason. */
export function tcpPlan(state: number, where: string, policy: TcpPolicy): 'repair' | 'closed' | { refuse: string } {
  const name = TCP_STATE[state] ?? `state ${state}`;
  if (state === TCP_ESTABLISHED && policy.ownNetns) return 'repair';
  if (policy.close) return 'closed';
  if (!policy.ownNetns) {
    return {
      refuse:
        `${name === 'ESTABLISHED' ? 'established ' : ''}TCP connection ${where}${name === 'ESTABLISHED' ? '' : ` (${name})`}: ` +
        'it lives in a network namespace crest does not own, so it cannot be recreated (TCP_REPAIR needs CAP_NET_ADMIN there); ' +
        'start the job with `crest run --net` to have its connections checkpointed, or checkpoint with --tcp-close to have them come back closed (reset by the peer)',
    };
  }
  return { refuse: `TCP connection ${where} is in state ${name}; crest recreates ESTABLISHED connections only (checkpoint with --tcp-close to have it come back closed, reset by the peer)` };
}

/** crest's own copy of a socket of another process (pidfd_getfd), closed by close(). */
class HeldSocket {
  private constructor(
    readonly fd: number,
    private readonly what: string,
  ) {}

  static take(pid: number, fd: number, what: string): HeldSocket {
    const n = native();
    const pidfd = n.pidfdOpen(pid, 0);
    try {
      return new HeldSocket(n.pidfdGetfd(pidfd, fd), what);
    } catch (e) {
      throw new CrestError('TCP_REPAIR', `cannot take ${what} (fd ${fd} of pid ${pid}) to repair it: ${(e as Error).message}`, { cause: e });
    } finally {
      n.close(pidfd);
    }
  }

  private fail(op: string, e: unknown): never {
    throw new CrestError('TCP_REPAIR', `${op} of ${this.what} failed: ${(e as Error).message}`, { cause: e });
  }

  get(level: number, name: number, size: number, op: string): Buffer {
    try {
      return native().getsockopt(this.fd, level, name, size);
    } catch (e) {
      this.fail(op, e);
    }
  }

  int(level: number, name: number, op: string): number {
    return this.get(level, name, 4, op).readInt32LE(0);
  }

  set(level: number, name: number, value: Buffer, op: string): void {
    try {
      native().setsockopt(this.fd, level, name, value);
    } catch (e) {
      this.fail(op, e);
    }
  }

  setInt(level: number, name: number, value: number, op: string): void {
    const b = Buffer.alloc(4);
    b.writeInt32LE(value, 0);
    this.set(level, name, b, op);
  }

  ioctl(req: number, op: string): number {
    try {
      return native().ioctlInt(this.fd, req);
    } catch (e) {
      this.fail(op, e);
    }
  }

  repair(on: boolean): void {
    this.setInt(IPPROTO_TCP, TCP_REPAIR, on ? 1 : 0, on ? 'TCP_REPAIR on' : 'TCP_REPAIR off');
  }

  queue(q: number): void {
    this.setInt(IPPROTO_TCP, TCP_REPAIR_QUEUE, q, `TCP_REPAIR_QUEUE ${['none', 'receive', 'send'][q] ?? q}`);
  }

  /** The whole queue selected with queue(), read without consuming it (repair mode). */
  peek(len: number, op: string): Buffer {
    const buf = Buffer.alloc(len);
    if (len === 0) return buf;
    let n: number;
    try {
      n = native().recv(this.fd, buf, 0, len, MSG.PEEK | MSG.DONTWAIT);
    } catch (e) {
      this.fail(op, e);
    }
    if (n !== len) throw new CrestError('TCP_REPAIR', `${op} of ${this.what}: read ${n} of ${len} bytes`);
    return buf;
  }

  /** Sends all of `data` (in repair mode into the queue selected with queue()); returns the bytes taken before EAGAIN. */
  send(data: Buffer, op: string, chunk = data.length): number {
    let off = 0;
    let max = Math.max(1, chunk);
    while (off < data.length) {
      const len = Math.min(max, data.length - off);
      try {
        off += native().send(this.fd, data, off, len, MSG.DONTWAIT | MSG.NOSIGNAL);
      } catch (e) {
        if (isErrno(e, 'EAGAIN')) return off;
        // The receive queue is restored as one buffer per call: a big one may not be allocatable; halve it.
        if (isErrno(e, 'ENOMEM') && max > 4096) {
          max = Math.floor(max / 2);
          continue;
        }
        this.fail(op, e);
      }
    }
    return off;
  }

  close(): void {
    native().close(this.fd);
  }
}

/** Sequence numbers and queue lengths of a connection in repair mode. */
interface Seqs {
  /** write_seq: one past the last byte the process wrote. */
  write: number;
  rcvNxt: number;
  /** Send queue (write_seq - snd_una), its unsent part (write_seq - snd_nxt), receive queue. */
  outq: number;
  unsent: number;
  inq: number;
}

function readSeqs(s: HeldSocket): Seqs {
  s.queue(TCP_SEND_QUEUE);
  const write = s.get(IPPROTO_TCP, TCP_QUEUE_SEQ, 4, 'TCP_QUEUE_SEQ (send)').readUInt32LE(0);
  s.queue(TCP_RECV_QUEUE);
  const rcvNxt = s.get(IPPROTO_TCP, TCP_QUEUE_SEQ, 4, 'TCP_QUEUE_SEQ (receive)').readUInt32LE(0);
  s.queue(TCP_NO_QUEUE);
  return { write, rcvNxt, outq: s.ioctl(SIOCOUTQ, 'SIOCOUTQ'), unsent: s.ioctl(SIOCOUTQNSD, 'SIOCOUTQNSD'), inq: s.ioctl(SIOCINQ, 'SIOCINQ') };
}

/** Whether nothing but snd_nxt moved between two reads (see the top of this file). */
function sameMoment(a: Seqs, b: Seqs): boolean {
  return a.write === b.write && a.rcvNxt === b.rcvNxt && a.outq === b.outq && a.inq === b.inq;
}

/** Reads of a connection before crest gives up on it: a change means a segment still arrived (see ./netlock.ts). */
const READ_TRIES = 3;

/** The repair state of an ESTABLISHED connection, read on crest's copy, and its queues. */
function readRepair(s: HeldSocket): { repair: Repair; recv: Buffer; send: Buffer } {
  // Options first, outside repair mode: TCP_INFO's view of the negotiated options.
  const info = s.get(IPPROTO_TCP, TCP_INFO, 104, 'TCP_INFO');
  const opts = info.readUInt8(5);
  const scales = info.readUInt8(6);
  s.repair(true);
  try {
    let read: { before: Seqs; after: Seqs; recv: Buffer; send: Buffer } | null = null;
    const seen: Seqs[] = [];
    for (let i = 0; i < READ_TRIES && !read; i++) {
      const before = readSeqs(s);
      s.queue(TCP_RECV_QUEUE);
      const recv = s.peek(before.inq, 'reading the receive queue');
      s.queue(TCP_SEND_QUEUE);
      const send = s.peek(before.outq, 'reading the send queue');
      s.queue(TCP_NO_QUEUE);
      // Tests: a read long enough for TCP's timers to act in it.
      const slow = faultArg('stall-in-tcp-read');
      if (slow !== null) stall(Number(slow) || 5000);
      const after = readSeqs(s);
      seen.push(before, after);
      if (sameMoment(before, after)) read = { before, after, recv, send };
    }
    if (!read) throw new CrestError('TCP_REPAIR', `the connection still moved while it was read, ${READ_TRIES} times (${seen.map((x) => JSON.stringify(x)).join(' then ')})`);
    const { before, after, recv, send } = read;
    const w = s.get(IPPROTO_TCP, TCP_REPAIR_WINDOW, 20, 'TCP_REPAIR_WINDOW');
    const mss = s.int(IPPROTO_TCP, TCP_MAXSEG, 'TCP_MAXSEG');
    const tsval = s.get(IPPROTO_TCP, TCP_TIMESTAMP, 4, 'TCP_TIMESTAMP').readUInt32LE(0);
    const u32 = (x: number): number => x >>> 0;
    const repair: Repair = {
      sendSeq: u32(before.write - before.outq),
      recvSeq: u32(before.rcvNxt - before.inq),
      sendLen: before.outq,
      // snd_nxt only moves on (timers), and every byte the peer may hold lies before it.
      unsentLen: Math.min(before.unsent, after.unsent),
      recvLen: before.inq,
      mss,
      ...((opts & TCPI_OPT_WSCALE) !== 0 ? { sndWscale: scales & 0xf, rcvWscale: scales >> 4 } : {}),
      sack: (opts & TCPI_OPT_SACK) !== 0,
      timestamps: (opts & TCPI_OPT_TIMESTAMPS) !== 0,
      tsval,
      window: { sndWl1: w.readUInt32LE(0), sndWnd: w.readUInt32LE(4), maxWindow: w.readUInt32LE(8), rcvWnd: w.readUInt32LE(12), rcvWup: w.readUInt32LE(16) },
    };
    return { repair, recv, send };
  } finally {
    s.queue(TCP_NO_QUEUE);
    s.repair(false);
  }
}

interface Injected {
  state: number;
  family: 4 | 6;
  local: { address: string; port: number };
  remote: { address: string; port: number };
  mode: 'repair' | 'closed';
  reuseaddr: boolean;
  nodelay: boolean;
  keepalive?: { idle: number; intvl: number; cnt: number };
  rcvbuf: number;
  sndbuf: number;
  repair?: Repair;
  queues?: Buffer;
}

function sockName(ctx: FdDumpContext, nr: number, fd: number): ReturnType<typeof decodeSockaddr> | null {
  ctx.mem.reset();
  const buf = ctx.mem.alloc(128);
  const len = ctx.mem.put(Buffer.from([128, 0, 0, 0]));
  if (raw(ctx, nr, fd, buf, len) < 0) return null;
  return decodeSockaddr(ctx.thread.readMem(buf, 128));
}

export const tcp: FdKind<'tcp'> = {
  name: 'tcp',
  // Connections only: listeners and bound sockets are inet's.
  match: (p) => (p.sock?.table === 'tcp' || p.sock?.table === 'tcp6') && p.sock.inet !== undefined && p.sock.inet.state !== 10 && p.sock.inet.state !== 7,
  check(p, ctx) {
    const e = p.sock!.inet!;
    const plan = tcpPlan(e.state, describe(e), ctx.tcp);
    if (typeof plan === 'object') throw refuseFd(ctx.hostPid, p.fd, 'TCP socket', plan.refuse);
  },
  inject(p: FdProbe, ctx: FdDumpContext): Injected {
    const e = p.sock!.inet!;
    const refuse = (why: string): Error => refuseFd(ctx.hostPid, p.fd, 'TCP socket', why);
    // The kernel's own view of the state, now that the process is frozen.
    ctx.mem.reset();
    const info = ctx.mem.alloc(8);
    const len = ctx.mem.put(Buffer.from([8, 0, 0, 0]));
    call(ctx, 'getsockopt', `read TCP_INFO of fd ${p.fd}`, NR.getsockopt, p.fd, IPPROTO_TCP, TCP_INFO, info, len);
    const state = ctx.thread.readMem(info, 1).readUInt8(0);
    const local = sockName(ctx, NR.getsockname, p.fd);
    const remote = sockName(ctx, NR.getpeername, p.fd) ?? { ...e.remote, family: local?.family ?? 4, scope: 0 };
    if (!local) throw refuse(`getsockname failed for the TCP connection ${describe(e)}`);
    const where = { local: { address: local.address, port: local.port }, remote: { address: remote.address, port: remote.port } };
    const plan = tcpPlan(state, describe(where), ctx.tcp);
    if (typeof plan === 'object') throw refuse(plan.refuse);
    if (plan === 'repair' && (local.scope !== 0 || remote.scope !== 0)) throw refuse(`TCP connection ${describe(where)} uses a scoped (link-local) address, which is not supported yet`);
    ctx.mem.reset();
    const opt = (level: number, o: number, n: string): number => getsockoptInt(ctx, p.fd, level, o, n);
    const keep = opt(SOL_SOCKET, SO.KEEPALIVE, 'SO_KEEPALIVE') !== 0;
    const out: Injected = {
      state,
      family: local.family,
      ...where,
      mode: plan,
      reuseaddr: opt(SOL_SOCKET, SO.REUSEADDR, 'SO_REUSEADDR') !== 0,
      nodelay: opt(IPPROTO_TCP, TCP_NODELAY, 'TCP_NODELAY') !== 0,
      ...(keep
        ? { keepalive: { idle: opt(IPPROTO_TCP, TCP_KEEPIDLE, 'TCP_KEEPIDLE'), intvl: opt(IPPROTO_TCP, TCP_KEEPINTVL, 'TCP_KEEPINTVL'), cnt: opt(IPPROTO_TCP, TCP_KEEPCNT, 'TCP_KEEPCNT') } }
        : {}),
      rcvbuf: opt(SOL_SOCKET, SO.RCVBUF, 'SO_RCVBUF'),
      sndbuf: opt(SOL_SOCKET, SO.SNDBUF, 'SO_SNDBUF'),
    };
    if (plan === 'closed') return out;
    const s = HeldSocket.take(ctx.hostPid, p.fd, `the TCP connection ${describe(where)}`);
    try {
      const r = readRepair(s);
      // TCP_REPAIR off forgets SO_REUSEADDR (the kernel sets "no reuse"): put it back for a process that runs on.
      if (out.reuseaddr) s.setInt(SOL_SOCKET, SO.REUSEADDR, 1, 'SO_REUSEADDR');
      return { ...out, repair: r.repair, queues: Buffer.concat([r.recv, r.send]) };
    } catch (err) {
      throw refuse(`reading it for TCP repair failed: ${(err as Error).message}`);
    } finally {
      s.close();
    }
  },
  dump(p, ctx, id, injected) {
    const { queues, state, ...inj } = injected as Injected;
    return {
      kind: 'tcp',
      id,
      flags: p.info.flags & ~O.CLOEXEC,
      state: TCP_STATE[state] ?? String(state),
      ...inj,
      ...(queues && queues.length > 0 ? { data: ctx.putData(queues) } : {}),
    };
  },
  preflight(f, ctx) {
    // Repair needs the job's own network namespace, made anew at restore: an image without one cannot have it.
    if (f.mode === 'repair' && (!f.repair || ctx.manifest.job.net !== true)) {
      throw new CrestError('IMAGE_INVALID', `process ${ctx.proc.pid}: TCP connection ${describe(f)} is to be repaired, but ${f.repair ? "the image's job has no network namespace of its own" : 'its repair state is missing'}`);
    }
  },
  restore(f, ctx) {
    if (f.mode === 'closed' || ctx.tcpClose || !f.repair) return resetSocket(f, ctx);
    return repairSocket(f, f.repair, ctx);
  },
  afterPlaced(f, ctx, fdOf) {
    if (f.mode !== 'repair' || ctx.tcpClose || !f.repair) return;
    let list = pending.get(ctx.objects);
    if (!list) pending.set(ctx.objects, (list = []));
    list.push({ huskPid: ctx.huskHostPid, fd: fdOf(f.id), image: f, repair: f.repair, dir: ctx.dir });
  },
};

/** A connection waiting for the second restore step, by restore. */
interface Pending {
  huskPid: number;
  fd: number;
  image: TcpImage;
  repair: Repair;
  dir: string;
}
const pending = new WeakMap<SharedObjects, Pending[]>();

/** Bytes [from, from+len) of the image data `ref` names. */
function readData(dir: string, ref: DataRef | undefined, from: number, len: number): Buffer {
  const out = Buffer.alloc(len);
  if (len === 0) return out;
  if (!ref || from + len > ref.length) throw new CrestError('IMAGE_INVALID', `a TCP connection's queues need ${from + len} bytes, the image has ${ref?.length ?? 0}`);
  const fd = openSync(resolve(dir, ref.file), 'r');
  try {
    for (let off = 0; off < len; ) {
      const n = readSync(fd, out, off, len - off, ref.offset + from + off);
      if (n <= 0) throw new CrestError('IMAGE_INVALID', `${ref.file} ends before the TCP queue data it should hold`);
      off += n;
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0, 0);
  return b;
}

/**
 * Sets the default (middle) value of /proc/sys/net/ipv4/`name` in the husk's
 * network namespace to at least `want`; returns what puts it back.
 */
function raiseDefault(ctx: FdRestoreContext, name: 'tcp_wmem' | 'tcp_rmem', want: number): () => void {
  const path = `/proc/sys/net/ipv4/${name}`;
  ctx.mem.reset();
  const fd = call(ctx, 'openat', `open ${path}`, NR.openat, -100, ctx.mem.str(path), O.RDWR | O.CLOEXEC, 0);
  const write = (text: string): void => {
    ctx.mem.reset();
    call(ctx, 'pwrite64', `write ${text.trim()} to ${path}`, NR.pwrite64, fd, ctx.mem.put(Buffer.from(text)), text.length, 0);
  };
  try {
    const buf = ctx.mem.alloc(128);
    const n = call(ctx, 'read', `read ${path}`, NR.read, fd, buf, 127);
    const was = ctx.thread.readMem(buf, n).toString('latin1').trim();
    const [min, def, max] = was.split(/\s+/).map(Number);
    if (min === undefined || def === undefined || max === undefined || [min, def, max].some((x) => !Number.isFinite(x))) {
      throw new CrestError('TCP_REPAIR', `${path} reads ${JSON.stringify(was)}`);
    }
    if (def >= want) {
      raw(ctx, NR.close, fd);
      return () => {};
    }
    write(`${min} ${want} ${Math.max(max, want)}\n`);
    return () => {
      try {
        write(`${min} ${def} ${max}\n`);
      } finally {
        raw(ctx, NR.close, fd);
      }
    };
  } catch (e) {
    raw(ctx, NR.close, fd);
    throw e;
  }
}

/**
 * A bound on what one skb costs beyond its bytes (skb truesize): measured
 * about 0.9 KiB on a send queue; a receive-queue skb also has its head
 * rounded up to a kmalloc size.
 */
const SKB_OVERHEAD = 8192;
/** The receive queue is refilled in pieces of this many bytes, one skb each (tcp_send_rcvq). */
const RECV_PIECE = 65536;

/** Socket memory that `len` bytes queued in skbs of at least `piece` bytes (but the last of each write) may take. */
function queueRoom(len: number, piece: number): number {
  return len === 0 ? 0 : len + (Math.ceil(len / piece) + 2) * SKB_OVERHEAD;
}

/**
 * The send queue's room. It is written in two calls (finishTcp), each cut
 * into skbs of the kernel's size goal: at least one MSS, or half the
 * largest window the peer offered when that is less (tcp_bound_to_half_wnd).
 */
function sendRoom(r: Repair): number {
  const halfWindow = r.window.maxWindow >>> 1;
  return queueRoom(r.sendLen, Math.max(64, Math.min(r.mss, halfWindow > 0 ? halfWindow : r.mss)));
}

/** Step 1: the connection in repair mode, in the husk's network namespace, all but its send queue. */
function repairSocket(f: TcpImage, r: Repair, ctx: FdRestoreContext): number {
  const what = `the TCP connection ${describe(f)}`;
  const domain = f.family === 4 ? AF_INET : AF_INET6;
  // Buffer sizes: both queues must fit whole (see the top of this file). A
  // new TCP socket takes them from the namespace's tcp_wmem/tcp_rmem
  // defaults: raised for this socket's creation (the job's namespace is
  // crest's to set), they are not locked, so the kernel goes on tuning them.
  const undo = [raiseDefault(ctx, 'tcp_wmem', Math.max(f.sndbuf, sendRoom(r))), raiseDefault(ctx, 'tcp_rmem', Math.max(f.rcvbuf, queueRoom(r.recvLen, RECV_PIECE)))];
  let fd: number;
  try {
    fd = call(ctx, 'socket', `create ${what}`, NR.socket, domain, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
  } finally {
    for (const u of undo) u();
  }
  ctx.mem.reset();
  if (f.nodelay) setsockoptInt(ctx, fd, IPPROTO_TCP, TCP_NODELAY, 1, `TCP_NODELAY of ${what}`);
  if (f.keepalive) {
    setsockoptInt(ctx, fd, SOL_SOCKET, SO.KEEPALIVE, 1, `SO_KEEPALIVE of ${what}`);
    setsockoptInt(ctx, fd, IPPROTO_TCP, TCP_KEEPIDLE, f.keepalive.idle, `TCP_KEEPIDLE of ${what}`);
    setsockoptInt(ctx, fd, IPPROTO_TCP, TCP_KEEPINTVL, f.keepalive.intvl, `TCP_KEEPINTVL of ${what}`);
    setsockoptInt(ctx, fd, IPPROTO_TCP, TCP_KEEPCNT, f.keepalive.cnt, `TCP_KEEPCNT of ${what}`);
  }
  const s = HeldSocket.take(ctx.huskHostPid, fd, what);
  try {
    s.repair(true);
    // Sequence numbers only while the socket is unconnected; the receive queue's
    // first byte is the first one the process has not read (refilled below).
    s.queue(TCP_RECV_QUEUE);
    s.set(IPPROTO_TCP, TCP_QUEUE_SEQ, u32(r.recvSeq), 'TCP_QUEUE_SEQ (receive)');
    s.queue(TCP_SEND_QUEUE);
    s.set(IPPROTO_TCP, TCP_QUEUE_SEQ, u32(r.sendSeq), 'TCP_QUEUE_SEQ (send)');
    s.queue(TCP_NO_QUEUE);
    // In repair mode bind may share the port with a listener (the kernel forces reuse), and connect sends nothing.
    const n = native();
    try {
      n.bind(s.fd, encodeSockaddr(f.family, f.local.address, f.local.port));
    } catch (e) {
      throw new CrestError('ADDRESS_IN_USE', `cannot bind ${what} to ${hostPort(f.local)} again: ${(e as Error).message}`, { cause: e });
    }
    try {
      n.connect(s.fd, encodeSockaddr(f.family, f.remote.address, f.remote.port));
    } catch (e) {
      throw new CrestError('TCP_REPAIR', `cannot connect ${what} again in repair mode: ${(e as Error).message}`, { cause: e });
    }
    // Options before any byte is queued (the kernel takes them only on a connection that has sent nothing).
    const opts: [number, number][] = [[TCPOPT_MSS, r.mss]];
    if (r.sndWscale !== undefined) opts.push([TCPOPT_WINDOW, r.sndWscale | ((r.rcvWscale ?? 0) << 16)]);
    if (r.sack) opts.push([TCPOPT_SACK_PERM, 0]);
    if (r.timestamps) opts.push([TCPOPT_TIMESTAMP, 0]);
    const ob = Buffer.alloc(opts.length * 8);
    opts.forEach(([code, val], i) => {
      ob.writeUInt32LE(code, i * 8);
      ob.writeUInt32LE(val, i * 8 + 4);
    });
    s.set(IPPROTO_TCP, TCP_REPAIR_OPTIONS, ob, 'TCP_REPAIR_OPTIONS');
    if (r.timestamps) s.set(IPPROTO_TCP, TCP_TIMESTAMP, u32(r.tsval), 'TCP_TIMESTAMP');
    if (r.recvLen > 0) {
      s.queue(TCP_RECV_QUEUE);
      const data = readData(ctx.dir, f.data, 0, r.recvLen);
      const got = s.send(data, 'refilling the receive queue', 65536);
      if (got !== data.length) throw new CrestError('TCP_REPAIR', `${what}: the receive queue took ${got} of ${data.length} bytes`);
      s.queue(TCP_NO_QUEUE);
    }
    const w = Buffer.alloc(20);
    [r.window.sndWl1, r.window.sndWnd, r.window.maxWindow, r.window.rcvWnd, r.window.rcvWup].forEach((x, i) => w.writeUInt32LE(x >>> 0, i * 4));
    s.set(IPPROTO_TCP, TCP_REPAIR_WINDOW, w, 'TCP_REPAIR_WINDOW');
  } finally {
    s.close();
  }
  return fd;
}

/**
 * How much of a connection's send queue goes back as sent (in repair mode):
 * every byte its peer may hold, or the peer acknowledges what the connection
 * never sent and the kernel drops that acknowledgement (tcp_ack: after
 * snd_nxt). With the peer's end in the image, that is exactly up to the
 * peer's rcv_nxt (the rest was lost or never sent: sent now, at once);
 * otherwise what was sent at the checkpoint.
 */
function sentPart(c: Pending, all: readonly Pending[]): number {
  const r = c.repair;
  const same = (a: TcpImage['local'], b: TcpImage['local']): boolean => a.address === b.address && a.port === b.port;
  const peer = all.find((p) => p !== c && p.image.family === c.image.family && same(p.image.local, c.image.remote) && same(p.image.remote, c.image.local));
  if (peer) {
    const held = (peer.repair.recvSeq + peer.repair.recvLen - r.sendSeq) >>> 0;
    if (held <= r.sendLen) return held;
  }
  return r.sendLen - r.unsentLen;
}

/**
 * Step 2, once every process of the restored job exists (before any runs):
 * each connection's send queue (see sentPart), then repair off (the kernel
 * sends a window probe; the retransmission timer resends what was in
 * flight), and the options TCP_REPAIR overrode. The socket's buffer was
 * made to take the whole queue (repairSocket).
 */
export function finishTcp(objects: SharedObjects): void {
  const list = pending.get(objects) ?? [];
  pending.delete(objects);
  for (const c of list) {
    const f = c.image;
    const r = c.repair;
    const what = `the TCP connection ${describe(f)}`;
    const s = HeldSocket.take(c.huskPid, c.fd, what);
    try {
      const sent = sentPart(c, list);
      const data = readData(c.dir, f.data, r.recvLen, r.sendLen);
      if (sent > 0) {
        s.queue(TCP_SEND_QUEUE);
        const got = s.send(data.subarray(0, sent), 'refilling the send queue');
        if (got !== sent) throw new CrestError('TCP_REPAIR', `${what}: the send queue took ${got} of the ${sent} bytes its peer may hold`);
      }
      s.queue(TCP_NO_QUEUE);
      s.repair(false);
      const rest = data.subarray(sent);
      const got = s.send(rest, 'sending the rest of the send queue');
      if (got !== rest.length) throw new CrestError('TCP_REPAIR', `${what}: the send queue took ${sent + got} of its ${r.sendLen} bytes`);
      if (f.reuseaddr) s.setInt(SOL_SOCKET, SO.REUSEADDR, 1, 'SO_REUSEADDR');
    } finally {
      s.close();
    }
  }
}

/**
 * A TCP socket whose peer reset the connection: connected to a throwaway
 * listener on loopback, whose end is closed at once with a zero linger.
 */
function resetSocket(f: TcpImage, ctx: FdRestoreContext): number {
  const what = `the closed TCP connection ${describe(f)}`;
  const ij = ctx;
  const lis = call(ij, 'socket', `create a listener for ${what}`, NR.socket, AF_INET, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
  let conn = -1;
  try {
    ij.mem.reset();
    const any = encodeSockaddr(4, '127.0.0.1', 0);
    call(ij, 'bind', `bind a listener for ${what} on 127.0.0.1`, NR.bind, lis, ij.mem.put(any), any.length);
    call(ij, 'listen', `listen for ${what}`, NR.listen, lis, 1);
    const lname = ij.mem.alloc(128);
    call(ij, 'getsockname', `name the listener for ${what}`, NR.getsockname, lis, lname, ij.mem.put(Buffer.from([128, 0, 0, 0])));
    const port = decodeSockaddr(ij.thread.readMem(lname, 128)).port;
    conn = call(ij, 'socket', `create ${what}`, NR.socket, f.family === 4 ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
    ij.mem.reset();
    const to = f.family === 4 ? encodeSockaddr(4, '127.0.0.1', port) : encodeSockaddr(6, '::ffff:7f00:1', port);
    call(ij, 'connect', `connect ${what} to its stand-in peer`, NR.connect, conn, ij.mem.put(to), to.length);
    // Only our own connection may be reset: anything else that came in is closed and we wait for ours.
    const mine = ij.mem.alloc(128);
    call(ij, 'getsockname', `name ${what}`, NR.getsockname, conn, mine, ij.mem.put(Buffer.from([128, 0, 0, 0])));
    const myPort = decodeSockaddr(ij.thread.readMem(mine, 128)).port;
    for (let tries = 0; ; tries++) {
      ij.mem.reset();
      const peer = ij.mem.alloc(128);
      const acc = call(ij, 'accept4', `accept ${what}`, NR_ACCEPT4, lis, peer, ij.mem.put(Buffer.from([128, 0, 0, 0])), SOCK_CLOEXEC);
      const from = decodeSockaddr(ij.thread.readMem(peer, 128));
      const linger = Buffer.alloc(8);
      linger.writeInt32LE(1, 0);
      call(ij, 'setsockopt', `zero linger for ${what}`, NR.setsockopt, acc, SOL_SOCKET, SO_LINGER, ij.mem.put(linger), 8);
      raw(ij, NR.close, acc);
      if (from.port === myPort) break;
      if (tries > 16) throw new CrestError('TCP_CLOSE', `${what}: another process keeps connecting to crest's stand-in listener`);
    }
    // The reset is delivered on loopback at once; make sure before the process may look.
    ij.mem.reset();
    const pfd = Buffer.alloc(8);
    pfd.writeInt32LE(conn, 0);
    pfd.writeInt16LE(1, 4); // POLLIN
    const at = ij.mem.put(pfd);
    call(ij, 'poll', `wait for ${what} to be reset`, NR.poll, at, 1, 2000);
    const revents = ij.thread.readMem(at + 6, 2).readInt16LE(0);
    if ((revents & (POLLHUP | POLLERR)) === 0) throw new CrestError('TCP_CLOSE', `${what}: the stand-in reset did not arrive (poll revents 0x${revents.toString(16)})`);
  } catch (e) {
    if (conn >= 0) raw(ij, NR.close, conn);
    throw e;
  } finally {
    raw(ij, NR.close, lis);
  }
  return conn;
}
