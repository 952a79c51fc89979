// The job's standard streams from outside (the terminal or pipes crest run
// was given, shared with the job's init): not the process's own objects, so
// the restored job gets `crest restore`'s corresponding streams instead.
//
// Terminals. A stream that is a terminal also carries the job's line
// settings (echo, canonical mode, control characters): a program that turned
// echo off for a password or went raw for a full-screen display expects its
// terminal to stay that way, so they are given to crest restore's terminal.
// The job's session and process group are not its own: they live outside its
// pid namespace, in crest run's (those made inside the job are rebuilt with
// the tree, restore/treeplan.ts, and have no controlling terminal).
// Restored, the job joins crest restore's session and process group, as it
// was in crest run's: it is in the foreground of the new terminal exactly
// when crest restore is, that terminal is its controlling one, and the
// shell's job control (Ctrl-C, Ctrl-Z, fg, bg) treats the two as one job.
// So crest never takes a terminal (TIOCSCTTY) or its foreground (tcsetpgrp):
// both belong to whoever runs crest restore. A restore in the background
// leaves the terminal's settings alone (changing them would stop it with
// SIGTTOU) and says so.
import { statSync, type Stats } from 'node:fs';
import type { TerminalImage } from '../../image/schema.js';
import { readStat } from '../../proc/index.js';
import { SIG } from '../../sys/constants.js';
import { IOCTL, NR } from './abi.js';
import { call, raw } from './inject.js';
import { devMajor, type FdDumpContext, type FdKind, type FdRestoreContext } from './types.js';

/** Majors of terminals: /dev/tty* and consoles (4, 5), pty slaves (136-143). */
const TTY_MAJORS = new Set([4, 5, 136, 137, 138, 139, 140, 141, 142, 143]);

/** True for a terminal device (what isatty(3) would say of an fd on it). */
export function isTerminalDevice(st: Stats): boolean {
  return st.isCharacterDevice() && TTY_MAJORS.has(devMajor(st.rdev));
}

/** /dev/tty, (5, 0) as stat(2) encodes it: whatever the opener's controlling terminal is. */
export const DEV_TTY = (5 << 8) | 0;

/** struct termios as TCGETS/TCSETS take it: four flag words, c_line, c_cc[19]. */
const TERMIOS_SIZE = 36;
const NCCS = 19;
/**
 * The bits of c_cflag that are the job's: character size, stop bits and
 * parity (cfmakeraw sets them). The rest (speed, CREAD, CLOCAL, HUPCL, flow
 * control) describes the line itself and stays what crest restore's terminal has.
 */
const CFLAG_OF_JOB = 0o60 /* CSIZE */ | 0o100 /* CSTOPB */ | 0o400 /* PARENB */ | 0o1000; /* PARODD */

/**
 * The line settings of terminal fd `fd` (injected TCGETS) and whether the
 * job's process group is in its foreground (only a controlling terminal has one).
 */
export function captureTerminal(ctx: FdDumpContext, fd: number, controlling: boolean): TerminalImage {
  const at = ctx.mem.alloc(TERMIOS_SIZE);
  call(ctx, 'ioctl', `read the terminal settings of fd ${fd}`, NR.ioctl, fd, IOCTL.TCGETS, at);
  const b = ctx.thread.readMem(at, TERMIOS_SIZE);
  return {
    iflag: b.readUInt32LE(0),
    oflag: b.readUInt32LE(4),
    cflag: b.readUInt32LE(8),
    lflag: b.readUInt32LE(12),
    cc: b.subarray(17, 17 + NCCS).toString('hex'),
    foreground: controlling && ctx.stat.tpgid > 0 && ctx.stat.tpgid === ctx.stat.pgrp,
  };
}

/**
 * Gives the job's line settings to the terminal behind husk fd `fd` (crest
 * restore's); `what` names the job's fd for messages. Nothing when that is
 * no terminal, or when the restore runs in the background of it (warned).
 */
export function applyTerminal(ctx: FdRestoreContext, fd: number, img: TerminalImage, what: string): void {
  const at = ctx.mem.alloc(TERMIOS_SIZE);
  if (raw(ctx, NR.ioctl, fd, IOCTL.TCGETS, at) < 0) {
    warnOnce(ctx, `${what} was a terminal, but crest restore's is not: the job's terminal settings were not applied`);
    return;
  }
  // Who is in the foreground is seen from outside: inside the job both
  // groups are outside its pid namespace and read as 0.
  // An fd opened on /dev/tty stats as /dev/tty (5, 0), whatever terminal it reaches: the controlling one.
  const rdev = statSync(`/proc/${ctx.huskHostPid}/fd/${fd}`).rdev;
  const st = readStat(ctx.huskHostPid);
  const controlling = st.tty_nr !== 0 && (st.tty_nr === rdev || rdev === DEV_TTY);
  if (controlling && st.tpgid !== st.pgrp) {
    warnOnce(
      ctx,
      `crest restore runs in the background of its terminal, so the job does too${img.foreground ? ' (it was in the foreground when checkpointed)' : ''}; its terminal settings were not applied; bring it to the foreground (fg) to use the terminal`,
    );
    return;
  }
  const cur = ctx.thread.readMem(at, TERMIOS_SIZE);
  const want = Buffer.from(cur);
  want.writeUInt32LE(img.iflag, 0);
  want.writeUInt32LE(img.oflag, 4);
  want.writeUInt32LE(((cur.readUInt32LE(8) & ~CFLAG_OF_JOB) | (img.cflag & CFLAG_OF_JOB)) >>> 0, 8);
  want.writeUInt32LE(img.lflag, 12);
  Buffer.from(img.cc, 'hex').copy(want, 17);
  if (want.equals(cur)) return;
  // SIGTTOU blocked: should the group lose the foreground right now, the
  // kernel lets the call through instead of stopping crest restore's whole
  // group. The job's own mask is installed last, with its registers.
  const set = Buffer.alloc(8);
  set.writeBigUInt64LE(1n << BigInt(SIG.SIGTTOU - 1), 0);
  call(ctx, 'rt_sigprocmask', 'block SIGTTOU', NR.rt_sigprocmask, 0 /* SIG_BLOCK */, ctx.mem.put(set), 0, 8);
  ctx.thread.writeMem(at, want);
  // TCSETS, not TCSETSW: waiting for output to drain could hang on a stopped terminal.
  call(ctx, 'ioctl', `set the terminal settings for ${what}`, NR.ioctl, fd, IOCTL.TCSETS, at);
}

/** Every process of a tree meets the same terminal: one warning says it. */
function warnOnce(ctx: FdRestoreContext, msg: string): void {
  if (!ctx.warnings.includes(msg)) ctx.warnings.push(msg);
}

export const stdio: FdKind<'stdio'> = {
  name: 'stdio',
  match: (p) => p.stream !== null,
  inject(p, ctx) {
    if (!isTerminalDevice(p.st)) return undefined;
    return captureTerminal(ctx, p.fd, ctx.stat.tty_nr === p.st.rdev);
  },
  dump(p, _ctx, id, injected) {
    const img: ReturnType<FdKind<'stdio'>['dump']> = { kind: 'stdio', id, stream: p.stream!, was: p.link };
    if (injected !== undefined) img.terminal = injected as TerminalImage;
    return img;
  },
  restore(image, ctx) {
    // The driver parked crest restore's own streams (or /dev/null for a closed one) before anything else.
    const parked = ctx.shared.get(`stdio:${image.stream}`);
    if (typeof parked !== 'number') throw new Error(`stdio stream ${image.stream} was not parked`);
    if (image.terminal) applyTerminal(ctx, parked, image.terminal, `the job's ${['stdin', 'stdout', 'stderr'][image.stream]} (${image.was})`);
    return parked;
  },
};
