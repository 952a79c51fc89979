// Parsers of the socket tables in /proc/PID/net (the process's network
// namespace): unix, tcp, tcp6, udp, udp6. Each maps a socket's inode to what
// the table says about it. Pure parse functions, plus one reader that looks
// a set of inodes up in every table.
import { readFileSync } from 'node:fs';

/** A line of /proc/net/unix. */
export interface UnixEntry {
  /** Socket flags: __SO_ACCEPTCON (0x10000) for a listening socket. */
  flags: number;
  /** SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5. */
  type: number;
  /** SS_UNCONNECTED 1, SS_CONNECTING 2, SS_CONNECTED 3, SS_DISCONNECTING 4. */
  state: number;
  /** The bound name as printed ("@name" for an abstract one, NULs shown as "@"), or "" when unbound. */
  path: string;
}

/** A line of /proc/net/{tcp,tcp6,udp,udp6}. */
export interface InetEntry {
  local: { address: string; port: number };
  remote: { address: string; port: number };
  /** TCP state number (1 ESTABLISHED ... 10 LISTEN); 7 (CLOSE) for an unconnected UDP socket. */
  state: number;
}

export type SockTable = 'unix' | 'tcp' | 'tcp6' | 'udp' | 'udp6';

/** What the tables say about one socket: which table lists it (null: none), and its line. */
export interface SockInfo {
  table: SockTable | null;
  unix?: UnixEntry;
  inet?: InetEntry;
}

export const SO_ACCEPTCON = 0x10000;

/** /proc/net/unix: "Num RefCount Protocol Flags Type St Inode Path". */
export function parseNetUnix(text: string): Map<number, UnixEntry> {
  const out = new Map<number, UnixEntry>();
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 7) continue;
    const path = line.trim().split(/\s+/).slice(7).join(' ');
    out.set(Number(f[6]), { flags: parseInt(f[3]!, 16), type: parseInt(f[4]!, 16), state: parseInt(f[5]!, 16), path });
  }
  return out;
}

/** An address as the inet tables print it: 8 hex digits (IPv4) or 32 (IPv6), each 32-bit word in host (little-endian) order. */
export function inetAddress(hex: string): string {
  const words = hex.match(/.{8}/g) ?? [];
  const bytes = Buffer.alloc(words.length * 4);
  words.forEach((w, i) => bytes.writeUInt32LE(parseInt(w, 16) >>> 0, i * 4));
  if (bytes.length === 4) return [...bytes].join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
  return compressV6(groups);
}

/** RFC 5952 text of eight 16-bit groups (longest run of zero groups as "::"). */
function compressV6(groups: string[]): string {
  let best = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

/** /proc/net/{tcp,udp}[6]: "sl local_address rem_address st ... inode". */
export function parseNetInet(text: string): Map<number, InetEntry> {
  const out = new Map<number, InetEntry>();
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10) continue;
    const [la, lp] = f[1]!.split(':');
    const [ra, rp] = f[2]!.split(':');
    out.set(Number(f[9]), {
      local: { address: inetAddress(la!), port: parseInt(lp!, 16) },
      remote: { address: inetAddress(ra!), port: parseInt(rp!, 16) },
      state: parseInt(f[3]!, 16),
    });
  }
  return out;
}

/** Looks every inode of `inodes` up in the socket tables of pid's network namespace. */
export function lookupSockets(pid: number, inodes: readonly number[]): Map<number, SockInfo> {
  const out = new Map<number, SockInfo>();
  if (inodes.length === 0) return out;
  const read = (name: string): string => {
    try {
      return readFileSync(`/proc/${pid}/net/${name}`, 'utf8');
    } catch {
      return '';
    }
  };
  const unix = parseNetUnix(read('unix'));
  const inet: [SockTable, Map<number, InetEntry>][] = (['tcp', 'tcp6', 'udp', 'udp6'] as const).map((t) => [t, parseNetInet(read(t))]);
  for (const ino of inodes) {
    const u = unix.get(ino);
    if (u) {
      out.set(ino, { table: 'unix', unix: u });
      continue;
    }
    const hit = inet.find(([, m]) => m.has(ino));
    out.set(ino, hit ? { table: hit[0], inet: hit[1].get(ino)! } : { table: null });
  }
  return out;
}
