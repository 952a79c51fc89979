// Credentials: user and group ids (mapped one-to-one into the job's user
// namespace, so they need no change), and capabilities. The husk starts with
// every capability inside the job's user namespace (it was forked, not
// exec'd); restore ends by dropping it to exactly what the process had, so
// the restored process never holds more than it did - and never more than
// the invoking user, since those capabilities only ever applied inside the
// user's own namespace.
import { PR, SYS } from '../sys/constants.js';
import { unsupported, type Kind } from './types.js';

const hex = (v: bigint): string => '0x' + BigInt.asUintN(64, v).toString(16);
const CAP_VERSION_3 = 0x20080522;

export const creds: Kind = {
  name: 'creds',
  check(ctx) {
    const s = ctx.status;
    if (s.seccomp !== 0) throw unsupported(ctx.hostPid, 'seccomp', 'a process under a seccomp filter cannot be checkpointed yet');
    const ids = new Set([...s.uid, ...s.gid.map((g) => `g${g}`)]);
    if (new Set(s.uid).size !== 1 || new Set(s.gid).size !== 1 || ids.size !== 2) {
      throw unsupported(ctx.hostPid, 'credentials', `it changed its user or group ids (uid ${s.uid.join(',')} gid ${s.gid.join(',')})`);
    }
  },
  dump(ctx) {
    const s = ctx.status;
    ctx.proc.creds = {
      uid: s.uid,
      gid: s.gid,
      groups: s.groups,
      capInh: hex(s.capInh),
      capPrm: hex(s.capPrm),
      capEff: hex(s.capEff),
      capBnd: hex(s.capBnd),
      capAmb: hex(s.capAmb),
      noNewPrivs: s.noNewPrivs,
    };
  },
  // Capabilities, the bounding set and no_new_privs are per thread: every thread drops them.
  restoreThread(ctx, t) {
    const c = ctx.proc.creds;
    const bnd = BigInt(c.capBnd);
    for (let cap = 0; cap < 64; cap++) {
      if (bnd & (1n << BigInt(cap))) continue;
      // Drop only what is held: dropping an absent capability still needs CAP_SETPCAP.
      const r = t.syscallRaw(SYS.prctl, 23 /* PR_CAPBSET_READ */, cap);
      if (r === 1n) t.syscall('prctl', `PR_CAPBSET_DROP ${cap}`, SYS.prctl, PR.CAPBSET_DROP, cap);
    }
    t.syscall('prctl', 'PR_CAP_AMBIENT_CLEAR_ALL', SYS.prctl, PR.CAP_AMBIENT, PR.CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    if (c.noNewPrivs) t.syscall('prctl', 'PR_SET_NO_NEW_PRIVS', SYS.prctl, PR.SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    const hdr = Buffer.alloc(8);
    hdr.writeUInt32LE(CAP_VERSION_3, 0);
    const data = Buffer.alloc(24);
    const eff = BigInt(c.capEff);
    const prm = BigInt(c.capPrm);
    const inh = BigInt(c.capInh);
    const lo = (v: bigint): number => Number(v & 0xffffffffn);
    const hi = (v: bigint): number => Number((v >> 32n) & 0xffffffffn);
    data.writeUInt32LE(lo(eff), 0);
    data.writeUInt32LE(lo(prm), 4);
    data.writeUInt32LE(lo(inh), 8);
    data.writeUInt32LE(hi(eff), 12);
    data.writeUInt32LE(hi(prm), 16);
    data.writeUInt32LE(hi(inh), 20);
    t.syscall('capset', 'drop capabilities to the checkpointed set', SYS.capset, ctx.mem.put(hdr), ctx.mem.put(data));
  },
};
