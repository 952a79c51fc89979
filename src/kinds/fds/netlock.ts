// The network lock of a job with its own network namespace (`crest run
// --net`): while its TCP connections are read, nothing may travel between
// them, or the image would hold one end before and the other after a
// segment (bytes the sender dropped as acknowledged, the receiver never got).
// Freezing the processes is not enough: the kernel still sends what is
// queued and acknowledges what arrives. The namespace has one interface,
// loopback, and it is the job's own: crest takes it down for the dump
// (SIOCSIFFLAGS on a socket of the namespace, taken with pidfd_getfd; crest
// holds CAP_NET_ADMIN over the namespace, its euid owns the job's user
// namespace) and up again when the job runs on. What is sent meanwhile is
// dropped and resent by TCP's retransmission timer. Nothing arrives any
// more, but TCP's timers still send (and so move snd_nxt): ./tcp.ts says
// what a read can rely on.
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { CrestError } from '../../sys/errors.js';
import { native } from '../../sys/native.js';
import { sleepMs } from '../../tracer/tracer.js';
import { parseNetInet } from './procnet.js';

const SIOCGIFFLAGS = 0x8913;
const SIOCSIFFLAGS = 0x8914;
const IFF_UP = 1;

/** True when the job's network namespace is not crest's own: `crest run --net` made it. */
export function ownNetns(initPid: number | null): boolean {
  if (initPid === null) return false;
  try {
    return readlinkSync(`/proc/${initPid}/ns/net`) !== readlinkSync('/proc/self/ns/net');
  } catch {
    return false;
  }
}

/** A locked network: released (loopback up again) when the job runs on; dropped (left down) when it is killed. */
export interface NetLock {
  /** Loopback up again; the error's text when that failed (the dump's outcome stands: it is reported as a warning). */
  release(): string | null;
  drop(): void;
}

/** A socket fd of a TCP connection held by one of `members`, or null when they hold none. */
function findConnection(members: readonly number[]): { pid: number; fd: number } | null {
  for (const pid of members) {
    const conns = new Set<number>();
    for (const t of ['tcp', 'tcp6']) {
      let text = '';
      try {
        text = readFileSync(`/proc/${pid}/net/${t}`, 'utf8');
      } catch {
        continue;
      }
      for (const [ino, e] of parseNetInet(text)) if (e.state !== 10 && e.state !== 7) conns.add(ino);
    }
    if (conns.size === 0) continue;
    let fds: string[] = [];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      let link = '';
      try {
        link = readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      const m = /^socket:\[(\d+)\]$/.exec(link);
      if (m && conns.has(Number(m[1]))) return { pid, fd: Number(fd) };
    }
  }
  return null;
}

function ifreq(flags?: number): Buffer {
  const b = Buffer.alloc(40);
  b.write('lo', 0, 'latin1');
  if (flags !== undefined) b.writeInt16LE(flags, 16);
  return b;
}

/**
 * Takes the job's loopback down when its processes hold TCP connections
 * (null otherwise: nothing to lock). `members` are frozen already.
 */
export function lockNetwork(members: readonly number[]): NetLock | null {
  const at = findConnection(members);
  if (!at) return null;
  const n = native();
  const pidfd = n.pidfdOpen(at.pid, 0);
  let sock: number;
  try {
    sock = n.pidfdGetfd(pidfd, at.fd);
  } finally {
    n.close(pidfd);
  }
  let flags: number;
  try {
    const r = ifreq();
    n.ioctlBuffer(sock, SIOCGIFFLAGS, r);
    flags = r.readInt16LE(16);
    if ((flags & IFF_UP) === 0) {
      // Down already (the job did it): nothing travels, nothing to give back.
      n.close(sock);
      return null;
    }
    n.ioctlBuffer(sock, SIOCSIFFLAGS, ifreq(flags & ~IFF_UP));
  } catch (e) {
    n.close(sock);
    throw new CrestError('NET_LOCK', `cannot take the job's loopback down to read its TCP connections at one moment: ${(e as Error).message}`, { cause: e });
  }
  // Segments already handed to loopback are delivered from a softirq queue: let them land.
  sleepMs(20);
  let done = false;
  return {
    release() {
      if (done) return null;
      done = true;
      try {
        n.ioctlBuffer(sock, SIOCSIFFLAGS, ifreq(flags));
        return null;
      } catch (e) {
        return `could not bring the job's loopback up again after the checkpoint: ${(e as Error).message}`;
      } finally {
        n.close(sock);
      }
    },
    drop() {
      if (done) return;
      done = true;
      n.close(sock);
    },
  };
}
