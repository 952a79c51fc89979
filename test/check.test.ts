import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  CAP_CHECKPOINT_RESTORE,
  type CheckReport,
  type ModeFacts,
  concludeModes,
  decodeFileCaps,
  encodeFileCaps,
  formatCheck,
  hasCap,
  kernelVersion,
  runCheck,
} from '../src/check/index.js';
import { readMaps, readStatus } from '../src/proc/index.js';
import { native } from '../src/sys/native.js';

function repoRoot(): string {
  let d = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(d, 'package.json'))) {
    const up = dirname(d);
    if (up === d) throw new Error('package.json not found');
    d = up;
  }
  return d;
}
const HELPER = join(repoRoot(), 'helper', 'crest-helper');
const PIDHELPER = join(repoRoot(), 'helper', 'crest-pidhelper');
const isRoot = process.geteuid!() === 0;

const probe = (r: CheckReport, id: string) => {
  const p = r.probes.find((x) => x.id === id);
  assert.ok(p, `probe ${id} missing`);
  return p;
};
const mode = (r: CheckReport, m: string) => {
  const x = r.modes.find((y) => y.mode === m);
  assert.ok(x, `mode ${m} missing`);
  return x;
};

// The soft-dirty probe done independently, by another program: python maps a page,
// clears soft-dirty, writes it, and reads bit 55 of it and of an untouched page.
const SOFT_DIRTY_PY = `
import ctypes, mmap, struct
m = mmap.mmap(-1, 2 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
addr = ctypes.addressof((ctypes.c_char * (2 * 4096)).from_buffer(m))
m[0] = 1; m[4096] = 1
with open('/proc/self/clear_refs', 'w') as f: f.write('4')
m[0] = 2
with open('/proc/self/pagemap', 'rb') as f:
    def ent(a):
        f.seek(a // 4096 * 8); return struct.unpack('<Q', f.read(8))[0]
    w, u = ent(addr), ent(addr + 4096)
print('present' if (w >> 63) & 1 else 'absent', 'yes' if (w >> 55) & 1 and not (u >> 55) & 1 else 'no')
`;

let report: CheckReport;
test('runCheck with the real helper', () => {
  assert.ok(existsSync(HELPER), `the helper must be built first (npm run build): ${HELPER}`);
  const t0 = Date.now();
  report = runCheck({ helperPath: HELPER });
  assert.ok(Date.now() - t0 < 20000);
  assert.equal(report.helperPath, HELPER);
  assert.equal(report.uid, process.getuid!());
  const ids = report.probes.map((p) => p.id);
  assert.equal(new Set(ids).size, ids.length, `duplicate probe ids: ${ids.join(',')}`);
  for (const id of ['kernel', 'arch', 'ptrace', 'rseq', 'helper', 'userns', 'mountproc', 'set_tid', 'clone3', 'yama', 'userns-sysctls', 'caps-process', 'caps-pidhelper', 'pidhelper', 'pagemap', 'soft-dirty', 'userfaultfd', 'pagemap-scan', 'vdso', 'tracking']) {
    const p = probe(report, id);
    assert.equal(typeof p.title, 'string');
    assert.ok(p.detail.length > 0, id);
    assert.ok(p.ok === true || p.ok === false || p.ok === null);
  }
  assert.ok(!ids.includes('native'), 'the native addon must load');
});

test('kernel and architecture match the machine', () => {
  const k = probe(report, 'kernel');
  assert.equal(k.ok, true);
  assert.equal(report.kernel, native().unameRelease());
  assert.ok(k.detail.includes(report.kernel));
  assert.deepEqual(kernelVersion('6.18.44-fc-v657'), [6, 18, 44]);
  assert.deepEqual(kernelVersion('5.4'), [5, 4, 0]);
  assert.equal(probe(report, 'arch').ok, true);
  assert.equal(report.arch, 'x86_64');
});

test('ptrace, rseq and the helper probe work here', () => {
  const p = probe(report, 'ptrace');
  assert.equal(p.ok, true, p.detail);
  assert.ok(p.detail.includes('PTRACE_EVENT_STOP'));
  const pv = p.value as { pid: number; status: number };
  assert.equal(pv.status >> 16, 128);
  const r = probe(report, 'rseq');
  assert.equal(r.ok, true, r.detail);
  // glibc 2.36 registers rseq in every thread: the settled sleep child has one.
  const rv = r.value as { pointer: string; size: number; signature: string } | null;
  assert.ok(rv !== null, r.detail);
  assert.match(rv.pointer, /^0x[0-9a-f]{16}$/);
  assert.ok(rv.size >= 32);
  assert.equal(probe(report, 'helper').ok, true, probe(report, 'helper').detail);
  for (const id of ['userns', 'mountproc', 'set_tid', 'clone3', 'netns', 'tcp_repair']) assert.equal(probe(report, id).ok, true, `${id}: ${probe(report, id).detail}`);
  // The helper's own output agrees.
  const out = execFileSync(HELPER, ['probe'], { encoding: 'utf8' });
  assert.deepEqual(probe(report, 'helper').value, Object.fromEntries(out.trim().split('\n').map((l) => l.split(' '))));
});

test('Yama and sysctls are reported as context', () => {
  const y = probe(report, 'yama');
  const scope = existsSync('/proc/sys/kernel/yama/ptrace_scope');
  assert.equal(y.detail.startsWith('no Yama'), !scope);
  const s = probe(report, 'userns-sysctls');
  assert.equal(s.ok, null);
  if (existsSync('/proc/sys/user/max_user_namespaces')) assert.ok(s.detail.includes('user.max_user_namespaces='));
});

test('PID modes on this machine', () => {
  const u = mode(report, 'userns');
  assert.equal(u.usable, true, u.why);
  assert.equal(u.enable, undefined);
  const c = mode(report, 'cycle');
  assert.equal(c.usable, true, c.why);
  // The capability lives on crest-pidhelper, which uses it only when root owns it (mode 0755).
  const cap = mode(report, 'cap');
  const status = readStatus('self');
  const raw = native().getxattr(PIDHELPER, 'security.capability');
  const st = statSync(PIDHELPER);
  const fileCap = raw !== null && hasCap(decodeFileCaps(raw).permitted, CAP_CHECKPOINT_RESTORE) && st.uid === 0 && (st.mode & 0o022) === 0;
  const expect = fileCap || (hasCap(status.capEff, CAP_CHECKPOINT_RESTORE) && status.uid[1] === 0);
  assert.equal(cap.usable, expect, cap.why);
  if (!cap.usable) assert.match(String(cap.enable), new RegExp(`sudo setcap cap_checkpoint_restore\\+ep ${PIDHELPER}$`));
  assert.equal(cap.usable, isRoot || fileCap);
  assert.equal(report.pidHelperPath, PIDHELPER);
  const ph = probe(report, 'pidhelper');
  assert.equal(ph.ok, true, ph.detail);
  assert.equal((ph.value as Record<string, string>).capability, cap.usable ? 'yes' : 'no');
});

test('capabilities of this process match /proc/self/status', () => {
  const p = probe(report, 'caps-process');
  const s = readStatus('self');
  const v = p.value as { capEff: string; capPrm: string };
  assert.equal(BigInt(v.capEff), s.capEff);
  assert.equal(BigInt(v.capPrm), s.capPrm);
  assert.ok(p.detail.includes(`cap_checkpoint_restore ${hasCap(s.capEff, 40) ? 'effective' : 'no'}`));
});

test('pagemap and soft-dirty agree with an independent probe', () => {
  const pm = probe(report, 'pagemap');
  assert.equal(pm.ok, true, pm.detail);
  const s = readStatus('self');
  // PFNs are shown only with CAP_SYS_ADMIN (in the initial user namespace).
  assert.equal((pm.value as { pfnVisible: boolean }).pfnVisible, hasCap(s.capEff, 21));
  const py = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
  const [present, dirty] = execFileSync(py, ['-c', SOFT_DIRTY_PY], { encoding: 'utf8' }).trim().split(' ');
  assert.equal(present, 'present');
  const sd = probe(report, 'soft-dirty');
  assert.equal(sd.ok, dirty === 'yes', `check says ${sd.detail}; python says ${dirty}`);
  if (dirty !== 'yes') assert.ok(sd.detail.startsWith('not available'), sd.detail);
});

test('userfaultfd, PAGEMAP_SCAN and the tracking method', () => {
  const n = native();
  const u = n.uffdProbe();
  const up = probe(report, 'userfaultfd');
  assert.equal(up.ok, u.ok);
  const wpAsync = u.ok && (u.features & (1n << 15n)) !== 0n;
  const wp = u.ok && (u.features & 1n) !== 0n;
  if (u.ok) assert.equal((up.value as { wpAsync: boolean }).wpAsync, wpAsync);
  const scan = n.pagemapScanProbe().ok;
  assert.equal(probe(report, 'pagemap-scan').ok, scan);
  const sd = probe(report, 'soft-dirty').ok === true;
  const want = sd ? 'soft-dirty' : wp && wpAsync && scan ? 'uffd-wp' : 'page-hash';
  assert.equal(report.tracking.method, want);
  assert.equal(probe(report, 'tracking').value, want);
  // This machine: no soft-dirty, but uffd WP_ASYNC and PAGEMAP_SCAN.
  assert.equal(want, 'uffd-wp');
});

test('vDSO layout matches /proc/self/maps', () => {
  const v = probe(report, 'vdso');
  assert.equal(v.ok, true, v.detail);
  const entries = v.value as Array<{ name: string; start: string; size: number }>;
  const maps = readMaps('self');
  for (const name of ['[vvar]', '[vvar_vclock]', '[vdso]']) {
    const e = entries.find((x) => x.name === name);
    assert.ok(e, `${name} in the report`);
    const m = maps.find((x) => x.path === name)!;
    assert.equal(e.start, `0x${m.start.toString(16)}`);
    assert.equal(e.size, m.end - m.start);
    assert.ok(v.detail.includes(name));
  }
});

test('formatCheck names every probe and mode; the report is plain JSON', () => {
  const text = formatCheck(report);
  for (const p of report.probes) assert.ok(text.includes(p.title), p.title);
  for (const m of report.modes) assert.ok(text.includes(m.mode), m.mode);
  assert.match(text, /^ {2}ok {3}ptrace seize\/interrupt +seized/m);
  assert.match(text, /^ {2}(ok|no) {3}soft-dirty bits +/m);
  assert.ok(text.includes('PID modes:'));
  const json = JSON.stringify(report);
  assert.deepEqual(JSON.parse(json), report);
});

test('a missing helper is reported, not thrown', () => {
  const r = runCheck({ helperPath: '/nonexistent/crest-helper' });
  const h = probe(r, 'helper');
  assert.equal(h.ok, false);
  assert.ok(h.detail.includes('npm ci'));
  assert.equal(probe(r, 'userns').ok, null);
  const u = mode(r, 'userns');
  assert.equal(u.usable, false);
  assert.ok(u.enable?.startsWith('npm ci'));
  // Cycling is crest-pidhelper's work: it is missing too (it sits next to crest-helper).
  assert.equal(mode(r, 'cycle').usable, false);
  assert.ok(mode(r, 'cycle').why.includes('crest-pidhelper'));
  assert.ok(formatCheck(r).includes('not built'));
  JSON.parse(JSON.stringify(r));
});

test('file capabilities: decoding', () => {
  // What `setcap cap_checkpoint_restore+ep` writes: revision 2, effective, bit 40 = high word bit 8.
  const setcap = Buffer.from([0x01, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x01, 0, 0, 0, 0, 0, 0]);
  const d = decodeFileCaps(setcap);
  assert.deepEqual(d, { revision: 2, effective: true, permitted: 1n << 40n, inheritable: 0n });
  assert.deepEqual(encodeFileCaps(d), setcap);
  const v3 = { revision: 3 as const, effective: false, permitted: (1n << 19n) | (1n << 21n), inheritable: 1n, rootid: 1001 };
  assert.deepEqual(decodeFileCaps(encodeFileCaps(v3)), v3);
  const v1 = Buffer.alloc(12);
  v1.writeUInt32LE(0x01000000, 0);
  v1.writeUInt32LE(1 << 19, 4);
  assert.deepEqual(decodeFileCaps(v1), { revision: 1, effective: false, permitted: 1n << 19n, inheritable: 0n });
  assert.throws(() => decodeFileCaps(Buffer.alloc(3)), { code: 'CAPS_PARSE' });
  assert.throws(() => decodeFileCaps(Buffer.from([0, 0, 0, 0x05, 0, 0, 0, 0])), { code: 'CAPS_PARSE' });
  assert.throws(() => decodeFileCaps(setcap.subarray(0, 16)), { code: 'CAPS_PARSE' });
});

test('file capabilities on a real copy of crest-pidhelper (root sets them, anyone reads them)', () => {
  // Only root can run setcap; as another user the decode test above stands in.
  if (!isRoot || !existsSync('/usr/sbin/setcap')) return;
  const dir = mkdtempSync(join(tmpdir(), 'crest-caps-'));
  try {
    const copy = join(dir, 'crest-pidhelper');
    copyFileSync(PIDHELPER, copy);
    execFileSync('/usr/sbin/setcap', ['cap_checkpoint_restore+ep', copy]);
    const r = runCheck({ helperPath: HELPER, pidHelperPath: copy });
    const c = probe(r, 'caps-pidhelper');
    assert.ok(c.detail.includes('cap_checkpoint_restore'), c.detail);
    const v = c.value as { revision: number; effective: boolean; permitted: string };
    assert.equal(v.effective, true);
    assert.equal(BigInt(v.permitted), 1n << 40n);
    const nosuid = (c.value as { nosuid: boolean }).nosuid;
    const cap = mode(r, 'cap');
    assert.equal(cap.usable, true);
    if (!nosuid) assert.ok(cap.why.includes('file capabilities'), cap.why);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('concludeModes: the administrator commands for what blocks a mode', () => {
  const base: ModeFacts = {
    helperPath: '/opt/crest/helper/crest-helper',
    nativeOk: true,
    helperMissing: false,
    helperRan: true,
    helper: { userns: 'ok', mountproc: 'ok', set_tid: 'ok', clone3: 'ok' },
    ptraceOk: true,
    sysctls: {},
    fileCaps: null,
    status: { capEff: 0n, capAmb: 0n, uid: [1000, 1000, 1000, 1000], noNewPrivs: false },
  };
  const m = (f: Partial<ModeFacts>) => Object.fromEntries(concludeModes({ ...base, ...f }).map((x) => [x.mode, x]));
  let r = m({});
  assert.equal(r.userns!.usable, true);
  assert.equal(r.cap!.usable, false);
  assert.equal(r.cap!.enable, 'sudo setcap cap_checkpoint_restore+ep /opt/crest/helper/crest-pidhelper');
  assert.equal(r.cycle!.usable, true);

  const blocked = { helper: { userns: 'EPERM', mountproc: 'EPERM', set_tid: 'EPERM', clone3: 'ok' } };
  r = m({ ...blocked, sysctls: { 'kernel.apparmor_restrict_unprivileged_userns': '1', 'user.max_user_namespaces': '15000' } });
  assert.equal(r.userns!.usable, false);
  assert.equal(r.userns!.enable, 'sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0');
  r = m({ helper: { ...blocked.helper, userns: 'ENOSPC' }, sysctls: { 'user.max_user_namespaces': '0' } });
  assert.equal(r.userns!.enable, 'sudo sysctl -w user.max_user_namespaces=15000');
  r = m({ ...blocked, sysctls: { 'kernel.unprivileged_userns_clone': '0', 'user.max_user_namespaces': '100' } });
  assert.equal(r.userns!.enable, 'sudo sysctl -w kernel.unprivileged_userns_clone=1');
  assert.ok(r.userns!.why.includes('userns EPERM'));
  r = m({ helper: { ...base.helper, set_tid: 'EPERM' } });
  assert.equal(r.userns!.usable, false);
  assert.ok(r.userns!.why.includes('set_tid EPERM'));

  r = m({ ptraceOk: false, ptraceErrno: 'EPERM', yama: '2' });
  for (const k of ['userns', 'cap', 'cycle']) {
    assert.equal(r[k]!.usable, false, k);
    assert.equal(r[k]!.enable, 'sudo sysctl -w kernel.yama.ptrace_scope=1', k);
  }
  assert.ok(r.cycle!.why.includes('EPERM'));

  r = m({ fileCaps: { revision: 2, effective: true, permitted: 1n << 40n, inheritable: 0n } });
  assert.equal(r.cap!.usable, true);
  assert.equal(r.cap!.enable, undefined);
  r = m({ fileCaps: { revision: 2, effective: true, permitted: 1n << 40n, inheritable: 0n }, helperNoSuid: true });
  assert.equal(r.cap!.usable, false);
  assert.ok(r.cap!.why.includes('nosuid'));
  r = m({ fileCaps: { revision: 2, effective: false, permitted: 1n << 40n, inheritable: 0n } });
  assert.equal(r.cap!.usable, false);
  assert.ok(r.cap!.why.includes('effective'));
  r = m({ status: { capEff: 1n << 40n, capAmb: 0n, uid: [0, 0, 0, 0], noNewPrivs: false } });
  assert.equal(r.cap!.usable, true);
  r = m({ status: { capEff: 1n << 40n, capAmb: 0n, uid: [1000, 1000, 1000, 1000], noNewPrivs: false } });
  assert.equal(r.cap!.usable, false);
  assert.ok(r.cap!.why.includes('ambient'));

  r = m({ helperMissing: true, helperRan: false, helper: {} });
  assert.equal(r.userns!.usable, false);
  assert.match(String(r.userns!.enable), /^npm ci/);
  assert.match(String(r.cap!.enable), /^npm ci && sudo setcap/);
});
