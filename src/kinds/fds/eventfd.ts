// eventfd: its 64-bit counter and whether it counts as a semaphore, both
// from fdinfo; rebuilt with eventfd2 and one write of the count (eventfd2's
// initial value is only 32 bits wide).
import { NR, EFD_SEMAPHORE } from './abi.js';
import { O } from '../../sys/constants.js';
import { parseEventfd } from './fdinfo.js';
import { call } from './inject.js';
import { refuseFd, type FdKind } from './types.js';

export const eventfd: FdKind<'eventfd'> = {
  name: 'eventfd',
  match: (p) => p.link === 'anon_inode:[eventfd]',
  check(p, ctx) {
    if (parseEventfd(p.info).semaphore === null) {
      throw refuseFd(ctx.hostPid, p.fd, 'eventfd', "this kernel's fdinfo does not say whether it is EFD_SEMAPHORE (Linux 6.3 and later do), so it cannot be recreated faithfully");
    }
  },
  dump(p, _ctx, id) {
    const e = parseEventfd(p.info);
    return { kind: 'eventfd', id, flags: p.info.flags & ~O.CLOEXEC, count: `0x${e.count.toString(16)}`, semaphore: e.semaphore === true };
  },
  restore(f, ctx) {
    const fd = call(ctx, 'eventfd2', 'create an eventfd', NR.eventfd2, 0, O.CLOEXEC | (f.semaphore ? EFD_SEMAPHORE : 0));
    const count = BigInt(f.count);
    if (count > 0n) {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(count, 0);
      call(ctx, 'write', `set the eventfd count to ${count}`, NR.write, fd, ctx.mem.put(b), 8);
    }
    return fd;
  },
};
