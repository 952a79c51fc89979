// An open file description an earlier process of the tree holds too
// (inherited over fork, passed over a socket): the earlier process (its
// owner) dumps and restores it, whatever its kind; this process records only
// where it is, and at restore takes that very description from the owner's
// husk (pidfd_getfd), so the two keep sharing offset, status flags, the pipe
// or the socket. What belongs to this process alone comes with it: the POSIX
// record locks it took through the description (flock and OFD locks are the
// description's own, restored by the owner).
import { CrestError } from '../../sys/errors.js';
import { locksOf } from './locks.js';
import { refuseFd, type FdKind } from './types.js';

export const shared: FdKind<'shared'> = {
  name: 'shared',
  match: (p) => p.owner !== null,
  dump(p, ctx, id) {
    const owner = p.owner!;
    const locks = locksOf(p.info, (why) => refuseFd(ctx.hostPid, p.fd, `open file shared with pid ${owner.pid}`, `${p.link}: ${why}`)).filter((l) => l.kind === 'posix');
    return { kind: 'shared', id, pid: owner.pid, file: owner.id, ...(locks.length > 0 ? { locks } : {}) };
  },
  restore(f, ctx) {
    const fd = ctx.takeDescription(f.pid, f.file);
    if (fd === undefined) {
      throw new CrestError('RESTORE_SHARED', `process ${ctx.proc.pid} shares open file ${f.file} of process ${f.pid}, which process ${f.pid} did not make`);
    }
    return fd;
  },
};
