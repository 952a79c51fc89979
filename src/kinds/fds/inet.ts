// TCP and UDP sockets that are bound (TCP maybe listening) but not connected,
// and UDP sockets connected to a peer:
// address, port and state from the kernel (getsockname, getpeername and
// TCP_INFO injected into the task; /proc/net/tcp{,6} and udp{,6} for the
// refusals that need no injection), the options that change how they bind and
// behave (SO_REUSEADDR, SO_REUSEPORT, IPV6_V6ONLY, TCP_NODELAY, buffer sizes),
// and a listener's backlog: TCP_INFO reports sk_max_ack_backlog (tcpi_sacked)
// and the connections waiting to be accepted (tcpi_unacked) of a listener.
// Restore: socket, the options, bind to the same address and port, listen
// or connect.
//
// Connections are ./tcp.ts's. Refused here: listeners with connections
// waiting to be accepted, UDP sockets with datagrams queued (their senders'
// addresses cannot be recreated), sockets
// bound to a device or a scoped (link-local) address, other families and
// protocols.
import { O } from '../../sys/constants.js';
import { CrestError } from '../../sys/errors.js';
import { AF_INET, AF_INET6, IPPROTO_IPV6, IPPROTO_TCP, IPPROTO_UDP, IPV6_V6ONLY, MSG, NR, SO, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_STREAM, SOL_SOCKET, TCP_CLOSE, TCP_INFO, TCP_LISTEN, TCP_NODELAY, TCP_STATE } from './abi.js';
import { call, getsockoptInt, getsockoptIntMaybe, raw, setsockoptInt, type Injector } from './inject.js';
import { setBuffers } from './unix.js';
import { refuseFd, type FdKind, type ImageOf } from './types.js';

type InetImage = ImageOf<'inet'>;
const SO_BINDTOIFINDEX = 62;
const EAGAIN = 11;
const ENOTCONN = 107;

/** host:port as people write it. */
function hostPort(address: string, port: number): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}

/** Decodes a sockaddr_in / sockaddr_in6. */
export function decodeSockaddr(b: Buffer): { family: 4 | 6; address: string; port: number; scope: number } {
  const fam = b.readUInt16LE(0);
  const port = b.readUInt16BE(2);
  if (fam === AF_INET) return { family: 4, address: [...b.subarray(4, 8)].join('.'), port, scope: 0 };
  const groups: string[] = [];
  for (let i = 8; i < 24; i += 2) groups.push(b.readUInt16BE(i).toString(16));
  // Shortest form (RFC 5952), like inet_ntop.
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j === i ? i + 1 : j;
  }
  const address = best < 0 ? groups.join(':') : `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
  return { family: 6, address, port, scope: b.readUInt32LE(24) };
}

/** Encodes a sockaddr for `address` (dotted quad or IPv6 text) and `port`. */
export function encodeSockaddr(family: 4 | 6, address: string, port: number): Buffer {
  if (family === 4) {
    const b = Buffer.alloc(16);
    b.writeUInt16LE(AF_INET, 0);
    b.writeUInt16BE(port, 2);
    address.split('.').forEach((x, i) => b.writeUInt8(Number(x), 4 + i));
    return b;
  }
  const b = Buffer.alloc(28);
  b.writeUInt16LE(AF_INET6, 0);
  b.writeUInt16BE(port, 2);
  const [head, tail] = address.includes('::') ? address.split('::') : [address, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  groups.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), 8 + i * 2));
  return b;
}

interface Injected {
  family: 4 | 6;
  protocol: 'tcp' | 'udp';
  state: 'listen' | 'bound' | 'connected';
  address: string;
  port: number;
  peer?: { address: string; port: number };
  backlog?: number;
  reuseaddr: boolean;
  reuseport: boolean;
  v6only?: boolean;
  nodelay?: boolean;
  rcvbuf: number;
  sndbuf: number;
}

function sockname(ij: Injector, nr: number, fd: number): { r: number; b: Buffer } {
  ij.mem.reset();
  const buf = ij.mem.alloc(128);
  const len = ij.mem.put(Buffer.from([128, 0, 0, 0]));
  const r = raw(ij, nr, fd, buf, len);
  return { r, b: ij.thread.readMem(buf, 128) };
}

export const inet: FdKind<'inet'> = {
  name: 'inet',
  // A socket no /proc/net table lists (a TCP socket bound but not listening, an unbound one, or another family) is looked at in the task.
  match: (p) => p.st.isSocket() && p.sock !== null && p.sock.table !== 'unix',
  check(p, ctx) {
    const s = p.sock!;
    if (!s.inet) return;
    const refuse = (why: string): Error => refuseFd(ctx.hostPid, p.fd, s.table!.startsWith('tcp') ? 'TCP socket' : 'UDP socket', why);
    const local = hostPort(s.inet.local.address, s.inet.local.port);
    const remote = hostPort(s.inet.remote.address, s.inet.remote.port);
    if (s.table === 'tcp' || s.table === 'tcp6') {
      if (s.inet.state !== TCP_LISTEN && s.inet.state !== TCP_CLOSE) throw refuse(`TCP socket ${local} with ${remote} in state ${TCP_STATE[s.inet.state] ?? s.inet.state} is not a listener`);
    }
  },
  inject(p, ctx): Injected {
    const refuse = (kind: string, why: string): Error => refuseFd(ctx.hostPid, p.fd, kind, why);
    const domain = getsockoptInt(ctx, p.fd, SOL_SOCKET, SO.DOMAIN, 'SO_DOMAIN');
    const type = getsockoptInt(ctx, p.fd, SOL_SOCKET, SO.TYPE, 'SO_TYPE');
    const proto = getsockoptInt(ctx, p.fd, SOL_SOCKET, SO.PROTOCOL, 'SO_PROTOCOL');
    if (domain !== AF_INET && domain !== AF_INET6) throw refuse('socket', `a socket of address family ${domain} (${p.link}) is not supported yet`);
    const tcp = type === SOCK_STREAM && proto === IPPROTO_TCP;
    const udp = type === SOCK_DGRAM && proto === IPPROTO_UDP;
    if (!tcp && !udp) throw refuse('socket', `an inet socket of type ${type}, protocol ${proto} is not supported yet (TCP and UDP are)`);
    const kind = tcp ? 'TCP socket' : 'UDP socket';
    const name = sockname(ctx, NR.getsockname, p.fd);
    if (name.r < 0) throw refuse(kind, `getsockname failed (errno ${-name.r})`);
    const local = decodeSockaddr(name.b);
    const where = hostPort(local.address, local.port);
    if (local.scope !== 0) throw refuse(kind, `${where} is a scoped (link-local) address, which is not supported yet`);
    const peerName = sockname(ctx, NR.getpeername, p.fd);
    let peer: Injected['peer'];
    if (peerName.r === 0) {
      const remote = decodeSockaddr(peerName.b);
      const to = hostPort(remote.address, remote.port);
      if (tcp) throw refuse(kind, `TCP connection ${where} -> ${to} is not listed in the process's network namespace, so crest cannot tell its state`);
      if (remote.scope !== 0) throw refuse(kind, `UDP socket ${where} is connected to ${to}, a scoped (link-local) address, which is not supported yet`);
      peer = { address: remote.address, port: remote.port };
    } else if (peerName.r !== -ENOTCONN) {
      throw refuse(kind, `getpeername failed (errno ${-peerName.r})`);
    }
    ctx.mem.reset();
    if ((getsockoptIntMaybe(ctx, p.fd, SOL_SOCKET, SO_BINDTOIFINDEX) ?? 0) !== 0) throw refuse(kind, `${where} is bound to a network device, which is not supported yet`);
    let state: Injected['state'] = peer ? 'connected' : 'bound';
    let backlog: number | undefined;
    if (tcp) {
      ctx.mem.reset();
      const info = ctx.mem.alloc(256);
      const len = ctx.mem.put(Buffer.from([0, 1, 0, 0])); // 256
      call(ctx, 'getsockopt', `read TCP_INFO of fd ${p.fd}`, NR.getsockopt, p.fd, IPPROTO_TCP, TCP_INFO, info, len);
      const ti = ctx.thread.readMem(info, 32);
      const st = ti.readUInt8(0);
      if (st === TCP_LISTEN) {
        const waiting = ti.readUInt32LE(24);
        if (waiting > 0) {
          throw refuse(kind, `TCP listener ${where} has ${waiting} connection${waiting > 1 ? 's' : ''} waiting to be accepted, which cannot be recreated yet; try again once the process has accepted ${waiting > 1 ? 'them' : 'it'}`);
        }
        state = 'listen';
        backlog = ti.readUInt32LE(28);
      } else if (st !== TCP_CLOSE) {
        throw refuse(kind, `TCP socket ${where} in state ${TCP_STATE[st] ?? st} cannot be recreated (it is not listed in the process's network namespace)`);
      }
    } else {
      ctx.mem.reset();
      const r = raw(ctx, NR.recvfrom, p.fd, ctx.mem.alloc(8), 0, MSG.PEEK | MSG.DONTWAIT, 0, 0);
      if (r !== -EAGAIN) {
        const from = peer ? ` (from ${hostPort(peer.address, peer.port)})` : '';
        throw refuse(kind, `UDP socket ${where} has datagrams queued${from}; they cannot be sent again from their sender's address, so it is refused (try again once the process has read them)`);
      }
    }
    ctx.mem.reset();
    const opt = (level: number, o: number, n: string): number => getsockoptInt(ctx, p.fd, level, o, n);
    return {
      family: local.family,
      protocol: tcp ? 'tcp' : 'udp',
      state,
      address: local.address,
      port: local.port,
      ...(peer ? { peer } : {}),
      ...(backlog !== undefined ? { backlog } : {}),
      reuseaddr: opt(SOL_SOCKET, SO.REUSEADDR, 'SO_REUSEADDR') !== 0,
      reuseport: opt(SOL_SOCKET, SO.REUSEPORT, 'SO_REUSEPORT') !== 0,
      ...(local.family === 6 ? { v6only: opt(IPPROTO_IPV6, IPV6_V6ONLY, 'IPV6_V6ONLY') !== 0 } : {}),
      ...(tcp ? { nodelay: opt(IPPROTO_TCP, TCP_NODELAY, 'TCP_NODELAY') !== 0 } : {}),
      rcvbuf: opt(SOL_SOCKET, SO.RCVBUF, 'SO_RCVBUF'),
      sndbuf: opt(SOL_SOCKET, SO.SNDBUF, 'SO_SNDBUF'),
    };
  },
  dump(p, _ctx, id, injected) {
    return { kind: 'inet', id, flags: p.info.flags & ~O.CLOEXEC, ...(injected as Injected) };
  },
  restore(f, ctx) {
    const where = `${f.protocol}${f.family === 6 ? '6' : ''} ${hostPort(f.address, f.port)}`;
    const fd = ctx.keep(
      call(ctx, 'socket', `create ${where}`, NR.socket, f.family === 4 ? AF_INET : AF_INET6, (f.protocol === 'tcp' ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC, f.protocol === 'tcp' ? IPPROTO_TCP : IPPROTO_UDP),
      where,
    );
    if (f.reuseaddr) setsockoptInt(ctx, fd, SOL_SOCKET, SO.REUSEADDR, 1, `SO_REUSEADDR of ${where}`);
    if (f.reuseport) setsockoptInt(ctx, fd, SOL_SOCKET, SO.REUSEPORT, 1, `SO_REUSEPORT of ${where}`);
    if (f.v6only !== undefined) setsockoptInt(ctx, fd, IPPROTO_IPV6, IPV6_V6ONLY, f.v6only ? 1 : 0, `IPV6_V6ONLY of ${where}`);
    if (f.nodelay) setsockoptInt(ctx, fd, IPPROTO_TCP, TCP_NODELAY, 1, `TCP_NODELAY of ${where}`);
    ctx.mem.reset();
    setBuffers(ctx, fd, f, where);
    const unbound = f.port === 0 && (f.address === '0.0.0.0' || f.address === '::');
    if (!unbound) {
      ctx.mem.reset();
      const addr = encodeSockaddr(f.family, f.address, f.port);
      const r = raw(ctx, NR.bind, fd, ctx.mem.put(addr), addr.length);
      if (r < 0) {
        throw new CrestError('ADDRESS_IN_USE', `cannot bind ${where} again: ${r === -98 ? 'the address is in use (the original process still runs, or another took the port)' : `errno ${-r}`}`);
      }
    }
    if (f.state === 'listen') call(ctx, 'listen', `listen on ${where} (backlog ${f.backlog})`, NR.listen, fd, f.backlog ?? 4096);
    if (f.state === 'connected' && f.peer) {
      ctx.mem.reset();
      const to = encodeSockaddr(f.family, f.peer.address, f.peer.port);
      const r = raw(ctx, NR.connect, fd, ctx.mem.put(to), to.length);
      if (r < 0) throw new CrestError('CONNECT_FAILED', `cannot connect ${where} to ${hostPort(f.peer.address, f.peer.port)} again: errno ${-r}`);
    }
    return fd;
  },
};
