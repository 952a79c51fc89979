// The job's controlling terminal opened again by the process itself: by
// /dev/tty (getpass, ssh, less and editors read the user there even when
// stdin is redirected) or by its own path (/dev/pts/N). It is not one of the
// job's streams from outside but a description of its own, so it comes back
// as a new open of /dev/tty in the restored job: crest restore's controlling
// terminal, the one the job's streams now are. The line settings go with it
// (see stdio.ts for terminals, sessions and the foreground). Any other
// terminal (another pty, a pty master, a console) is refused.
import { CrestError, errnoName } from '../../sys/errors.js';
import { O } from '../../sys/constants.js';
import { readStat } from '../../proc/index.js';
import type { TerminalImage } from '../../image/schema.js';
import { NR } from './abi.js';
import { raw } from './inject.js';
import { DEV_TTY, applyTerminal, captureTerminal, isTerminalDevice } from './stdio.js';
import { devMajor, devMinor, refuseFd, type FdKind } from './types.js';

export const tty: FdKind<'tty'> = {
  name: 'tty',
  match: (p) => p.stream === null && isTerminalDevice(p.st),
  check(p, ctx) {
    if (p.st.rdev === DEV_TTY) return;
    // /proc/PID/stat's tty_nr encodes the device as stat(2) does (for majors < 4096).
    const ctty = readStat(ctx.hostPid).tty_nr;
    if (ctty !== 0 && ctty === p.st.rdev) return;
    if (devMajor(p.st.rdev) === 5 && devMinor(p.st.rdev) === 2) {
      throw refuseFd(ctx.hostPid, p.fd, 'terminal', `pseudo-terminal master ${p.link} is not supported yet`);
    }
    throw refuseFd(ctx.hostPid, p.fd, 'terminal', `terminal ${p.link} is not the job's controlling terminal; other terminals are not supported yet`);
  },
  inject(p, ctx) {
    return captureTerminal(ctx, p.fd, true);
  },
  dump(p, _ctx, id, injected) {
    return { kind: 'tty', id, flags: p.info.flags & ~O.CLOEXEC, was: p.link, terminal: injected as TerminalImage };
  },
  restore(f, ctx) {
    const flags = (f.flags & ~(O.CREAT | O.EXCL | O.TRUNC)) | O.NOCTTY | O.CLOEXEC;
    const r = raw(ctx, NR.openat, -100, ctx.mem.str('/dev/tty'), flags, 0);
    if (r < 0) {
      throw new CrestError(
        'NO_TERMINAL',
        `the job had its terminal open (${f.was}), but crest restore has no controlling terminal to give it (opening /dev/tty: ${errnoName(-r)}); run crest restore from a terminal, without --detach`,
      );
    }
    const fd = ctx.keep(r, f.was);
    applyTerminal(ctx, fd, f.terminal, `its terminal (${f.was})`);
    return fd;
  },
};
