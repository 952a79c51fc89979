// epoll: every registration (fdinfo "tfd:" lines: fd, events, data), each
// tied to the open file it watches. The kernel keys a registration by (file,
// fd number): kcmp(KCMP_EPOLL_TFD), injected into the task, tells which open
// file each one watches, so a registration whose fd was closed while its file
// lives on at another fd is found too (and restored through a temporary dup
// at its old number). One whose file is open nowhere in the process is
// refused. Registrations are re-added once every fd is in place.
//
// An epoll instance several processes of the tree share (inherited over
// fork) is dumped and restored by the first of them (the others take the
// same instance): the kernel keys its registrations by file and fd number,
// not by fd table, so they come back right when that process holds every
// file watched. One watching a file only another process holds is refused.
//
// What does not come back exactly: the ready list. Level-triggered
// registrations are polled again when added, so they report what is ready;
// an edge-triggered one whose file is ready reports one more edge.
import { EPOLL_CTL_ADD, FCNTL, KCMP_EPOLL_TFD, NR } from './abi.js';
import { O } from '../../sys/constants.js';
import { CrestError } from '../../sys/errors.js';
import { parseEpoll } from './fdinfo.js';
import { call, raw } from './inject.js';
import { refuseFd, type FdKind, type ImageOf } from './types.js';

/** For each registration, the representative fd of the open file it watches. */
type Injected = number[];
type Target = ImageOf<'epoll'>['targets'][number];

const EPOLLONESHOT = 1 << 30;
/** Flag bits a fired one-shot registration keeps (EPOLLWAKEUP, EPOLLONESHOT, EPOLLET, EPOLLEXCLUSIVE). */
const EP_PRIVATE_BITS = (1 << 29) | EPOLLONESHOT | (1 << 31) | (1 << 28);
/** Every poll event a file may report (IN PRI OUT ERR HUP RDNORM RDBAND WRNORM WRBAND MSG RDHUP). */
const ALL_EVENTS = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x2000;

export const epoll: FdKind<'epoll'> = {
  name: 'epoll',
  match: (p) => p.link === 'anon_inode:[eventpoll]',
  check(p) {
    parseEpoll(p.info);
  },
  inject(p, ctx): Injected {
    const targets = parseEpoll(p.info);
    const reps = ctx.fds.filter((x) => x.rep === x.fd);
    const seen = new Map<number, number>();
    return targets.map((tg) => {
      // toff: the how-many-th registration with this fd number (fdinfo lists them in the kernel's order).
      const toff = seen.get(tg.tfd) ?? 0;
      seen.set(tg.tfd, toff + 1);
      ctx.mem.reset();
      const slot = Buffer.alloc(12);
      slot.writeUInt32LE(p.fd, 0);
      slot.writeUInt32LE(tg.tfd, 4);
      slot.writeUInt32LE(toff, 8);
      const at = ctx.mem.put(slot);
      const same = (fd: number): boolean => {
        const r = raw(ctx, NR.kcmp, ctx.nsPid, ctx.nsPid, KCMP_EPOLL_TFD, fd, at);
        if (r < 0 && r !== -9 /* EBADF */) {
          throw refuseFd(ctx.hostPid, p.fd, 'epoll', `cannot tell which file registration ${tg.tfd} watches: kcmp(KCMP_EPOLL_TFD) failed with errno ${-r} (it needs a kernel with CONFIG_CHECKPOINT_RESTORE)`);
        }
        return r === 0;
      };
      const atFd = ctx.fds.find((x) => x.fd === tg.tfd);
      if (atFd && same(tg.tfd)) return atFd.rep;
      const other = reps.find((x) => x.fd !== atFd?.rep && same(x.fd));
      if (other) return other.fd;
      const others = ctx.sharedWith(p.fd);
      throw refuseFd(
        ctx.hostPid,
        p.fd,
        'epoll',
        others.length > 0
          ? `it is shared with process${others.length > 1 ? 'es' : ''} ${others.join(', ')} of the tree and watches a file registered as fd ${tg.tfd} (inode ${tg.ino}) that this process, which restores the instance, does not hold: an epoll instance shared between processes comes back only when its first holder holds every file it watches`
          : `it watches a file registered as fd ${tg.tfd} (inode ${tg.ino}) that is no longer open at any fd of the process (kept alive elsewhere), so the registration cannot be recreated`,
      );
    });
  },
  dump(p, ctx, id, injected) {
    const reps = injected as Injected;
    const targets = parseEpoll(p.info).map((tg, i) => ({
      tfd: tg.tfd,
      file: ctx.idOf(reps[i]!)!,
      events: tg.events,
      data: `0x${tg.data.toString(16)}`,
    }));
    return { kind: 'epoll', id, flags: p.info.flags & ~O.CLOEXEC, targets };
  },
  preflight(f, ctx) {
    for (const tg of f.targets) {
      if (tg.file >= ctx.proc.files.length) throw new CrestError('IMAGE_INVALID', `epoll ${f.id} watches open file ${tg.file}, which the image does not have`);
    }
  },
  restore(_f, ctx) {
    return call(ctx, 'epoll_create1', 'create an epoll instance', NR.epoll_create1, O.CLOEXEC);
  },
  afterPlaced(f, ctx, fdOf) {
    const epfd = fdOf(ctx.files.indexOf(f));
    const fds = ctx.proc.fds;
    // A one-shot registration that has fired keeps only its flag bits; EPOLL_CTL_ADD always adds
    // EPOLLERR|EPOLLHUP, so the only way back to that state is to fire it again: add it first,
    // armed for every event, and let one epoll_wait report it (nothing else is registered yet).
    const fired = (tg: Target): boolean => (tg.events & ~EP_PRIVATE_BITS) === 0 && (tg.events & EPOLLONESHOT) !== 0;
    const ordered = [...f.targets.filter(fired), ...f.targets.filter((tg) => !fired(tg))];
    for (const tg of ordered) {
      ctx.mem.reset();
      const ev = Buffer.alloc(12); // struct epoll_event is packed on x86-64
      ev.writeUInt32LE(tg.events, 0);
      ev.writeBigUInt64LE(BigInt(tg.data), 4);
      const evAt = ctx.mem.put(ev);
      const what = `register fd ${tg.tfd} (events 0x${tg.events.toString(16)}) in epoll fd ${epfd}`;
      const placed = fds.find((x) => x.fd === tg.tfd);
      if (fired(tg)) ev.writeUInt32LE((tg.events | ALL_EVENTS) >>> 0, 0);
      const add = (): void => {
        ctx.thread.writeMem(evAt, ev);
        call(ctx, 'epoll_ctl', what, NR.epoll_ctl, epfd, EPOLL_CTL_ADD, tg.tfd, evAt);
        if (!fired(tg)) return;
        const out = ctx.mem.alloc(12);
        const n = call(ctx, 'epoll_wait', `fire one-shot fd ${tg.tfd} again`, NR.epoll_wait, epfd, out, 1, 0);
        if (n !== 1 || ctx.thread.readMem(out, 12).readBigUInt64LE(4) !== BigInt(tg.data)) {
          throw new CrestError(
            'UNSUPPORTED',
            `epoll fd ${epfd}: the one-shot registration of fd ${tg.tfd} had fired, and it cannot be recreated in that state: its file is ready for no event now`,
          );
        }
      };
      if (placed?.file === tg.file) {
        add();
        continue;
      }
      // The registration was made through an fd number that now holds something else, or nothing:
      // put the watched file there for the time of the call, then put back what belongs there.
      const saved = placed ? call(ctx, 'fcntl', `set fd ${tg.tfd} aside`, NR.fcntl, tg.tfd, FCNTL.DUPFD_CLOEXEC, 3) : -1;
      call(ctx, 'dup3', `put the watched file at fd ${tg.tfd} for a moment`, NR.dup3, fdOf(tg.file), tg.tfd, 0);
      add();
      if (placed) {
        call(ctx, 'dup3', `put fd ${tg.tfd} back`, NR.dup3, saved, tg.tfd, placed.cloexec ? O.CLOEXEC : 0);
        raw(ctx, NR.close, saved);
      } else {
        raw(ctx, NR.close, tg.tfd);
      }
    }
  },
};
