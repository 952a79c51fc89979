// Terminals: a job started by `crest run` on a pseudo-terminal is
// checkpointed, and `crest restore` runs on a NEW pseudo-terminal (each is
// driven by test/fixtures/scripts/tty_drive.py, which gives the command its
// own session with the pty as controlling terminal, as a terminal window
// would). The restored job must be on the new terminal, in its foreground
// process group (Ctrl-C reaches it, reading does not stop it), with the line
// settings it had made (echo off), reading what is typed, through its stdin
// and through /dev/tty, which it had opened itself. Judged from outside:
// what the terminal shows, and /proc.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  CREST_CLI,
  PYTHON,
  SCRIPTS_DIR,
  type Proc,
  assertOk,
  assertRefused,
  crest,
  cmdline,
  createGo,
  describeResult,
  dump,
  processAlive,
  registerCleanup,
  restore,
  sleep,
  spawnCrest,
  spawnTracked,
  tmpImageDir,
  tmpWorkDir,
  uniqueName,
  waitForFile,
  withTimeout,
} from '../harness.js';

import { readImage } from '../../src/image/reader.js';
import { canonicalJson } from '../../src/image/canonical.js';

registerCleanup();

const TIMEOUT = 240_000;
const DRIVE = path.join(SCRIPTS_DIR, 'tty_drive.py');

/**
 * The job: echo off on its terminal (as for a password), /dev/tty opened on
 * its own, a SIGINT handler; then each line read from stdin is answered
 * reversed ("got:..." on stdout with whether echo is off, "tty:..." through
 * /dev/tty) until "quit".
 */
const JOB = `import os, signal, sys, termios
w = sys.argv[1]
signal.signal(signal.SIGINT, lambda *a: print('got:SIGINT', flush=True))
a = termios.tcgetattr(0)
a[3] &= ~termios.ECHO
termios.tcsetattr(0, termios.TCSANOW, a)
tty = os.open('/dev/tty', os.O_RDWR | os.O_NOCTTY)
with open(os.path.join(w, 'ready.tmp'), 'w') as f:
    f.write(str(os.getpid()))
os.rename(os.path.join(w, 'ready.tmp'), os.path.join(w, 'ready'))
print('ready', flush=True)
while True:
    line = sys.stdin.readline()
    if not line:
        break
    line = line.strip()
    echo = 'on' if termios.tcgetattr(0)[3] & termios.ECHO else 'off'
    print('got:%s echo=%s' % (line[::-1], echo), flush=True)
    os.write(tty, ('tty:%s\\n' % line[::-1]).encode())
    if line == 'quit':
        break
`;

/** A command running on its own pty through tty_drive.py, and what its terminal shows. */
class Terminal {
  readonly proc: Proc;
  private typed = 0;
  constructor(
    readonly ctl: string,
    argv: readonly string[],
  ) {
    fs.mkdirSync(ctl, { recursive: true });
    this.proc = spawnTracked([PYTHON, DRIVE, ctl, '--', ...argv]);
  }
  /** Everything the terminal showed so far. */
  screen(): string {
    try {
      return fs.readFileSync(path.join(this.ctl, 'out'), 'latin1');
    } catch {
      return '';
    }
  }
  /** Types `text` on the terminal (as keys: "\x03" is Ctrl-C). */
  type(text: string): void {
    this.typed += 1;
    const f = path.join(this.ctl, `in.${this.typed}`);
    fs.writeFileSync(`${f}.tmp`, text, 'latin1');
    fs.renameSync(`${f}.tmp`, f);
  }
  /** Waits until the screen shows `text` (after `from`), failing early when the driver ends. */
  async waitFor(text: string, what: string, timeoutMs = 60_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!this.screen().includes(text)) {
      if (this.proc.result) assert.fail(`${what}: the terminal never showed ${JSON.stringify(text)}; ${this.describe()}`);
      if (Date.now() > end) assert.fail(`${what}: the terminal did not show ${JSON.stringify(text)} within ${timeoutMs} ms; ${this.describe()}`);
      await sleep(20);
    }
  }
  /** The device number of the pty (as stat(2) and /proc/PID/stat's tty_nr give it). */
  rdev(): number {
    return fs.statSync(fs.readFileSync(path.join(this.ctl, 'tty'), 'utf8')).rdev;
  }
  /** The command's exit status, once tty_drive.py has seen it end. */
  async exitStatus(what: string, timeoutMs = 60_000): Promise<number> {
    const f = path.join(this.ctl, 'exit');
    await waitForFile(f, timeoutMs).catch(() => assert.fail(`${what}: the command did not end; ${this.describe()}`));
    return Number(fs.readFileSync(f, 'utf8'));
  }
  describe(): string {
    return `screen:\n${JSON.stringify(this.screen())}\ndriver stderr:\n${this.proc.stderr()}`;
  }
}

interface StatView {
  pgrp: number;
  session: number;
  ttyNr: number;
  tpgid: number;
  state: string;
}

function statOf(pid: number): StatView {
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return { state: f[0]!, pgrp: Number(f[2]), session: Number(f[3]), ttyNr: Number(f[4]), tpgid: Number(f[5]) };
}

/** The host pid of the one live process running `argv` (waits for it). */
async function pidRunning(argv: readonly string[], what: string): Promise<number> {
  const want = argv.join('\0');
  const end = Date.now() + 30_000;
  for (;;) {
    const pids = fs
      .readdirSync('/proc')
      .filter((n) => /^[0-9]+$/.test(n))
      .map(Number)
      .filter((p) => processAlive(p) && cmdline(p).join('\0') === want);
    if (pids.length === 1) return pids[0]!;
    if (Date.now() > end) assert.fail(`${what}: expected one process running ${argv.join(' ')}, found ${JSON.stringify(pids)}`);
    await sleep(20);
  }
}

/** The job is on terminal `t`, in its foreground process group, and not stopped. */
function assertForeground(pid: number, t: Terminal, what: string): StatView {
  const st = statOf(pid);
  assert.equal(st.ttyNr, t.rdev(), `${what}: the job's controlling terminal is not the pty ${fs.readFileSync(path.join(t.ctl, 'tty'), 'utf8')}: ${JSON.stringify(st)}`);
  assert.equal(st.tpgid, st.pgrp, `${what}: the job's process group is not the terminal's foreground group: ${JSON.stringify(st)}`);
  assert.ok(st.state !== 'T' && st.state !== 't', `${what}: the job is stopped: ${JSON.stringify(st)}`);
  return st;
}

test('a job on a terminal: restored onto crest restore\'s terminal, in its foreground, echo still off, reading stdin and /dev/tty', { timeout: TIMEOUT }, async () => {
  const w = tmpWorkDir('tty');
  const script = path.join(w, 'job.py');
  fs.writeFileSync(script, JOB);
  const jobArgv = [PYTHON, script, w];
  const name = uniqueName('tty');

  const a = new Terminal(path.join(w, 'a'), [process.execPath, CREST_CLI, 'run', '--name', name, '--', ...jobArgv]);
  await a.waitFor('ready', 'crest run on the first terminal');
  const pid = await pidRunning(jobArgv, 'the job');
  assertForeground(pid, a, 'under crest run');
  a.type('alpha\n');
  await a.waitFor('got:ahpla echo=off', 'the job reading under crest run');
  await a.waitFor('tty:ahpla', 'the job writing to /dev/tty under crest run');
  assert.ok(!a.screen().includes('alpha'), `the terminal echoed what was typed although the job turned echo off; ${a.describe()}`);

  const img = tmpImageDir('tty');
  assertOk(await dump({ job: name, dir: img }), 'crest dump of the job on a terminal');
  assert.equal(await a.exitStatus('crest run after the dump'), 75, a.describe());
  // The image holds the terminal (echo off, in the foreground) and re-encodes to its bytes.
  const m = readImage(img);
  assert.equal(canonicalJson(m), fs.readFileSync(path.join(img, 'manifest.json'), 'utf8'), 'the manifest does not re-encode to its bytes');
  const files = m.processes[0]!.files;
  const stdin = files.find((f) => f.kind === 'stdio' && f.stream === 0);
  const devtty = files.find((f) => f.kind === 'tty');
  assert.ok(stdin?.kind === 'stdio' && stdin.terminal && (stdin.terminal.lflag & 0o10) === 0 && stdin.terminal.foreground, JSON.stringify(files));
  assert.ok(devtty?.kind === 'tty' && devtty.was === '/dev/tty' && devtty.terminal.foreground, JSON.stringify(files));
  const shown = await crest(['show', '-D', img]);
  assertOk(shown, 'crest show');
  assert.match(shown.stdout, /tty: its terminal again, as \/dev\/tty \(was \/dev\/tty\).*terminal -echo icanon isig  foreground/);

  // A new terminal, as a new window would be.
  const b = new Terminal(path.join(w, 'b'), [process.execPath, CREST_CLI, 'restore', '-D', img]);
  const restored = await pidRunning(jobArgv, 'the restored job');
  assert.notEqual(b.rdev(), 0);
  // crest restore is the session leader of the new terminal, in its foreground group: the job is in both.
  const crestPid = await pidRunning([process.execPath, CREST_CLI, 'restore', '-D', img], 'crest restore');
  const st = statOf(restored);
  const crestSt = statOf(crestPid);
  assert.deepEqual([st.session, st.pgrp], [crestSt.session, crestSt.pgrp], 'the job is not in crest restore\'s session and process group');

  b.type('bravo\n');
  await b.waitFor('got:ovarb echo=off', 'the restored job reading its new terminal');
  await b.waitFor('tty:ovarb', 'the restored job writing through /dev/tty');
  assert.ok(!b.screen().includes('bravo'), `the new terminal echoed what was typed: the job's terminal settings (echo off) were not given to it; ${b.describe()}`);
  assertForeground(restored, b, 'after restore');
  // Ctrl-C on the terminal goes to its foreground process group: the job's handler answers.
  b.type('\x03');
  await b.waitFor('got:SIGINT', 'Ctrl-C on the new terminal');
  b.type('charlie\n');
  await b.waitFor('got:eilrahc echo=off', 'the restored job reading after Ctrl-C');
  assert.ok(!b.screen().includes('crest: warning'), `crest restore warned; ${b.describe()}`);
  b.type('quit\n');
  assert.equal(await b.exitStatus('crest restore after quit'), 0, b.describe());
  await withTimeout(b.proc.exited, 30_000, 'tty_drive of crest restore');

  // Without a terminal (no controlling one: the harness starts crest in a
  // session of its own), the job's /dev/tty cannot come back: refused.
  const r = await restore(img);
  assertRefused(r, 'restore of a job that had /dev/tty open, without a terminal', /had its terminal open \(\/dev\/tty\).*no controlling terminal/);
});

test('a job started on a terminal, restored without one: its streams become crest restore\'s, with a warning', { timeout: TIMEOUT }, async () => {
  const w = tmpWorkDir('tty-pipe');
  const script = path.join(w, 'job.py');
  // The same job without /dev/tty: it reads stdin, which will be a pipe.
  fs.writeFileSync(script, JOB.replace("tty = os.open('/dev/tty', os.O_RDWR | os.O_NOCTTY)", 'tty = 1'));
  const jobArgv = [PYTHON, script, w];
  const name = uniqueName('tty-pipe');
  const a = new Terminal(path.join(w, 'a'), [process.execPath, CREST_CLI, 'run', '--name', name, '--', ...jobArgv]);
  await a.waitFor('ready', 'crest run on the terminal');
  const img = tmpImageDir('tty-pipe');
  assertOk(await dump({ job: name, dir: img }), 'crest dump');
  assert.equal(await a.exitStatus('crest run after the dump'), 75, a.describe());

  const rs = spawnCrest(['restore', '-D', img]);
  // spawnCrest gives crest restore no stdin (/dev/null): the job reads end-of-file and ends.
  const fin = await withTimeout(rs.exited, 60_000, 'crest restore without a terminal');
  assert.equal(fin.code, 0, describeResult('crest restore without a terminal', fin));
  assert.match(fin.stderr, /crest: warning: the job's stdin \(\/dev\/pts\/\d+\) was a terminal, but crest restore's is not/, describeResult('the warning', fin));
});

test('a terminal other than the job\'s own (a pty it made) is refused; the job runs on', { timeout: TIMEOUT }, async () => {
  const w = tmpWorkDir('tty-other');
  const script = path.join(w, 'pty.py');
  fs.writeFileSync(
    script,
    `import os, sys, time
w = sys.argv[1]
master, slave = os.openpty()
open(os.path.join(w, 'ready'), 'w').write(str(os.getpid()))
while not os.path.exists(os.path.join(w, 'go')):
    time.sleep(0.01)
print('PASS pty')
`,
  );
  const name = uniqueName('tty-other');
  const run = spawnCrest(['run', '--name', name, '--', PYTHON, script, w]);
  await waitForFile(path.join(w, 'ready'), 60_000, run);
  const r = await dump({ job: name, dir: tmpImageDir('tty-other') });
  assertRefused(r, 'dump of a job holding a pty of its own', /fd \d+ \(terminal\): pseudo-terminal master \/dev\/ptmx is not supported yet/);
  createGo(w);
  const fin = await withTimeout(run.exited, 60_000, 'the job after the refused dump');
  assert.ok(fin.code === 0 && fin.stdout.includes('PASS pty'), describeResult('the job after the refused dump', fin));
});

/**
 * A shell's job control in miniature: runs ARGV in a process group of its
 * own, in the background of the terminal; when FG appears, gives it the
 * foreground and continues it (what `fg` does); exits with its status.
 */
const SHELL = `import os, signal, sys, time
fg, argv = sys.argv[1], sys.argv[3:]
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    os.execvp(argv[0], argv)
os.setpgid(pid, pid)
while not os.path.exists(fg):
    time.sleep(0.02)
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
os.tcsetpgrp(0, pid)
os.killpg(pid, signal.SIGCONT)
_, st = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(st))
`;

test('crest restore in the background of its terminal: the job too (warned, settings left alone) until fg', { timeout: TIMEOUT }, async () => {
  const w = tmpWorkDir('tty-bg');
  const script = path.join(w, 'job.py');
  fs.writeFileSync(script, JOB);
  const shell = path.join(w, 'shell.py');
  fs.writeFileSync(shell, SHELL);
  const jobArgv = [PYTHON, script, w];
  const name = uniqueName('tty-bg');
  const a = new Terminal(path.join(w, 'a'), [process.execPath, CREST_CLI, 'run', '--name', name, '--', ...jobArgv]);
  await a.waitFor('ready', 'crest run on the first terminal');
  const img = tmpImageDir('tty-bg');
  assertOk(await dump({ job: name, dir: img }), 'crest dump');
  assert.equal(await a.exitStatus('crest run after the dump'), 75, a.describe());

  const fg = path.join(w, 'fg');
  const b = new Terminal(path.join(w, 'b'), [PYTHON, shell, fg, '--', process.execPath, CREST_CLI, 'restore', '-D', img]);
  const restored = await pidRunning(jobArgv, 'the restored job');
  // Reading its terminal from the background stops it (SIGTTIN), as it would
  // any background job, and the rest of its process group with it: crest
  // restore may be stopped before it has printed its warning.
  const end = Date.now() + 30_000;
  let st = statOf(restored);
  while (st.state !== 'T' && Date.now() < end) {
    await sleep(20);
    st = statOf(restored);
  }
  assert.equal(st.state, 'T', `the job in the background is not stopped by reading its terminal: ${JSON.stringify(st)}`);
  assert.notEqual(st.tpgid, st.pgrp);
  fs.writeFileSync(fg, '');
  await b.waitFor('crest: warning: crest restore runs in the background of its terminal, so the job does too (it was in the foreground when checkpointed)', 'the warning');
  b.type('delta\n');
  // Its settings were not forced on the terminal behind the shell's back: echo is on there.
  await b.waitFor('got:atled echo=on', 'the job brought to the foreground');
  assert.match(b.screen(), /delta\r?\n/, 'the terminal did not echo although its settings were left alone');
  assertForeground(restored, b, 'after fg');
  b.type('quit\n');
  assert.equal(await b.exitStatus('the shell after quit'), 0, b.describe());
});

