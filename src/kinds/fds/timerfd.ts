// timerfd: clock, settime flags, the time left to the next expiry, the
// interval and the expirations not read yet, all from fdinfo. Rebuilt with
// timerfd_create + timerfd_settime; the time left runs on from the restore
// (the time the process spent checkpointed does not count, as for the
// process's other timers). An absolute timer (TFD_TIMER_ABSTIME) is set
// absolute again, at the restoring clock's now + the time left, so that
// TFD_TIMER_CANCEL_ON_SET keeps working. The unread expirations come back
// through TFD_IOC_SET_TICKS (a kernel built with CONFIG_CHECKPOINT_RESTORE).
//
// A periodic timer that expired is re-armed by the kernel only lazily (on
// read or timerfd_gettime): until then fdinfo shows 0 s left. The dump
// therefore injects timerfd_gettime first, which does exactly that lazy step
// (re-arm, count the overruns into the unread expirations) and nothing a
// later read would not have done, then reads fdinfo.
import { IOCTL, NR, TFD_TIMER_ABSTIME } from './abi.js';
import { O } from '../../sys/constants.js';
import { CrestError } from '../../sys/errors.js';
import { parseTimerfd, type TimerfdInfo } from './fdinfo.js';
import { readFdinfo } from '../../proc/index.js';
import { call, raw } from './inject.js';
import type { FdKind } from './types.js';

const NS = 1_000_000_000n;

export const timerfd: FdKind<'timerfd'> = {
  name: 'timerfd',
  match: (p) => p.link === 'anon_inode:[timerfd]',
  inject(p, ctx): TimerfdInfo {
    call(ctx, 'timerfd_gettime', `read timerfd ${p.fd}`, NR.timerfd_gettime, p.fd, ctx.mem.alloc(32));
    return parseTimerfd(readFdinfo(ctx.hostPid, p.fd));
  },
  dump(p, _ctx, id, injected) {
    const t = injected as TimerfdInfo;
    return { kind: 'timerfd', id, flags: p.info.flags & ~O.CLOEXEC, ...t };
  },
  restore(f, ctx) {
    const fd = call(ctx, 'timerfd_create', `create a timerfd on clock ${f.clockid}`, NR.timerfd_create, f.clockid, O.CLOEXEC);
    const armed = f.value.sec !== 0 || f.value.nsec !== 0;
    if (armed || f.settimeFlags !== 0) {
      let value = BigInt(f.value.sec) * NS + BigInt(f.value.nsec);
      if (armed && (f.settimeFlags & TFD_TIMER_ABSTIME) !== 0) {
        const now = ctx.mem.alloc(16);
        call(ctx, 'clock_gettime', `read clock ${f.clockid}`, NR.clock_gettime, f.clockid, now);
        const b = ctx.thread.readMem(now, 16);
        value += b.readBigInt64LE(0) * NS + b.readBigInt64LE(8);
      }
      // struct itimerspec: it_interval, then it_value.
      const its = Buffer.alloc(32);
      its.writeBigInt64LE(BigInt(f.interval.sec), 0);
      its.writeBigInt64LE(BigInt(f.interval.nsec), 8);
      its.writeBigInt64LE(value / NS, 16);
      its.writeBigInt64LE(value % NS, 24);
      call(ctx, 'timerfd_settime', `arm the timerfd (flags ${f.settimeFlags})`, NR.timerfd_settime, fd, f.settimeFlags, ctx.mem.put(its), 0);
    }
    if (f.ticks > 0) {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(BigInt(f.ticks), 0);
      const r = raw(ctx, NR.ioctl, fd, IOCTL.TFD_IOC_SET_TICKS, ctx.mem.put(b));
      if (r < 0) {
        throw new CrestError(
          'UNSUPPORTED',
          `the timerfd had ${f.ticks} expirations not read yet, and this kernel cannot set them (TFD_IOC_SET_TICKS: errno ${-r}; it needs CONFIG_CHECKPOINT_RESTORE)`,
        );
      }
    }
    return fd;
  },
};
