// signalfd: the set of signals it reports (fdinfo "sigmask"); rebuilt with
// signalfd4. The signals themselves (pending or blocked) are the signals
// kind's business.
import { NR } from './abi.js';
import { O } from '../../sys/constants.js';
import { parseSignalfd } from './fdinfo.js';
import { call } from './inject.js';
import type { FdKind } from './types.js';

export const signalfd: FdKind<'signalfd'> = {
  name: 'signalfd',
  match: (p) => p.link === 'anon_inode:[signalfd]',
  dump(p, _ctx, id) {
    return { kind: 'signalfd', id, flags: p.info.flags & ~O.CLOEXEC, sigmask: `0x${parseSignalfd(p.info).toString(16)}` };
  },
  restore(f, ctx) {
    const mask = Buffer.alloc(8);
    mask.writeBigUInt64LE(BigInt(f.sigmask), 0);
    return call(ctx, 'signalfd4', `create a signalfd for ${f.sigmask}`, NR.signalfd4, -1, ctx.mem.put(mask), 8, O.CLOEXEC);
  },
};
