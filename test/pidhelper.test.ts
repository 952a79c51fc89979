// Tests for crest-pidhelper (helper/crest-pidhelper.c), the binary an
// administrator may give CAP_CHECKPOINT_RESTORE: bad input of every kind,
// a taken PID, running without the capability, and (when it holds the
// capability, as in CI) husks with chosen PIDs and TIDs that keep no
// capability in any thread. The cycle verb needs no privilege and runs
// everywhere. Passes as root and as an ordinary user.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const PIDHELPER = fileURLToPath(new URL('../../helper/crest-pidhelper', import.meta.url));
const IS_ROOT = process.geteuid!() === 0;
const PID_MAX = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8').trim());
const TIMEOUT = 60_000;

interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ctl: string;
}

interface Running {
  pid: number;
  ctl: () => string;
  waitCtl: (re: RegExp, ms?: number) => Promise<RegExpMatchArray>;
  kill: (sig: NodeJS.Signals) => void;
  done: Promise<Result>;
}

/**
 * Starts `argv` (crest-pidhelper by default) with a pipe at fd 3 for the
 * ctl lines; `leak` adds a pipe at fd 4 that nothing of the helper's should
 * keep, `env` replaces the environment.
 */
function start(args: string[], prefix: string[] = [PIDHELPER], opts: { leak?: boolean; env?: NodeJS.ProcessEnv } = {}): Running {
  const argv = [...prefix, ...args];
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe', 'pipe', ...(opts.leak ? (['pipe'] as const) : [])], env: opts.env ?? process.env });
  let out = '';
  let err = '';
  let ctl = '';
  const pokes: Array<() => void> = [];
  const poke = (): void => void pokes.splice(0).forEach((p) => p());
  child.stdout!.setEncoding('utf8').on('data', (d: string) => ((out += d), poke()));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => ((err += d), poke()));
  const c = child.stdio[3] as NodeJS.ReadableStream;
  c.setEncoding('utf8');
  c.on('data', (d: string) => ((ctl += d), poke()));
  let finished = false;
  const done = new Promise<Result>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      finished = true;
      poke();
      resolve({ code, signal, stdout: out, stderr: err, ctl });
    });
  });
  return {
    pid: child.pid!,
    ctl: () => ctl,
    waitCtl: (re, ms = 15_000) =>
      new Promise((resolve, reject) => {
        const end = Date.now() + ms;
        const check = (): void => {
          const m = ctl.match(re);
          if (m) return resolve(m);
          if (finished || Date.now() > end) return reject(new Error(`ctl never matched ${re}: ${JSON.stringify(ctl)}; stderr ${JSON.stringify(err)}`));
          pokes.push(check);
          setTimeout(poke, 100).unref();
        };
        check();
      }),
    kill: (sig) => {
      try {
        child.kill(sig);
      } catch {
        /* gone */
      }
    },
    done,
  };
}

function run(args: string[], prefix?: string[]): Promise<Result> {
  return start(args, prefix).done;
}

function probe(path = PIDHELPER, prefix: string[] = []): Record<string, string> {
  const argv = [...prefix, path, 'probe'];
  const out = execFileSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
  return Object.fromEntries(out.trim().split('\n').map((l) => l.split(' ') as [string, string]));
}

/** `count` consecutive IDs, none used now, well inside 300..pid_max. */
function freeIds(count: number): number[] {
  for (let tries = 0; tries < 1000; tries++) {
    const base = 1000 + Math.floor(Math.random() * (PID_MAX - 2000));
    const ids = Array.from({ length: count }, (_, i) => base + i * 7);
    if (ids.every((id) => !existsSync(`/proc/${id}`))) return ids;
  }
  throw new Error('no free IDs found');
}

function status(pid: number, tid = pid): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8').split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  return out;
}

/** Everything a husk must be once reported: our uid, the IDs asked for, no capability in any thread, parked, fds 0-2, traceable. */
function assertHusk(pid: number, tids: number[]): void {
  const tasks = readdirSync(`/proc/${pid}/task`).map(Number).sort((a, b) => a - b);
  assert.deepEqual(tasks, [pid, ...tids].sort((a, b) => a - b), 'the husk has exactly the asked-for threads');
  for (const t of tasks) {
    const s = status(pid, t);
    assert.equal(s.Uid, Array(4).fill(process.getuid!()).join('\t'));
    for (const k of ['CapInh', 'CapPrm', 'CapEff', 'CapAmb']) assert.equal(BigInt(`0x${s[k]}`), 0n, `thread ${t}: ${k} ${s[k]}`);
    assert.equal(readFileSync(`/proc/${pid}/task/${t}/syscall`, 'utf8').split(' ')[0], '34', `thread ${t} is parked in pause()`);
  }
  assert.deepEqual(readdirSync(`/proc/${pid}/fd`).map(Number).sort(), [0, 1, 2], 'the husk holds fds 0-2 only');
  // Dumpable again: /proc/PID is ours, not root's (an exec with file capabilities made it root's).
  assert.equal(statSync(`/proc/${pid}/fd`).uid, process.getuid!());
}

const capable = probe().capability === 'yes';

describe('crest-pidhelper: what it refuses', () => {
  const usage: Array<[string, string[], RegExp]> = [
    ['no verb', [], /missing verb/],
    ['unknown verb', ['exec', '--ctl', '3', '--pid', '1000'], /unknown verb 'exec'/],
    ['missing --ctl', ['husk', '--pid', '1000'], /--ctl FD is required/],
    ['--ctl 1', ['husk', '--ctl', '1', '--pid', '1000'], /--ctl 1: must be 3 or more/],
    ['--ctl not open', ['husk', '--ctl', '77', '--pid', '1000'], /--ctl 77: not an open file descriptor/],
    ['missing --pid', ['husk', '--ctl', '3'], /--pid PID is required/],
    ['--pid 1', ['husk', '--ctl', '3', '--pid', '1'], /--pid 1: must be between 300 and 4194304/],
    ['--pid 299', ['cycle', '--ctl', '3', '--pid', '299'], /--pid 299: must be between 300/],
    ['--pid too big', ['husk', '--ctl', '3', '--pid', '4194305'], /--pid 4194305: must be between/],
    ['--pid 0x400', ['husk', '--ctl', '3', '--pid', '0x400'], /--pid '0x400': not a decimal number/],
    ['--pid -5', ['husk', '--ctl', '3', '--pid', '-5'], /not a decimal number/],
    ['--pid " 500"', ['husk', '--ctl', '3', '--pid', ' 500'], /not a decimal number/],
    ['a second --pid without its parent', ['husk', '--ctl', '3', '--pid', '1000', '--pid', '1001'], /--pid 1001: every --pid after the first names its parent/],
    ['the same --pid twice', ['husk', '--ctl', '3', '--pid', '1000', '--pid', '1000:1000'], /--pid 1000: given twice/],
    ['the first --pid with a parent', ['husk', '--ctl', '3', '--pid', '1000:1001'], /the first --pid is the top of the tree/],
    ['a parent that is not an earlier --pid', ['cycle', '--ctl', '3', '--pid', '1000', '--pid', '1001:1002', '--pid', '1002:1000'], /--pid 1001:1002: parent 1002 is not an earlier --pid/],
    ['a malformed parent', ['husk', '--ctl', '3', '--pid', '1000', '--pid', '1001:x'], /--pid PARENT 'x': not a decimal number/],
    ['a parent out of range', ['husk', '--ctl', '3', '--pid', '1000', '--pid', '1001:5'], /--pid PARENT 5: must be between 300/],
    ['an empty parent', ['husk', '--ctl', '3', '--pid', '1000', '--pid', '1001:'], /--pid PARENT '': not a decimal number/],
    ['a --tid before any --pid', ['husk', '--ctl', '3', '--tid', '1000', '--pid', '1001'], /--tid 1000 before any --pid/],
    ['--setsid before any --pid', ['husk', '--ctl', '3', '--setsid', '--pid', '1000'], /--setsid before any --pid/],
    ['--setsid twice', ['husk', '--ctl', '3', '--pid', '1000', '--setsid', '--setsid'], /--setsid given twice for --pid 1000/],
    ['a --tid equal to another process\'s --pid', ['husk', '--ctl', '3', '--pid', '1000', '--pid', '1001:1000', '--tid', '1000'], /--tid 1000: the same as a --pid/],
    ['513 processes', ['husk', '--ctl', '3', '--pid', '1000', ...Array.from({ length: 512 }, (_, i) => ['--pid', `${2000 + i}:1000`]).flat()], /more than 512 --pid/],
    ['4097 threads', ['husk', '--ctl', '3', '--pid', '1000', ...Array.from({ length: 4097 }, (_, i) => ['--tid', String(10_000 + i)]).flat()], /more than 4096 --tid/],
    ['--tid out of range', ['husk', '--ctl', '3', '--pid', '1000', '--tid', '12'], /--tid 12: must be between 300/],
    ['duplicate --tid', ['husk', '--ctl', '3', '--pid', '1000', '--tid', '1001', '--tid', '1001'], /--tid 1001: given twice/],
    ['--tid same as --pid', ['cycle', '--ctl', '3', '--pid', '1000', '--tid', '1000'], /--tid 1000: the same as a --pid/],
    ['--within for husk', ['husk', '--ctl', '3', '--pid', '1000', '--within', '100'], /--within is for cycle only/],
    ['--within 0', ['cycle', '--ctl', '3', '--pid', '1000', '--within', '0'], /--within '0': milliseconds/],
    ['a value missing', ['cycle', '--ctl', '3', '--pid'], /--pid needs a value/],
    ['an extra argument', ['husk', '--ctl', '3', '--pid', '1000', '--', 'sh'], /unexpected argument '--'/],
    ['probe with arguments', ['probe', 'x'], /probe takes no arguments/],
  ];
  for (const [what, args, re] of usage) {
    test(`usage error: ${what}`, async () => {
      const r = await run(args);
      assert.equal(r.code, 2, `${what}: ${JSON.stringify(r)}`);
      assert.match(r.stderr, re);
      assert.match(r.stderr, /usage: crest-pidhelper/);
      assert.equal(r.ctl, '', 'nothing on the ctl pipe for a usage error');
    });
  }

  test('--help', async () => {
    const r = await run(['--help']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /crest-pidhelper husk {2}--ctl FD --pid PID/);
  });

  test('a taken PID: EEXIST on the ctl pipe, exit 3, a clear message (cycle)', { timeout: TIMEOUT }, async () => {
    const r = await run(['cycle', '--ctl', '3', '--pid', String(process.pid)]);
    assert.equal(r.code, 3, JSON.stringify(r));
    assert.equal(r.ctl, `error ${process.pid} EEXIST\n`);
    assert.match(r.stderr, new RegExp(`cannot create process ${process.pid}: File exists`));
  });

  test('a taken thread ID: EEXIST naming that ID (cycle)', { timeout: TIMEOUT }, async () => {
    const [pid] = freeIds(1);
    const r = await run(['cycle', '--ctl', '3', '--pid', String(pid), '--tid', String(process.pid)]);
    assert.equal(r.code, 3, JSON.stringify(r));
    assert.match(r.ctl, new RegExp(`^(husk|error) `));
    assert.match(r.ctl, new RegExp(`error ${process.pid} EEXIST\\n$`));
    assert.match(r.stderr, new RegExp(`cannot create thread ${process.pid}: File exists`));
    assert.ok(!existsSync(`/proc/${pid}`) || !readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes('crest-pidhelper'), 'the half-made husk is gone');
  });

  test('an ID beyond pid_max: EINVAL (cycle)', async () => {
    if (PID_MAX >= 4194304) return; // nothing lies beyond
    const r = await run(['cycle', '--ctl', '3', '--pid', String(PID_MAX)]);
    assert.equal(r.code, 3);
    assert.equal(r.ctl, `error ${PID_MAX} EINVAL\n`);
    assert.match(r.stderr, /beyond pid_max/);
  });

  test('cycling that cannot finish in time: ETIMEDOUT', { timeout: TIMEOUT }, async () => {
    // The PID just below the counter needs a whole wrap: more than 1 ms.
    const last = Number(readFileSync('/proc/sys/kernel/ns_last_pid', 'utf8'));
    let want = last - 5;
    while (existsSync(`/proc/${want}`) || want < 300) want = want < 300 ? PID_MAX - 100 : want - 1;
    const r = await run(['cycle', '--ctl', '3', '--pid', String(want), '--within', '1']);
    assert.equal(r.code, 3, JSON.stringify(r));
    assert.equal(r.ctl, `error ${want} ETIMEDOUT\n`);
    assert.match(r.stderr, /timed out/i);
  });

  test('without the capability: a clear refusal naming the setcap command', async () => {
    // A copy carries no file capabilities; root is made to run it without
    // any (an empty bounding set) to stand in for an ordinary user.
    const dir = mkdtempSync(join(tmpdir(), 'crest-pidhelper-'));
    try {
      const copy = join(dir, 'crest-pidhelper');
      copyFileSync(PIDHELPER, copy);
      chmodSync(dir, 0o755);
      const prefix = IS_ROOT ? ['setpriv', '--bounding-set', '-all', '--inh-caps', '-all', '--', copy] : [copy];
      const [pid] = freeIds(1);
      const r = await run(['husk', '--ctl', '3', '--pid', String(pid)], prefix);
      assert.equal(r.code, 4, JSON.stringify(r));
      assert.equal(r.ctl, `error ${pid} EPERM\n`);
      assert.match(r.stderr, /does not hold CAP_CHECKPOINT_RESTORE/);
      assert.ok(r.stderr.includes(`sudo setcap cap_checkpoint_restore+ep ${copy}`), r.stderr);
      assert.ok(!existsSync(`/proc/${pid}`), 'no process was made');
      assert.deepEqual(probe(copy, IS_ROOT ? ['setpriv', '--bounding-set', '-all', '--inh-caps', '-all', '--'] : []), { capability: 'no', set_tid: 'EPERM', pidns: 'ok' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a binary with file capabilities that root does not own refuses to run', async () => {
    if (!IS_ROOT) return; // only root can set file capabilities
    const dir = mkdtempSync(join(tmpdir(), 'crest-pidhelper-'));
    try {
      const copy = join(dir, 'crest-pidhelper');
      copyFileSync(PIDHELPER, copy);
      chownSync(copy, 65534, 65534);
      execFileSync('/usr/sbin/setcap', ['cap_checkpoint_restore+ep', copy]);
      const [pid] = freeIds(1);
      const r = await run(['husk', '--ctl', '3', '--pid', String(pid)], [copy]);
      assert.equal(r.code, 4, JSON.stringify(r));
      assert.match(r.stderr, /refused: this binary carries file capabilities but is not owned by root/);
      chownSync(copy, 0, 0); // chown drops file capabilities: set them again, group-writable
      chmodSync(copy, 0o775);
      execFileSync('/usr/sbin/setcap', ['cap_checkpoint_restore+ep', copy]);
      const w = await run(['probe'], [copy]);
      assert.equal(w.code, 4, JSON.stringify(w));
      assert.match(w.stderr, /writable by group or others/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('mixed real and effective ids are refused', async () => {
    if (!IS_ROOT) return; // making them differ needs root
    const [pid] = freeIds(1);
    const r = await run(['husk', '--ctl', '3', '--pid', String(pid)], ['setpriv', '--euid', '65534', '--', PIDHELPER]);
    assert.equal(r.code, 4, JSON.stringify(r));
    assert.match(r.stderr, /real, effective and saved user and group ids differ/);
  });
});

describe('crest-pidhelper: husks', () => {
  test('probe agrees with the capability this process passes on or the file carries', () => {
    const p = probe();
    assert.deepEqual(Object.keys(p).sort(), ['capability', 'pidns', 'set_tid']);
    assert.equal(p.pidns, 'ok');
    assert.equal(p.set_tid, p.capability === 'yes' ? 'ok' : 'EPERM');
    if (IS_ROOT) assert.equal(p.capability, 'yes');
  });

  test('CI gives crest-pidhelper the capability (.ci/run), so the cap mode is tested there', () => {
    if (process.env.CI === 'true' && !capable) {
      assert.fail(`CI=true but ${PIDHELPER} lacks CAP_CHECKPOINT_RESTORE: .ci/run must chown root and setcap cap_checkpoint_restore+ep it after npm ci and before npm test`);
    }
  });

  test('husk: the chosen PID and TIDs, no capability anywhere, parked; a forwarded signal ends it', { timeout: TIMEOUT }, async (t) => {
    if (!capable) {
      t.skip('crest-pidhelper does not hold CAP_CHECKPOINT_RESTORE here');
      return;
    }
    const [pid, ...tids] = freeIds(4);
    const h = start(['husk', '--ctl', '3', '--pid', String(pid!), ...tids.flatMap((x) => ['--tid', String(x)])]);
    await h.waitCtl(/ready\n/);
    assert.equal(h.ctl(), `husk ${pid}\n${tids.map((x) => `thread ${x}\n`).join('')}ready\n`);
    assertHusk(pid!, tids);
    assert.equal(Number(status(pid!).PPid), h.pid, "the husk is the helper's child");
    // The helper itself keeps no capability while it waits.
    for (const k of ['CapPrm', 'CapEff']) assert.equal(BigInt(`0x${status(h.pid)[k]}`), 0n, `helper ${k}`);
    h.kill('SIGTERM');
    const r = await h.done;
    assert.match(r.ctl, /exit 15\n$/);
    assert.equal(r.signal, 'SIGTERM');
  });

  test('husk: a taken PID is EEXIST, a taken TID names the TID', { timeout: TIMEOUT }, async (t) => {
    if (!capable) {
      t.skip('crest-pidhelper does not hold CAP_CHECKPOINT_RESTORE here');
      return;
    }
    let r = await run(['husk', '--ctl', '3', '--pid', String(process.pid)]);
    assert.equal(r.code, 3);
    assert.equal(r.ctl, `error ${process.pid} EEXIST\n`);
    assert.match(r.stderr, /cannot create process \d+: File exists/);
    const [pid] = freeIds(1);
    r = await run(['husk', '--ctl', '3', '--pid', String(pid), '--tid', String(process.pid)]);
    assert.equal(r.code, 3);
    assert.equal(r.ctl, `error ${process.pid} EEXIST\n`);
    assert.match(r.stderr, /cannot create thread \d+: File exists/);
    if (PID_MAX < 4194304) {
      r = await run(['husk', '--ctl', '3', '--pid', String(PID_MAX + 1)]);
      assert.equal(r.ctl, `error ${PID_MAX + 1} EINVAL\n`);
    }
  });

  test('husk: a tree (a parent, a child leading its session, a grandchild), each with its IDs, parent and session; no inherited fd, LD_PRELOAD ignored; the tree dies with its top', { timeout: TIMEOUT }, async (t) => {
    if (!capable) {
      t.skip('crest-pidhelper does not hold CAP_CHECKPOINT_RESTORE here');
      return;
    }
    const [top, topTid, kid, kidTid, grand] = freeIds(5) as [number, number, number, number, number];
    const args = ['husk', '--ctl', '3', '--pid', String(top), '--tid', String(topTid), '--pid', `${kid}:${top}`, '--setsid', '--tid', String(kidTid), '--pid', `${grand}:${kid}`];
    const h = start(args, [PIDHELPER], { leak: true, env: { ...process.env, LD_PRELOAD: '/nonexistent/crest-evil.so', LD_LIBRARY_PATH: '/nonexistent' } });
    await h.waitCtl(/ready\n|error/);
    assert.equal(h.ctl(), `husk ${top}\nhusk ${kid}\nhusk ${grand}\nthread ${topTid}\nthread ${kidTid}\nready\n`);
    assertHusk(top, [topTid]);
    assertHusk(kid, [kidTid]);
    assertHusk(grand, []);
    const ids = (pid: number): { ppid: number; sid: number } => {
      const f = readFileSync(`/proc/${pid}/stat`, 'latin1').split(') ')[1]!.split(' ');
      return { ppid: Number(f[1]), sid: Number(f[3]) };
    };
    assert.deepEqual(ids(top), { ppid: h.pid, sid: ids(h.pid).sid }, 'the top husk: the helper\'s child, in its session');
    assert.deepEqual(ids(kid), { ppid: top, sid: kid }, 'the child: the top husk\'s child, leading its own session (--setsid)');
    assert.deepEqual(ids(grand), { ppid: kid, sid: kid }, 'the grandchild: in the session its parent made before creating it');
    assert.equal(h.ctl().includes('error'), false);
    assert.doesNotMatch(h.ctl() + readFileSync(`/proc/${top}/status`, 'utf8'), /ld\.so|crest-evil/);
    // The helper passes SIGTERM to the top husk; its children go with it (PR_SET_PDEATHSIG).
    h.kill('SIGTERM');
    const r = await h.done;
    assert.equal(r.signal, 'SIGTERM');
    assert.doesNotMatch(r.stderr, /ld\.so|crest-evil|ERROR/);
    for (const pid of [top, kid, grand]) {
      const end = Date.now() + 5000;
      while (existsSync(`/proc/${pid}`) && !readFileSync(`/proc/${pid}/stat`, 'latin1').includes(') Z') && Date.now() < end) await new Promise((res) => setTimeout(res, 20));
      assert.ok(!existsSync(`/proc/${pid}`) || readFileSync(`/proc/${pid}/stat`, 'latin1').includes(') Z'), `husk ${pid} outlived the tree's top`);
    }
  });

  test('husk: a tree whose child PID is taken: EEXIST naming it, and nothing of the tree is left', { timeout: TIMEOUT }, async (t) => {
    if (!capable) {
      t.skip('crest-pidhelper does not hold CAP_CHECKPOINT_RESTORE here');
      return;
    }
    const [top, other] = freeIds(2) as [number, number];
    const r = await run(['husk', '--ctl', '3', '--pid', String(top), '--pid', `${other}:${top}`, '--pid', `${process.pid}:${top}`]);
    assert.equal(r.code, 3, JSON.stringify(r));
    assert.equal(r.ctl, `error ${process.pid} EEXIST\n`);
    assert.match(r.stderr, new RegExp(`cannot create process ${process.pid}: File exists`));
    await new Promise((res) => setTimeout(res, 200));
    for (const pid of [top, other]) {
      assert.ok(!existsSync(`/proc/${pid}`) || !readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes('crest-pidhelper'), `husk ${pid} was left behind`);
    }
  });

  test('cycle: the chosen PID and TIDs by using up IDs, reported with the count', { timeout: TIMEOUT }, async () => {
    const [pid, ...tids] = freeIds(3);
    const h = start(['cycle', '--ctl', '3', '--pid', String(pid!), ...tids.flatMap((x) => ['--tid', String(x)]), '--within', '40000']);
    await h.waitCtl(/ready\n|error/, 50_000);
    const m = /^husk (\d+)\n(?:thread \d+\n)*cycled (\d+) (\d+)\nready\n$/.exec(h.ctl());
    assert.ok(m, h.ctl());
    assert.equal(Number(m[1]), pid);
    assert.ok(Number(m[2]) > 0 && Number(m[3]) > 0, h.ctl());
    assertHusk(pid!, tids);
    // The helper passes the signal on; the husk ends, and so does the helper, the same way.
    h.kill('SIGTERM');
    const r = await h.done;
    assert.equal(r.signal, 'SIGTERM');
    assert.ok(!existsSync(`/proc/${pid}`) || readFileSync(`/proc/${pid}/stat`, 'latin1').includes(') Z'), 'the husk is gone');
  });
});
