// The mm fields the kernel keeps per address space - code/data/brk/stack/
// argv/env bounds, the aux vector and /proc/self/exe - given back in one
// PR_SET_MM_MAP call once every mapping exists (the kernel checks the values
// against the address space).
import { readFileSync, readlinkSync } from 'node:fs';
import { PR, SYS } from '../sys/constants.js';
import { isErrno } from '../sys/errors.js';
import { fileIdentity } from './fileid.js';
import { unsupported, type Kind } from './types.js';

const PRCTL_MM_MAP_SIZE = 12 * 8 + 4 + 4; // struct prctl_mm_map: 11 addresses, auxv pointer, auxv_size, exe_fd

export const mm: Kind = {
  name: 'mm',
  check(ctx) {
    const exe = readlinkSync(`/proc/${ctx.hostPid}/exe`);
    if (exe.endsWith(' (deleted)')) throw unsupported(ctx.hostPid, 'executable', `${exe} was deleted or replaced since it started`);
  },
  dumpInjected(ctx) {
    const brk = ctx.thread.syscall('brk', 'read the program break', SYS.brk, 0);
    ctx.proc.mm = { ...(ctx.proc.mm ?? ({} as never)), brk: Number(brk) };
  },
  dump(ctx) {
    const s = ctx.stat;
    const auxv = readFileSync(`/proc/${ctx.hostPid}/auxv`);
    ctx.proc.mm = {
      startCode: s.startcode,
      endCode: s.endcode,
      startData: s.start_data,
      endData: s.end_data,
      startBrk: s.start_brk,
      brk: ctx.proc.mm!.brk,
      startStack: s.startstack,
      argStart: s.arg_start,
      argEnd: s.arg_end,
      envStart: s.env_start,
      envEnd: s.env_end,
      auxv: auxv.toString('base64'),
    };
    const exePath = readlinkSync(`/proc/${ctx.hostPid}/exe`);
    ctx.proc.exe = fileIdentity(exePath, `/proc/${ctx.hostPid}/exe`);
    ctx.proc.comm = ctx.stat.comm;
  },
  restore(ctx) {
    const m = ctx.proc.mm;
    const t = ctx.thread;
    const auxv = Buffer.from(m.auxv, 'base64');
    const auxvAt = ctx.mem.put(auxv);
    // exe_fd needs CAP_CHECKPOINT_RESTORE in the process itself: a husk without any goes straight to the fallback.
    const exeFd = ctx.unprivilegedMode
      ? -1
      : Number(t.syscall('openat', `open executable ${ctx.proc.exe.path}`, SYS.openat, -100, ctx.mem.str(ctx.proc.exe.path), 0, 0));
    const b = Buffer.alloc(PRCTL_MM_MAP_SIZE);
    const fields = [
      m.startCode, m.endCode, m.startData, m.endData, m.startBrk, m.brk, m.startStack,
      m.argStart, m.argEnd, m.envStart, m.envEnd,
    ];
    fields.forEach((v, i) => b.writeBigUInt64LE(BigInt(v), i * 8));
    b.writeBigUInt64LE(BigInt(auxvAt), 11 * 8);
    b.writeUInt32LE(auxv.length, 12 * 8);
    b.writeInt32LE(exeFd, 12 * 8 + 4);
    const at = ctx.mem.put(b);
    if (exeFd < 0) {
      t.syscall('prctl', 'PR_SET_MM_MAP (without exe)', SYS.prctl, PR.SET_MM, PR.SET_MM_MAP, at, PRCTL_MM_MAP_SIZE, 0);
      ctx.warnings.push(
        `/proc/self/exe stays crest-pidhelper's, not ${ctx.proc.exe.path}: setting it needs CAP_CHECKPOINT_RESTORE in the process itself, and in the ${ctx.unprivilegedMode} mode the restored process holds no capability`,
      );
      return;
    }
    try {
      t.syscall('prctl', 'PR_SET_MM_MAP', SYS.prctl, PR.SET_MM, PR.SET_MM_MAP, at, PRCTL_MM_MAP_SIZE, 0);
    } catch (e) {
      if (!isErrno(e, 'EPERM') && !isErrno(e, 'EBUSY')) throw e;
      // Without the capability in the job's namespace /proc/self/exe stays the husk's.
      b.writeInt32LE(-1, 12 * 8 + 4);
      t.writeMem(at, b);
      t.syscall('prctl', 'PR_SET_MM_MAP (without exe)', SYS.prctl, PR.SET_MM, PR.SET_MM_MAP, at, PRCTL_MM_MAP_SIZE, 0);
      ctx.warnings.push(`/proc/self/exe could not be set to ${ctx.proc.exe.path} (${(e as Error).message})`);
    }
    t.syscall('close', 'close the executable', SYS.close, exeFd);
  },
};
