// `crest check`: try what this kernel and this user allow, and conclude which
// PID modes crest can use here. Every probe is tried, not guessed; a probe
// that cannot run says why. Nothing here prints or exits: runCheck() returns a
// plain JSON-able report and formatCheck() turns it into words for people.
import { execFileSync, spawn } from 'node:child_process';
import { accessSync, constants as fsConstants, existsSync, readFileSync, statSync } from 'node:fs';
import { machine } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { readMaps, readStat, readStatus, type MapEntry, type ProcStatus } from '../proc/index.js';
import { PTRACE_EVENT_STOP, WNOHANG, __WALL } from '../sys/constants.js';
import { CrestError, SyscallError, errnoName } from '../sys/errors.js';
import { type Native, native } from '../sys/native.js';
import { CAP_CHECKPOINT_RESTORE, CHECKED_CAPS, type FileCaps, capNames, decodeFileCaps, hasCap, hex64 } from './caps.js';
import { allocLocated, probePagemap, probeSoftDirty, type LocatedBuffer } from './memprobe.js';
import { probeFdKinds, probeMemoryKinds, probeProcessKinds } from '../kinds/fds/probe.js';
import { probePidHelper, setcapCommand } from '../pids/pidhelper.js';

/** A JSON value (the report holds no bigint, no undefined inside arrays). */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [k: string]: JsonValue | undefined };

/** One probe's outcome. `ok` is null for context that is shown but not judged, or a probe that could not be tried. */
export interface ProbeResult {
  id: string;
  title: string;
  ok: boolean | null;
  detail: string;
  value?: JsonValue;
}

export type ModeName = 'userns' | 'cap' | 'cycle';

/** Whether one way of getting exact PIDs is usable here, why, and what an administrator would run to enable it. */
export interface ModeResult {
  mode: ModeName;
  usable: boolean;
  why: string;
  enable?: string;
}

export type TrackingMethod = 'soft-dirty' | 'uffd-wp' | 'page-hash';

export interface CheckReport {
  /** Bumped when fields change meaning. */
  reportVersion: 1;
  kernel: string;
  arch: string;
  uid: number;
  euid: number;
  helperPath: string;
  /** crest-pidhelper: the binary that may carry CAP_CHECKPOINT_RESTORE (cap mode) and cycles PIDs (cycle mode). */
  pidHelperPath: string;
  probes: ProbeResult[];
  /** How crest will find pages changed since the last checkpoint. */
  tracking: { method: TrackingMethod; why: string };
  modes: ModeResult[];
}

export interface CheckOptions {
  /** The crest-helper binary (normally paths.helperPath()). */
  helperPath: string;
  /** crest-pidhelper (normally pids.pidHelperPath(); default: next to helperPath). */
  pidHelperPath?: string;
  /** Ceiling for the helper's probe run and the ptrace stop (ms). Default 15000 / 5000. */
  helperTimeoutMs?: number;
  stopTimeoutMs?: number;
}

// ---------------------------------------------------------------------------
// small utilities

function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function errText(e: unknown): string {
  if (e instanceof SyscallError) return `${e.syscall}${e.op ? ` (${e.op})` : ''}: ${e.errnoName}`;
  if (e instanceof CrestError) return e.message;
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (code) return `${code}${(e as Error).message ? ` (${(e as Error).message})` : ''}`;
  return e instanceof Error ? e.message : String(e);
}

/** Reads a /proc/sys file, trimmed; undefined when absent or unreadable. */
export function readSysctl(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** "6.18.44-fc" -> [6, 18, 44]. */
export function kernelVersion(release: string): [number, number, number] {
  const m = /^(\d+)\.(\d+)(?:\.(\d+))?/.exec(release);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)] : [0, 0, 0];
}

function versionAtLeast(v: readonly number[], maj: number, min: number): boolean {
  return v[0]! > maj || (v[0] === maj && v[1]! >= min);
}

function hexAddr(n: number): string {
  return `0x${n.toString(16)}`;
}

function kib(bytes: number): string {
  return bytes % 1024 === 0 ? `${bytes / 1024} KiB` : `${bytes} B`;
}

const YAMA_MEANING: Record<string, string> = {
  '0': 'classic ptrace permissions (same uid, dumpable target)',
  '1': 'restricted: only descendants, or processes that named us with PR_SET_PTRACER (a process owning the job\'s user namespace also passes)',
  '2': 'admin-only: CAP_SYS_PTRACE needed (held inside a job\'s own user namespace)',
  '3': 'no ptrace at all, until reboot',
};

// Bits of struct uffdio_api.features (include/uapi/linux/userfaultfd.h). Debian 12's
// installed header (6.1) stops at bit 12; WP_ASYNC is (1<<15) since Linux 6.7.
export const UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1n << 0n;
export const UFFD_FEATURE_WP_UNPOPULATED = 1n << 13n;
export const UFFD_FEATURE_WP_ASYNC = 1n << 15n;

// ---------------------------------------------------------------------------
// the probes

interface Ctx {
  opts: Required<CheckOptions>;
  probes: ProbeResult[];
  n?: Native;
  nativeError?: string;
  status?: ProcStatus;
  maps?: MapEntry[];
  ptraceOk: boolean;
  ptraceErrno?: string;
  helper: Record<string, string>;
  helperRan: boolean;
  helperMissing: boolean;
  yama?: string;
  sysctls: Record<string, string | undefined>;
  fileCaps?: FileCaps | null;
  helperNoSuid?: boolean;
  pidHelperMissing?: boolean;
  pidHelperOwnerOk?: boolean;
  pidHelper?: Record<string, string>;
  softDirty?: boolean;
  uffdWp?: boolean;
  pagemapScan?: boolean;
  kernel: string;
}

function add(ctx: Ctx, p: ProbeResult): ProbeResult {
  ctx.probes.push(p);
  return p;
}

/** Runs `fn`; a throw becomes a not-ok result with the error's words. */
function attempt(ctx: Ctx, id: string, title: string, fn: () => Omit<ProbeResult, 'id' | 'title'>): ProbeResult {
  try {
    return add(ctx, { id, title, ...fn() });
  } catch (e) {
    if (e instanceof CrestError && e.code === 'NATIVE_MISSING') return add(ctx, { id, title, ok: null, detail: `not tried: ${e.message}` });
    return add(ctx, { id, title, ok: false, detail: `probe failed: ${errText(e)}` });
  }
}

function needNative(ctx: Ctx): Native {
  if (ctx.n) return ctx.n;
  throw new CrestError('NATIVE_MISSING', 'the native addon is not built (`npm ci` builds it)');
}

function probeKernel(ctx: Ctx): void {
  attempt(ctx, 'kernel', 'kernel version', () => {
    const procVersion = readSysctl('/proc/version') ?? '';
    let release: string;
    let from: string;
    if (ctx.n) {
      release = ctx.n.unameRelease();
      from = 'uname';
    } else {
      release = procVersion.split(' ')[2] ?? 'unknown';
      from = '/proc/version (native addon missing)';
    }
    ctx.kernel = release;
    const v = kernelVersion(release);
    const ok = versionAtLeast(v, 5, 13);
    const extras: string[] = [];
    if (!versionAtLeast(v, 6, 7)) extras.push('no PAGEMAP_SCAN or UFFD_FEATURE_WP_ASYNC before 6.7');
    return {
      ok,
      detail: `${release} (from ${from})${ok ? '' : '; crest needs 5.13 or newer (clone3 set_tid 5.5, CAP_CHECKPOINT_RESTORE 5.9, PTRACE_GET_RSEQ_CONFIGURATION 5.13)'}${extras.length ? `; ${extras.join('; ')}` : ''}`,
      value: { release, procVersion },
    };
  });
  attempt(ctx, 'arch', 'architecture', () => {
    const m = machine();
    const ok = m === 'x86_64' && process.arch === 'x64';
    return { ok, detail: ok ? `${m}` : `${m} (node ${process.arch}); crest supports x86_64 only`, value: m };
  });
}

/** Spawns `sleep 30`, seizes, interrupts and waits for the PTRACE_EVENT_STOP; rseq is read while it is stopped. */
function probePtrace(ctx: Ctx): void {
  const title = 'ptrace seize/interrupt';
  const rseqTitle = 'ptrace rseq configuration';
  let n: Native;
  try {
    n = needNative(ctx);
  } catch (e) {
    add(ctx, { id: 'ptrace', title, ok: false, detail: `not tried: ${errText(e)}` });
    add(ctx, { id: 'rseq', title: rseqTitle, ok: null, detail: 'not tried: native addon missing' });
    return;
  }
  const sleepBin = existsSync('/bin/sleep') ? '/bin/sleep' : 'sleep';
  const child = spawn(sleepBin, ['30'], { stdio: 'ignore' });
  child.on('error', () => {});
  child.unref();
  const pid = child.pid;
  if (pid === undefined) {
    add(ctx, { id: 'ptrace', title, ok: false, detail: `could not start ${sleepBin} 30 to trace` });
    add(ctx, { id: 'rseq', title: rseqTitle, ok: null, detail: 'not tried: no tracee' });
    return;
  }
  let seized = false;
  let step = 'PTRACE_SEIZE';
  try {
    // spawn() returns right after exec; let the child finish starting (the
    // dynamic loader registers rseq) and sit in its sleep before seizing it.
    const settle = Date.now() + ctx.opts.stopTimeoutMs;
    while (Date.now() < settle) {
      let state: string;
      try {
        state = readStat(pid).state;
      } catch {
        break;
      }
      if (state === 'S') break;
      sleepMs(1);
    }
    n.ptraceSeize(pid, 0);
    seized = true;
    step = 'PTRACE_INTERRUPT';
    n.ptraceInterrupt(pid);
    step = 'waitpid';
    const deadline = Date.now() + ctx.opts.stopTimeoutMs;
    let w = n.waitpid(pid, __WALL | WNOHANG);
    while (w.pid === 0 && Date.now() < deadline) {
      sleepMs(2);
      w = n.waitpid(pid, __WALL | WNOHANG);
    }
    if (w.pid === 0) throw new CrestError('PTRACE_NO_STOP', `no stop within ${ctx.opts.stopTimeoutMs} ms after PTRACE_INTERRUPT`);
    const s = w.status;
    const stopped = (s & 0xff) === 0x7f;
    const event = s >> 16;
    if (!stopped || event !== PTRACE_EVENT_STOP) {
      throw new CrestError('PTRACE_BAD_STOP', `unexpected wait status 0x${s.toString(16)} (stopped ${stopped}, event ${event}; wanted PTRACE_EVENT_STOP ${PTRACE_EVENT_STOP})`);
    }
    ctx.ptraceOk = true;
    add(ctx, {
      id: 'ptrace',
      title,
      ok: true,
      detail: `seized and stopped a child (pid ${pid}) without a signal: wait status 0x${s.toString(16)}, PTRACE_EVENT_STOP`,
      value: { pid, status: s },
    });
    attempt(ctx, 'rseq', rseqTitle, () => {
      try {
        const c = n.ptraceGetRseqConfig(pid);
        if (c === null) return { ok: true, detail: 'supported; no rseq registered in the probe child', value: null };
        return {
          ok: true,
          detail: `supported; probe child's rseq area at ${hex64(c.rseqAbiPointer)}, size ${c.rseqAbiSize}, signature 0x${c.signature.toString(16)}`,
          value: { pointer: hex64(c.rseqAbiPointer), size: c.rseqAbiSize, flags: c.flags, signature: `0x${c.signature.toString(16)}` },
        };
      } catch (e) {
        const name = e instanceof SyscallError ? e.errnoName : errText(e);
        return { ok: false, detail: `unsupported: ${errText(e)}${name === 'EIO' ? ' (kernel older than 5.13)' : ''}` };
      }
    });
  } catch (e) {
    ctx.ptraceErrno = e instanceof SyscallError ? e.errnoName : undefined;
    let hint = '';
    if (ctx.ptraceErrno === 'EPERM') {
      if (ctx.yama === '2' || ctx.yama === '3') hint = `; Yama ptrace_scope is ${ctx.yama} (${YAMA_MEANING[ctx.yama]})`;
      else hint = '; ptrace is refused here (seccomp or a container policy?)';
    }
    add(ctx, { id: 'ptrace', title, ok: false, detail: `${step} of a child failed: ${errText(e)}${hint}` });
    add(ctx, { id: 'rseq', title: rseqTitle, ok: null, detail: 'not tried: no stopped tracee' });
  } finally {
    if (seized) {
      try {
        n.ptraceDetach(pid, 0);
      } catch {
        // a failed detach still ends with the kill below
      }
    }
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
    // The child is reaped by node's own child_process machinery (not here, so that it stays consistent).
  }
}

function probeHelper(ctx: Ctx): void {
  const path = ctx.opts.helperPath;
  const parts: Array<[string, string]> = [
    ['userns', 'user+pid+mount namespace (helper)'],
    ['mountproc', 'mount /proc in it (helper)'],
    ['set_tid', 'clone3 set_tid in it (helper)'],
    ['clone3', 'clone3 (helper)'],
    ['netns', 'network namespace in it, loopback up (helper; crest run --net)'],
    ['tcp_repair', 'TCP_REPAIR in it (helper; established TCP connections of --net jobs)'],
  ];
  const notTried = (why: string): void => {
    for (const [id, t] of parts) add(ctx, { id, title: t, ok: null, detail: `not tried: ${why}` });
  };
  if (!existsSync(path)) {
    ctx.helperMissing = true;
    add(ctx, { id: 'helper', title: 'crest-helper probe', ok: false, detail: `helper not found at ${path}; \`npm ci\` (or \`npm run build\`) in the crest package builds it` });
    notTried('helper missing');
    return;
  }
  let out: string;
  try {
    accessSync(path, fsConstants.X_OK);
    out = execFileSync(path, ['probe'], { encoding: 'utf8', timeout: ctx.opts.helperTimeoutMs, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { status?: number | null; signal?: string | null; stderr?: string };
    const why = err.stderr?.trim() || (err.signal ? `killed by ${err.signal}` : err.status != null ? `exit status ${err.status}` : errText(e));
    add(ctx, { id: 'helper', title: 'crest-helper probe', ok: false, detail: `\`${path} probe\` failed: ${why}` });
    notTried('helper probe failed');
    return;
  }
  const res: Record<string, string> = {};
  for (const line of out.split('\n')) {
    const m = /^(\w+) (\S+)$/.exec(line.trim());
    if (m) res[m[1]!] = m[2]!;
  }
  ctx.helper = res;
  ctx.helperRan = true;
  const missing = parts.map(([id]) => id).filter((id) => res[id] === undefined);
  add(ctx, {
    id: 'helper',
    title: 'crest-helper probe',
    ok: missing.length === 0,
    detail: missing.length === 0 ? `ran ${path} probe` : `${path} probe did not report ${missing.join(', ')}; output: ${JSON.stringify(out.trim())}`,
    value: res,
  });
  const meaning: Record<string, string> = {
    userns: 'this user can create a user+pid+mount namespace and map its ids',
    mountproc: 'a fresh /proc can be mounted inside it',
    set_tid: 'clone3 with set_tid picked PID 77 inside it',
    clone3: 'clone3 works',
    netns: 'a job may have its own network namespace (crest run --net)',
    tcp_repair: 'established TCP connections of crest run --net jobs can be checkpointed and restored (TCP_REPAIR: CAP_NET_ADMIN over the job\'s network namespace, which crest and the husks hold)',
  };
  for (const [id, t] of parts) {
    const r = res[id];
    if (r === undefined) add(ctx, { id, title: t, ok: null, detail: 'not reported by the helper' });
    else if (r === 'ok') add(ctx, { id, title: t, ok: true, detail: meaning[id]!, value: 'ok' });
    else add(ctx, { id, title: t, ok: false, detail: `${r}${id !== 'userns' && res.userns !== 'ok' ? ' (namespace creation failed first)' : ''}`, value: r });
  }
}

function probeYama(ctx: Ctx): void {
  const v = readSysctl('/proc/sys/kernel/yama/ptrace_scope');
  ctx.yama = v;
  add(ctx, {
    id: 'yama',
    title: 'Yama ptrace_scope',
    ok: v === '3' ? false : null,
    detail: v === undefined ? 'no Yama (kernel.yama.ptrace_scope absent): classic ptrace permissions' : `${v}: ${YAMA_MEANING[v] ?? 'unknown value'}`,
    value: v ?? null,
  });
}

const USERNS_SYSCTLS: Array<[name: string, path: string]> = [
  ['kernel.unprivileged_userns_clone', '/proc/sys/kernel/unprivileged_userns_clone'],
  ['user.max_user_namespaces', '/proc/sys/user/max_user_namespaces'],
  ['kernel.apparmor_restrict_unprivileged_userns', '/proc/sys/kernel/apparmor_restrict_unprivileged_userns'],
];

function probeUsernsSysctls(ctx: Ctx): void {
  const shown: string[] = [];
  const value: Record<string, string | null> = {};
  for (const [name, path] of USERNS_SYSCTLS) {
    const v = readSysctl(path);
    ctx.sysctls[name] = v;
    value[name] = v ?? null;
    if (v !== undefined) shown.push(`${name}=${v}`);
  }
  add(ctx, {
    id: 'userns-sysctls',
    title: 'user namespace sysctls',
    ok: null,
    detail: `${shown.length ? shown.join(', ') : 'none of the known switches present'} (context; the helper's probe decides)`,
    value,
  });
}

function probeCaps(ctx: Ctx): void {
  attempt(ctx, 'caps-process', 'capabilities of this process', () => {
    const s = ctx.status ?? readStatus('self');
    ctx.status = s;
    const eff = s.capEff;
    const prm = s.capPrm;
    const list = CHECKED_CAPS.map(([name, bit]) => `${name} ${hasCap(eff, bit) ? 'effective' : hasCap(prm, bit) ? 'permitted only' : 'no'}`);
    return {
      ok: null,
      detail: `uid ${s.uid[1]}: ${list.join(', ')}`,
      value: { capEff: hex64(eff), capPrm: hex64(prm), capAmb: hex64(s.capAmb), noNewPrivs: s.noNewPrivs },
    };
  });
  attempt(ctx, 'caps-pidhelper', 'file capabilities of crest-pidhelper', () => {
    const path = ctx.opts.pidHelperPath;
    if (!existsSync(path)) {
      ctx.fileCaps = null;
      ctx.pidHelperMissing = true;
      return { ok: null, detail: `not tried: crest-pidhelper not found at ${path}` };
    }
    const own = statSync(path);
    ctx.pidHelperOwnerOk = own.uid === 0 && (own.mode & 0o022) === 0;
    const n = needNative(ctx);
    const raw = n.getxattr(path, 'security.capability');
    if (raw === null) {
      ctx.fileCaps = null;
      return { ok: null, detail: 'none (no security.capability attribute)', value: null };
    }
    const fc = decodeFileCaps(raw);
    ctx.fileCaps = fc;
    ctx.helperNoSuid = mountedNoSuid(path);
    const notes: string[] = [];
    if (!fc.effective) notes.push('effective flag not set');
    if (!ctx.pidHelperOwnerOk) notes.push('it is not owned by root with mode 0755, so it refuses to run with them');
    if (ctx.helperNoSuid) notes.push('its filesystem is mounted nosuid, so the kernel ignores them');
    if (ctx.status?.noNewPrivs) notes.push('this process has no_new_privs, so exec ignores them');
    return {
      ok: null,
      detail: `revision ${fc.revision}${fc.rootid !== undefined ? ` (namespaced, rootid ${fc.rootid})` : ''}, permitted: ${capNames(fc.permitted)}${notes.length ? `; ${notes.join('; ')}` : ''}`,
      value: {
        revision: fc.revision,
        effective: fc.effective,
        permitted: hex64(fc.permitted),
        inheritable: hex64(fc.inheritable),
        rootid: fc.rootid ?? null,
        nosuid: ctx.helperNoSuid,
        rootOwned: ctx.pidHelperOwnerOk,
      },
    };
  });
  attempt(ctx, 'pidhelper', 'crest-pidhelper probe', () => {
    const path = ctx.opts.pidHelperPath;
    if (!existsSync(path)) {
      ctx.pidHelperMissing = true;
      return { ok: false, detail: `crest-pidhelper not found at ${path}; \`npm ci\` (or \`npm run build\`) builds it` };
    }
    let res: Record<string, string>;
    try {
      res = probePidHelper(path, ctx.opts.helperTimeoutMs);
    } catch (e) {
      const err = e as { stderr?: string; status?: number | null };
      return { ok: false, detail: `\`${path} probe\` failed: ${err.stderr?.trim() || errText(e)}` };
    }
    ctx.pidHelper = res;
    const missing = ['capability', 'set_tid', 'pidns'].filter((k) => res[k] === undefined);
    return {
      ok: missing.length === 0,
      detail:
        missing.length === 0
          ? `CAP_CHECKPOINT_RESTORE ${res.capability === 'yes' ? 'held' : 'not held'}; clone3 set_tid in this pid namespace ${res.set_tid === 'ok' ? 'allowed' : `refused (${res.set_tid})`}; pid namespace ${res.pidns === 'ok' ? 'ours' : res.pidns}`
          : `${path} probe did not report ${missing.join(', ')}`,
      value: res,
    };
  });
}

/** True when the mount holding `path` (longest mount point prefix in /proc/self/mounts) has nosuid. */
function mountedNoSuid(path: string): boolean {
  const abs = resolve(path);
  let best = '';
  let opts = '';
  const text = readSysctl('/proc/self/mounts') ?? '';
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length < 4) continue;
    const mp = f[1]!.replace(/\\040/g, ' ');
    if ((abs === mp || abs.startsWith(mp.endsWith('/') ? mp : `${mp}/`)) && mp.length >= best.length) {
      best = mp;
      opts = f[3]!;
    }
  }
  return opts.split(',').includes('nosuid');
}

function probeMemory(ctx: Ctx): void {
  let lb: LocatedBuffer | undefined;
  let locateError: string | undefined;
  try {
    lb = allocLocated();
  } catch (e) {
    locateError = errText(e);
  }
  attempt(ctx, 'pagemap', 'pagemap (/proc/self/pagemap)', () => {
    if (!lb) return { ok: false, detail: `could not find a test buffer through /proc/self/mem: ${locateError}` };
    const r = probePagemap(lb);
    return {
      ok: r.present,
      detail: r.present
        ? `present bit set for a page just written; PFN ${r.pfn === 0n ? 'hidden (reads 0 without CAP_SYS_ADMIN)' : 'visible'}`
        : `present bit not set for a page just written (entry ${hex64(r.entry)})`,
      value: { addr: hexAddr(r.addr), entry: hex64(r.entry), present: r.present, pfnVisible: r.pfn !== 0n },
    };
  });
  attempt(ctx, 'soft-dirty', 'soft-dirty bits', () => {
    if (!lb) return { ok: false, detail: `not tried: no test buffer (${locateError})` };
    const r = probeSoftDirty(lb);
    ctx.softDirty = r.available;
    let detail: string;
    if (!r.cleared) detail = `cannot write /proc/self/clear_refs: ${r.clearError}`;
    else if (r.available) detail = 'available: clear_refs 4 cleared bit 55 and a write set it again';
    else if (!r.writtenDirty) detail = 'not available: bit 55 stays 0 after clear_refs and a write (kernel built without CONFIG_MEM_SOFT_DIRTY)';
    else detail = 'not usable: bit 55 set on a page not written since clear_refs';
    return { ok: r.available, detail, value: { cleared: r.cleared, writtenDirty: r.writtenDirty, untouchedDirty: r.untouchedDirty } };
  });
  lb = undefined;
}

function probeUffd(ctx: Ctx): void {
  const sysctl = readSysctl('/proc/sys/vm/unprivileged_userfaultfd');
  const sysText = sysctl === undefined ? 'vm.unprivileged_userfaultfd absent' : `vm.unprivileged_userfaultfd=${sysctl}`;
  attempt(ctx, 'userfaultfd', 'userfaultfd', () => {
    const r = needNative(ctx).uffdProbe();
    if (!r.ok) {
      ctx.uffdWp = false;
      return {
        ok: false,
        detail: `userfaultfd(UFFD_USER_MODE_ONLY) failed: ${errnoName(r.errno)}; ${sysText}`,
        value: { errno: errnoName(r.errno), unprivilegedSysctl: sysctl ?? null },
      };
    }
    const wp = (r.features & UFFD_FEATURE_PAGEFAULT_FLAG_WP) !== 0n;
    const wpAsync = (r.features & UFFD_FEATURE_WP_ASYNC) !== 0n;
    ctx.uffdWp = wp && wpAsync;
    return {
      ok: true,
      detail: `available (user-mode faults only); write-protect ${wp ? 'yes' : 'no'}, WP_ASYNC ${wpAsync ? 'yes' : 'no'}; features ${hex64(r.features)}; ${sysText}`,
      value: { features: hex64(r.features), pagefaultFlagWp: wp, wpAsync, unprivilegedSysctl: sysctl ?? null },
    };
  });
  attempt(ctx, 'pagemap-scan', 'PAGEMAP_SCAN ioctl', () => {
    const r = needNative(ctx).pagemapScanProbe();
    ctx.pagemapScan = r.ok;
    if (r.ok) return { ok: true, detail: 'available', value: 'ok' };
    const name = errnoName(r.errno);
    return { ok: false, detail: `unsupported: ${name}${name === 'ENOTTY' ? ' (kernel older than 6.7)' : ''}`, value: name };
  });
}

function probeVdso(ctx: Ctx): void {
  attempt(ctx, 'vdso', 'vDSO layout', () => {
    const maps = ctx.maps ?? readMaps('self');
    ctx.maps = maps;
    const names = ['[vvar]', '[vvar_vclock]', '[vdso]', '[vsyscall]'];
    const found = maps.filter((m) => names.includes(m.path));
    const parts = found.map((m) => (m.vsyscall ? `${m.path} (fixed, left alone)` : `${m.path} ${kib(m.end - m.start)}`));
    const hasVdso = found.some((m) => m.path === '[vdso]');
    return {
      ok: hasVdso,
      detail: hasVdso ? parts.join(', ') : `no [vdso] mapping in /proc/self/maps (${parts.join(', ') || 'no special mappings'})`,
      value: found.map((m) => ({ name: m.path, start: m.vsyscall ? 'ffffffffff600000' : hexAddr(m.start), size: m.vsyscall ? 4096 : m.end - m.start })),
    };
  });
}

/** One line per fd kind: what this kernel and user let crest capture and rebuild (tried in a seized child). */
function probeFds(ctx: Ctx): void {
  if (!ctx.n || !ctx.ptraceOk) {
    const why = !ctx.n ? 'the native addon is missing' : 'ptrace does not work';
    add(ctx, { id: 'fd-kinds', title: 'fd kinds', ok: null, detail: `not tried: ${why}` });
    return;
  }
  for (const r of probeFdKinds({ timeoutMs: ctx.opts.stopTimeoutMs })) {
    add(ctx, { id: `fd-${r.kind}`, title: `fd kind: ${r.kind}`, ok: r.ok, detail: r.detail });
  }
  // Memory shared beyond one mapping (memfds, shared anonymous memory between processes, deleted files).
  for (const r of probeMemoryKinds({ timeoutMs: ctx.opts.stopTimeoutMs })) {
    add(ctx, { id: `memory-${r.kind}`, title: `memory kind: ${r.kind}`, ok: r.ok, detail: r.detail });
  }
  for (const r of probeProcessKinds({ timeoutMs: ctx.opts.stopTimeoutMs })) {
    add(ctx, { id: `process-${r.kind}`, title: `process kind: ${r.kind}`, ok: r.ok, detail: r.detail });
  }
}

function chooseTracking(ctx: Ctx): { method: TrackingMethod; why: string } {
  if (ctx.softDirty) return { method: 'soft-dirty', why: 'soft-dirty bits work' };
  if (ctx.uffdWp && ctx.pagemapScan) {
    return { method: 'uffd-wp', why: 'no soft-dirty; userfaultfd async write-protect and PAGEMAP_SCAN both work' };
  }
  const missing = [ctx.softDirty ? '' : 'soft-dirty', ctx.uffdWp ? '' : 'uffd WP_ASYNC', ctx.pagemapScan ? '' : 'PAGEMAP_SCAN'].filter(Boolean);
  return { method: 'page-hash', why: `no ${missing.join(', no ')}: pages are compared by hash with the previous checkpoint (a full read each time)` };
}

// ---------------------------------------------------------------------------
// conclusions

/** What the PID-mode conclusions depend on: the probe outcomes, as plain data. */
export interface ModeFacts {
  helperPath: string;
  nativeOk: boolean;
  helperMissing: boolean;
  helperRan: boolean;
  /** The helper's probe lines: userns/mountproc/set_tid/clone3 -> 'ok' or an errno name. */
  helper: Record<string, string>;
  ptraceOk: boolean;
  ptraceErrno?: string;
  /** kernel.yama.ptrace_scope, undefined without Yama. */
  yama?: string;
  /** The user namespace sysctls present, by sysctl name. */
  sysctls: Record<string, string | undefined>;
  /** The helper's file capabilities; null when it has none, undefined when not read. */
  fileCaps?: FileCaps | null;
  helperNoSuid?: boolean;
  status?: Pick<ProcStatus, 'capEff' | 'capAmb' | 'uid' | 'noNewPrivs'>;
  /** crest-pidhelper (default: next to helperPath); fileCaps and helperNoSuid are about it. */
  pidHelperPath?: string;
  pidHelperMissing?: boolean;
  /** Root owns it and only root may write it (it refuses to run with capabilities otherwise). */
  pidHelperOwnerOk?: boolean;
  /** Its probe lines: capability yes|no, set_tid ok|ERRNO, pidns ok|ERRNO; undefined when it did not run. */
  pidHelper?: Record<string, string>;
  /** What an administrator runs to give it the capability (default: setcap on pidHelperPath). */
  pidHelperEnable?: string;
}

function usernsBlocker(f: ModeFacts): string | undefined {
  const s = f.sysctls;
  if (s['kernel.apparmor_restrict_unprivileged_userns'] === '1') return 'sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0';
  if (s['user.max_user_namespaces'] === '0') return 'sudo sysctl -w user.max_user_namespaces=15000';
  if (s['kernel.unprivileged_userns_clone'] === '0') return 'sudo sysctl -w kernel.unprivileged_userns_clone=1';
  return undefined;
}

function ptraceEnable(f: { yama?: string }): string | undefined {
  if (f.yama === '2' || f.yama === '3') return 'sudo sysctl -w kernel.yama.ptrace_scope=1';
  return undefined;
}

/** Which PID modes are usable, why, and how an administrator would enable the others. Pure. */
export function concludeModes(ctx: ModeFacts): ModeResult[] {
  const h = ctx.helper;
  const ptraceWhy = ctx.ptraceOk
    ? ''
    : ctx.nativeOk
      ? `ptrace does not work${ctx.ptraceErrno ? ` (${ctx.ptraceErrno})` : ''}`
      : 'ptrace not tried: the native addon is not built (`npm ci` builds it)';
  const modes: ModeResult[] = [];

  // userns: exact PIDs inside crest jobs through the job's own namespaces.
  {
    const fails: string[] = [];
    let enable: string | undefined;
    if (ctx.helperMissing) {
      fails.push(`crest-helper is not built (${ctx.helperPath})`);
      enable = 'npm ci   # in the crest package: builds the native addon and crest-helper';
    } else if (!ctx.helperRan) {
      fails.push('crest-helper probe did not run');
    } else {
      for (const id of ['userns', 'mountproc', 'set_tid'] as const) {
        if (h[id] !== 'ok') fails.push(`${id} ${h[id] ?? 'not reported'}`);
      }
      if (h.userns !== undefined && h.userns !== 'ok') enable = usernsBlocker(ctx);
    }
    if (!ctx.ptraceOk) {
      fails.push(ptraceWhy);
      enable ??= ptraceEnable(ctx);
    }
    const usable = fails.length === 0;
    modes.push({
      mode: 'userns',
      usable,
      why: usable ? 'exact PIDs inside crest jobs, no privilege: user+pid+mount namespaces, /proc and clone3 set_tid all work' : fails.join('; '),
      ...(usable || !enable ? {} : { enable }),
    });
  }

  // cap: crest-pidhelper with CAP_CHECKPOINT_RESTORE: clone3 set_tid in the host pid namespace.
  // Its own probe decides when it ran; the file's attributes explain why not.
  const pidHelperPath = ctx.pidHelperPath ?? join(dirname(ctx.helperPath), 'crest-pidhelper');
  const pidHelperMissing = ctx.pidHelperMissing ?? ctx.helperMissing;
  {
    const s = ctx.status;
    const fc = ctx.fileCaps;
    const abs = isAbsolute(pidHelperPath) ? pidHelperPath : resolve(pidHelperPath);
    const enable = ctx.pidHelperEnable ?? `sudo setcap cap_checkpoint_restore+ep ${abs}`;
    let usable = false;
    let why: string;
    const ownerOk = ctx.pidHelperOwnerOk ?? true;
    const fileOk =
      fc != null && fc.effective && hasCap(fc.permitted, CAP_CHECKPOINT_RESTORE) && fc.rootid === undefined && !ctx.helperNoSuid && !s?.noNewPrivs && ownerOk;
    const procEff = s ? hasCap(s.capEff, CAP_CHECKPOINT_RESTORE) : false;
    const inherits = s ? s.uid[1] === 0 || hasCap(s.capAmb, CAP_CHECKPOINT_RESTORE) : false;
    const p = ctx.pidHelper;
    const probeOk = p !== undefined && p.capability === 'yes' && p.set_tid === 'ok' && p.pidns === 'ok';
    if (p !== undefined && !probeOk && !pidHelperMissing) {
      const reasons = [`crest-pidhelper's probe: capability ${p.capability ?? '?'}, set_tid ${p.set_tid ?? '?'}, pid namespace ${p.pidns ?? '?'}`];
      if (fc == null) reasons.push('it has no file capabilities');
      else if (!ownerOk) reasons.push('it carries file capabilities but is not owned by root with mode 0755, so it refuses them');
      why = reasons.join('; ');
    } else if (fileOk && (p === undefined || probeOk)) {
      usable = true;
      why = 'crest-pidhelper carries cap_checkpoint_restore in its permitted and effective file capabilities';
    } else if (procEff && inherits && !pidHelperMissing) {
      usable = true;
      why = `this process holds cap_checkpoint_restore${s?.uid[1] === 0 ? ' (as root)' : ' (ambient)'} and crest-pidhelper inherits it`;
    } else {
      const reasons: string[] = [];
      if (pidHelperMissing) reasons.push('crest-pidhelper is not built');
      else if (fc == null) reasons.push('crest-pidhelper has no file capabilities');
      else if (!hasCap(fc.permitted, CAP_CHECKPOINT_RESTORE)) reasons.push('crest-pidhelper\'s file capabilities lack cap_checkpoint_restore');
      else if (!fc.effective) reasons.push('crest-pidhelper\'s file capabilities lack the effective flag');
      else if (fc.rootid !== undefined) reasons.push(`crest-pidhelper's file capabilities are namespaced (rootid ${fc.rootid}) and do not apply in the host pid namespace`);
      else if (ctx.helperNoSuid) reasons.push('crest-pidhelper sits on a nosuid mount, so its file capabilities are ignored');
      else if (s?.noNewPrivs) reasons.push('this process has no_new_privs, so file capabilities are ignored at exec');
      else if (!ownerOk) reasons.push('crest-pidhelper carries file capabilities but is not owned by root with mode 0755, so it refuses them');
      if (!pidHelperMissing) {
        reasons.push(procEff ? 'this process holds cap_checkpoint_restore but not as ambient, so the helper would not inherit it' : 'this process does not hold cap_checkpoint_restore');
      }
      why = reasons.join('; ');
    }
    if (usable && !ctx.ptraceOk) {
      usable = false;
      why += `; but ${ptraceWhy}`;
    }
    modes.push({
      mode: 'cap',
      usable,
      why,
      ...(usable ? {} : { enable: (!ctx.ptraceOk ? ptraceEnable(ctx) : undefined) ?? (pidHelperMissing ? `npm ci && ${enable}` : enable) }),
    });
  }

  // cycle: crest-pidhelper uses up IDs until the counter arrives. Possible wherever ptrace works.
  {
    const usable = ctx.ptraceOk && !pidHelperMissing;
    const en = !ctx.nativeOk || pidHelperMissing ? 'npm ci   # in the crest package: builds the native addon and crest-pidhelper' : ptraceEnable(ctx);
    modes.push({
      mode: 'cycle',
      usable,
      why: usable
        ? 'last resort for processes outside a crest job: use up PIDs until the counter reaches the wanted one; slow and racy'
        : pidHelperMissing && ctx.ptraceOk
          ? `crest-pidhelper is not built (${pidHelperPath})`
          : ptraceWhy,
      ...(usable || !en ? {} : { enable: en }),
    });
  }
  return modes;
}

// ---------------------------------------------------------------------------

/** Runs every probe (synchronously, a second or two) and returns the report. Never throws for a failed probe. */
export function runCheck(opts: CheckOptions): CheckReport {
  const ctx: Ctx = {
    opts: { helperTimeoutMs: 15000, stopTimeoutMs: 5000, pidHelperPath: join(dirname(opts.helperPath), 'crest-pidhelper'), ...opts },
    probes: [],
    ptraceOk: false,
    helper: {},
    helperRan: false,
    helperMissing: false,
    sysctls: {},
    kernel: 'unknown',
  };
  try {
    ctx.n = native();
  } catch (e) {
    ctx.nativeError = errText(e);
  }
  try {
    ctx.status = readStatus('self');
  } catch {
    // probeCaps reports it
  }
  probeKernel(ctx);
  probeYama(ctx);
  probePtrace(ctx);
  probeHelper(ctx);
  probeUsernsSysctls(ctx);
  probeCaps(ctx);
  probeMemory(ctx);
  probeUffd(ctx);
  probeVdso(ctx);
  probeFds(ctx);
  const tracking = chooseTracking(ctx);
  add(ctx, { id: 'tracking', title: 'page-change tracking', ok: true, detail: `${tracking.method}: ${tracking.why}`, value: tracking.method });
  if (ctx.nativeError) {
    ctx.probes.unshift({ id: 'native', title: 'native addon', ok: false, detail: ctx.nativeError });
  }
  return {
    reportVersion: 1,
    kernel: ctx.kernel,
    arch: machine(),
    uid: process.getuid?.() ?? -1,
    euid: process.geteuid?.() ?? -1,
    helperPath: ctx.opts.helperPath,
    pidHelperPath: ctx.opts.pidHelperPath,
    probes: ctx.probes,
    tracking,
    modes: concludeModes({
      helperPath: ctx.opts.helperPath,
      nativeOk: ctx.n !== undefined,
      helperMissing: ctx.helperMissing,
      helperRan: ctx.helperRan,
      helper: ctx.helper,
      ptraceOk: ctx.ptraceOk,
      ptraceErrno: ctx.ptraceErrno,
      yama: ctx.yama,
      sysctls: ctx.sysctls,
      fileCaps: ctx.fileCaps,
      helperNoSuid: ctx.helperNoSuid,
      status: ctx.status,
      pidHelperPath: ctx.opts.pidHelperPath,
      pidHelperMissing: ctx.pidHelperMissing ?? false,
      pidHelperOwnerOk: ctx.pidHelperOwnerOk,
      pidHelper: ctx.pidHelper,
      pidHelperEnable: setcapCommand(ctx.opts.pidHelperPath),
    }),
  };
}

const MODE_TITLES: Record<ModeName, string> = {
  userns: 'userns (own namespaces, exact PIDs, no privilege)',
  cap: 'cap (CAP_CHECKPOINT_RESTORE on crest-pidhelper)',
  cycle: 'cycle (PID cycling, last resort)',
};

/** The report in plain words: one aligned line per probe, then the PID modes. */
export function formatCheck(report: CheckReport): string {
  const mark = (ok: boolean | null): string => (ok === true ? 'ok' : ok === false ? 'no' : '--');
  const width = Math.max(...report.probes.map((p) => p.title.length));
  const lines: string[] = [`crest check: kernel ${report.kernel} on ${report.arch}, uid ${report.uid}${report.euid !== report.uid ? ` (euid ${report.euid})` : ''}`, ''];
  const flat = (t: string): string => t.replace(/\s*\n\s*/g, ' ');
  for (const p of report.probes) lines.push(`  ${mark(p.ok).padEnd(4)} ${p.title.padEnd(width)}   ${flat(p.detail)}`);
  lines.push('', 'PID modes:');
  const mw = Math.max(...report.modes.map((m) => MODE_TITLES[m.mode].length));
  for (const m of report.modes) {
    lines.push(`  ${(m.usable ? 'ok' : 'no').padEnd(4)} ${MODE_TITLES[m.mode].padEnd(mw)}   ${m.usable ? 'usable' : 'not usable'}: ${flat(m.why)}`);
    if (m.enable) lines.push(`  ${''.padEnd(4)} ${''.padEnd(mw)}   to enable: ${m.enable}`);
  }
  const usable = (m: ModeName): boolean => report.modes.some((x) => x.mode === m && x.usable);
  const host = usable('cap') ? 'cap' : usable('cycle') ? 'cycle' : null;
  if (!usable('userns') && !host) lines.push('', 'No PID mode is usable here; see "to enable" above.');
  else {
    lines.push(
      '',
      `crest run jobs get their PIDs back in the ${usable('userns') ? 'userns mode' : '(not usable) userns mode'}; processes outside a job ${host ? `in the ${host} mode` : 'not at all'}.`,
    );
  }
  return `${lines.join('\n')}\n`;
}
