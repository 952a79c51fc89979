// Tests for the namespace helper (helper/crest-helper.c) with real processes.
//
// The helper must work for an ordinary user as well as for root; every test
// here compares against this process's own uid so it passes as either.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const HELPER = fileURLToPath(new URL('../../helper/crest-helper', import.meta.url));
const PAUSE_SYSCALL = 34; // x86_64 __NR_pause
const TIMEOUT = 15_000;

interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ctl: string;
}

interface Running {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  ctl: () => string;
  /** Resolves with the ctl text once it matches `re`. */
  waitCtl: (re: RegExp) => Promise<RegExpMatchArray>;
  /** Resolves with the stdout text once it matches `re`. */
  waitStdout: (re: RegExp) => Promise<RegExpMatchArray>;
  done: Promise<Result>;
}

/** Start the helper with fd 3 as the ctl pipe (stdin a pipe too),
 *  optionally through a wrapper command that execs it. */
function start(args: string[], wrapper: string[] = []): Running {
  const argv = [...wrapper, HELPER, ...args];
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let ctl = '';
  const waiters: Array<() => void> = [];
  const poke = () => waiters.splice(0).forEach((w) => w());
  child.stdout!.setEncoding('utf8').on('data', (d: string) => ((out += d), poke()));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => ((err += d), poke()));
  const ctlStream = child.stdio[3] as NodeJS.ReadableStream;
  ctlStream.setEncoding('utf8');
  ctlStream.on('data', (d: string) => ((ctl += d), poke()));
  const ctlEnd = new Promise<void>((res) => ctlStream.on('end', () => res()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res, rej) => {
    child.on('error', rej);
    child.on('close', (code, signal) => res({ code, signal }));
  });
  const done = (async () => {
    const { code, signal } = await exited;
    await ctlEnd;
    poke();
    return { code, signal, stdout: out, stderr: err, ctl };
  })();
  let finished = false;
  void done.then(() => ((finished = true), poke()), () => ((finished = true), poke()));
  const waitFor = (get: () => string, what: string) => (re: RegExp) =>
    new Promise<RegExpMatchArray>((resolve, reject) => {
      const check = () => {
        const m = get().match(re);
        if (m) return resolve(m);
        if (finished) {
          return reject(new Error(`${what} never matched ${re}: ${JSON.stringify(get())}; stderr ${JSON.stringify(err)}`));
        }
        waiters.push(check);
      };
      check();
    });
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    ctl: () => ctl,
    waitCtl: waitFor(() => ctl, 'ctl'),
    waitStdout: waitFor(() => out, 'stdout'),
    done,
  };
}

/** Run the helper to completion. */
function run(args: string[], wrapper: string[] = []): Promise<Result> {
  const r = start(args, wrapper);
  r.child.stdin!.end();
  return r.done;
}

function status(pid: number): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) m.set(line.slice(0, i), line.slice(i + 1).trim());
  }
  return m;
}

/** PID in the innermost pid namespace (last NSpid field). */
function innerPid(pid: number): number {
  const f = status(pid).get('NSpid')!.split(/\s+/);
  return Number(f[f.length - 1]);
}

function ppid(pid: number): number {
  return Number(status(pid).get('PPid'));
}

async function eventually(what: string, check: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const uid = process.geteuid!();

describe('crest-helper', { timeout: TIMEOUT }, () => {
  test('the binary is built', () => {
    assert.ok(existsSync(HELPER), `${HELPER} missing: run make -C helper`);
  });

  describe('run', () => {
    test('job is PID 2 with the caller uid mapped to itself', async () => {
      const r = await run(['run', '--', 'sh', '-c', 'echo $$; cat /proc/self/uid_map; id -u']);
      assert.equal(r.stderr, '');
      assert.equal(r.code, 0);
      const lines = r.stdout.trimEnd().split('\n');
      assert.equal(lines.length, 3, r.stdout);
      assert.equal(lines[0], '2');
      assert.deepEqual(lines[1]!.trim().split(/\s+/), [String(uid), String(uid), '1']);
      assert.equal(lines[2], String(uid));
    });

    test('the job sees a fresh /proc of its own pid namespace', async () => {
      const r = await run(['run', '--', 'sh', '-c', 'ls /proc | grep -E "^[0-9]+$" | sort -n']);
      assert.equal(r.code, 0);
      const pids = r.stdout.trim().split('\n').map(Number);
      assert.deepEqual(pids.slice(0, 2), [1, 2]);
      assert.ok(pids.every((p) => p < 100), r.stdout);
    });

    test('exit code propagates', async () => {
      const r = await run(['run', '--', 'sh', '-c', 'exit 7']);
      assert.equal(r.code, 7);
      assert.equal(r.signal, null);
    });

    test('death by signal propagates', async () => {
      const r = await run(['run', '--ctl', '3', '--', 'sh', '-c', 'kill -TERM $$']);
      assert.equal(r.signal, 'SIGTERM');
      assert.equal(r.code, null);
      assert.match(r.ctl, /^started \d+ \d+\nexit 15\n$/);
    });

    test('ctl reports started/exit; the job inherits only fds 0-2', async () => {
      const h = start(['run', '--ctl', '3', '--', 'sh', '-c', 'ls /proc/self/fd; read x']);
      const m = await h.waitCtl(/^started (\d+) (\d+)\n/);
      const init = Number(m[1]);
      const job = Number(m[2]);
      assert.equal(innerPid(init), 1);
      assert.equal(innerPid(job), 2);
      assert.equal(ppid(job), init);
      assert.equal(ppid(init), h.child.pid);
      // The job's own fds as seen from outside, once it runs the shell (the
      // helper reports it started before its exec closes the fds it keeps
      // close-on-exec): just the stdio.
      let fdsOutside: string[] = [];
      try {
        const end = Date.now() + 10_000;
        while (!/\/(?:da|ba)?sh$/.test(readlinkSync(`/proc/${job}/exe`)) && Date.now() < end) await new Promise((res) => setTimeout(res, 5));
        fdsOutside = readdirSync(`/proc/${job}/fd`).sort();
      } finally {
        h.child.stdin!.end('\n');
      }
      assert.deepEqual(fdsOutside, ['0', '1', '2']);
      const r = await h.done;
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.ctl, `started ${init} ${job}\nexit 0\n`);
      // ls lists 0, 1, 2 and the directory fd it is reading, nothing else.
      const fds = r.stdout.trim().split('\n');
      assert.deepEqual(fds.slice(0, 3), ['0', '1', '2']);
      assert.ok(fds.length <= 4, `job saw fds ${fds.join(' ')}`);
    });

    test('signals sent to the helper reach the job', async () => {
      const h = start([
        'run', '--ctl', '3', '--',
        'sh', '-c', 'trap "echo got; exit 0" USR1; echo ready; while :; do sleep 0.1; done',
      ]);
      await h.waitCtl(/^started \d+ \d+\n/);
      await h.waitStdout(/ready\n/);
      h.child.kill('SIGUSR1');
      const r = await h.done;
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, 'ready\ngot\n');
      assert.match(r.ctl, /\nexit 0\n$/);
    });

    test('SIGTERM to the helper terminates a plain job the same way', async () => {
      const h = start(['run', '--ctl', '3', '--', 'sleep', '60']);
      await h.waitCtl(/^started \d+ \d+\n/);
      h.child.kill('SIGTERM');
      const r = await h.done;
      assert.equal(r.signal, 'SIGTERM');
      assert.match(r.ctl, /\nexit 15\n$/);
    });

    test('init killed: lost, and the helper dies the same way', async () => {
      const h = start(['run', '--ctl', '3', '--', 'sleep', '60']);
      const m = await h.waitCtl(/^started (\d+) (\d+)\n/);
      const job = Number(m[2]);
      process.kill(Number(m[1]), 'SIGKILL');
      const r = await h.done;
      assert.equal(r.signal, 'SIGKILL');
      assert.equal(r.ctl, `${m[0]}lost 9\n`);
      assert.ok(!existsSync(`/proc/${job}`), 'job survived its namespace');
    });

    test('helper killed: the namespace goes down with it', async () => {
      const h = start(['run', '--ctl', '3', '--', 'sleep', '60']);
      const m = await h.waitCtl(/^started (\d+) (\d+)\n/);
      h.child.kill('SIGKILL');
      const r = await h.done;
      assert.equal(r.signal, 'SIGKILL');
      await eventually('init and job gone', () => !existsSync(`/proc/${m[1]}`) && !existsSync(`/proc/${m[2]}`));
    });

    test('an inherited SIG_IGN for SIGCHLD does not break reaping', async () => {
      const r = await run(['run', '--', 'sh', '-c', 'exit 5'], ['/bin/bash', '-c', `trap '' CHLD; exec "$0" "$@"`]);
      assert.equal(r.code, 5, r.stderr);
    });

    test('exec failure exits 127 with a message', async () => {
      const r = await run(['run', '--', '/nonexistent/crest-cmd', 'x']);
      assert.equal(r.code, 127);
      assert.match(r.stderr, /^crest-helper: cannot execute \/nonexistent\/crest-cmd: No such file or directory\n$/);
    });
  });

  describe('restore', () => {
    test('husks with the requested PIDs, parent links, parked in pause', async () => {
      const h = start(['restore', '--ctl', '3', '--task', '42', '--task', '43:42']);
      const m = await h.waitCtl(/^husk 42 (\d+)\nhusk 43 (\d+)\nready (\d+)\n$/);
      const [p42, p43, init] = [Number(m[1]), Number(m[2]), Number(m[3])];
      assert.equal(innerPid(init), 1);
      assert.equal(ppid(init), h.child.pid);
      assert.equal(innerPid(p42), 42);
      assert.equal(innerPid(p43), 43);
      assert.equal(ppid(p42), init);
      assert.equal(ppid(p43), p42);
      for (const p of [p42, p43]) {
        await eventually(`${p} parked in pause`, () =>
          readFileSync(`/proc/${p}/syscall`, 'utf8').startsWith(`${PAUSE_SYSCALL} `),
        );
        await eventually(`${p} has only fds 0-2`, () =>
          readdirSync(`/proc/${p}/fd`).sort().join(' ') === '0 1 2',
        );
        assert.equal(status(p).get('SigBlk'), '0000000000000000');
        assert.equal(status(p).get('SigCgt'), '0000000000000000');
        assert.equal(status(p).get('Uid')!.split(/\s+/)[0], String(uid));
        // Plain forks of init: the full capability set of the new user
        // namespace is kept (needed to clone3 with set_tid later).
        assert.equal(status(p).get('CapEff'), status(init).get('CapEff'));
        assert.notEqual(status(p).get('CapEff'), '0000000000000000');
      }
      process.kill(p42, 'SIGKILL');
      const r = await h.done;
      assert.equal(r.ctl, `${m[0]}exit 9\n`);
      assert.equal(r.signal, 'SIGKILL');
      assert.ok(!existsSync(`/proc/${p43}`), 'husk 43 survived');
    });

    test('children are created by their parent husk, siblings in order', async () => {
      const g = start([
        'restore', '--ctl', '3',
        '--task', '100', '--task', '300:100', '--task', '200:1', '--task', '301:100', '--task', '400:301',
      ]);
      const m = await g.waitCtl(/ready (\d+)\n$/);
      const husks = new Map<number, number>();
      for (const [, inner, outer] of g.ctl().matchAll(/^husk (\d+) (\d+)$/gm)) husks.set(Number(inner), Number(outer));
      assert.deepEqual([...husks.keys()], [100, 300, 200, 301, 400]);
      const init = Number(m[1]);
      assert.equal(ppid(husks.get(100)!), init);
      assert.equal(ppid(husks.get(200)!), init);
      assert.equal(ppid(husks.get(300)!), husks.get(100));
      assert.equal(ppid(husks.get(301)!), husks.get(100));
      assert.equal(ppid(husks.get(400)!), husks.get(301));
      // Killing a non-job husk does not end anything; the job (100) does.
      process.kill(husks.get(200)!, 'SIGKILL');
      await eventually('200 reaped', () => !existsSync(`/proc/${husks.get(200)}`));
      assert.equal(g.child.exitCode, null);
      g.child.kill('SIGTERM'); // forwarded to the job, default action
      const r = await g.done;
      assert.equal(r.signal, 'SIGTERM');
      assert.match(r.ctl, /\nexit 15\n$/);
    });

    test('a failing clone3 reports error and exits 3', async () => {
      const r = await run(['restore', '--ctl', '3', '--task', '42', '--task', '4194304:42']);
      assert.equal(r.code, 3);
      assert.equal(r.ctl, 'error 4194304 EINVAL\n');
      assert.match(r.stderr, /crest-helper: cannot create task 4194304: Invalid argument/);
    });
  });

  describe('bad input', () => {
    const cases: Array<[string[], RegExp]> = [
      [[], /missing verb/],
      [['frobnicate'], /unknown verb 'frobnicate'/],
      [['run'], /missing '--'/],
      [['run', 'true'], /unexpected argument 'true'.*missing '--'/],
      [['run', '--'], /missing command/],
      [['run', '--ctl'], /--ctl needs a file descriptor/],
      [['run', '--ctl', 'x3', '--', 'true'], /--ctl 'x3': not a file descriptor number/],
      [['run', '--ctl', '-1', '--', 'true'], /--ctl '-1': not a file descriptor number/],
      [['run', '--ctl', '99', '--', 'true'], /--ctl 99: not an open file descriptor/],
      [['run', '--ctl', '1', '--', 'true'], /--ctl 1: must be 3 or more/],
      [['run', '--ctl', '3', '--ctl', '3', '--', 'true'], /--ctl given twice/],
      [['restore'], /at least one --task/],
      [['restore', '--task'], /--task needs PID\[:PPID\]/],
      [['restore', '--task', '1'], /--task '1': PID must be between 2 and 4194304/],
      [['restore', '--task', '0'], /--task '0': PID must be between 2 and 4194304/],
      [['restore', '--task', '4194305'], /PID must be between 2 and 4194304/],
      [['restore', '--task', '42x'], /--task '42x': malformed PID/],
      [['restore', '--task', ''], /--task '': malformed PID/],
      [['restore', '--task', '+42'], /--task '\+42': malformed PID/],
      [['restore', '--task', '42:'], /--task '42:': malformed PPID/],
      [['restore', '--task', '42:abc'], /--task '42:abc': malformed PPID/],
      [['restore', '--task', '42', '--task', '42'], /--task '42': duplicate PID 42/],
      [['restore', '--task', '43:42', '--task', '42'], /--task '43:42': PPID 42 is neither 1 nor an earlier --task/],
      [['restore', '--task', '42', '--task', '43:43'], /PPID 43 is neither 1 nor an earlier --task/],
      [['restore', '--task', '42', '--task', '43:0'], /PPID 0 is neither 1 nor an earlier --task/],
      [['restore', '--task', '42', '--', 'x'], /unexpected argument '--'/],
      [['probe', 'extra'], /probe takes no arguments/],
    ];
    for (const [args, re] of cases) {
      test(`[${args.join(' ')}] exits 2`, async () => {
        const r = await run(args);
        assert.equal(r.code, 2);
        assert.match(r.stderr, re);
        assert.match(r.stderr, /usage: crest-helper run/);
        assert.equal(r.stdout, '');
        assert.equal(r.ctl, '');
      });
    }

    test('--ctl on a read-only fd is refused', async () => {
      const fd = openSync('/dev/null', 'r');
      try {
        const child = spawn(HELPER, ['run', '--ctl', '3', '--', 'true'], { stdio: ['ignore', 'ignore', 'pipe', fd] });
        let err = '';
        child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
        const code = await new Promise<number | null>((res) => child.on('close', (c) => res(c)));
        assert.equal(code, 2);
        assert.match(err, /--ctl 3: not open for writing/);
      } finally {
        closeSync(fd);
      }
    });

    test('--help prints usage and exits 0', async () => {
      const r = await run(['--help']);
      assert.equal(r.code, 0);
      assert.match(r.stdout, /^usage: crest-helper run \[--ctl FD\] \[--net\] -- CMD/);
      assert.equal(r.stderr, '');
    });
  });

  describe('probe', () => {
    test('prints the six steps, all ok here', async () => {
      const r = await run(['probe']);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, 'userns ok\nmountproc ok\nset_tid ok\nclone3 ok\nnetns ok\ntcp_repair ok\n');
    });
  });

  describe('run --net', () => {
    test('the job has its own network namespace: loopback only, and up', async () => {
      const py = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); socket.create_connection(s.getsockname()); print('connected')";
      const r = await run(['run', '--net', '--', '/bin/sh', '-c', `tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; readlink /proc/self/ns/net; python3 -c "${py}"`]);
      assert.equal(r.code, 0, r.stderr);
      const [ifaces, ns, said] = r.stdout.trim().split('\n');
      assert.equal(ifaces, 'lo');
      assert.notEqual(ns, readlinkSync('/proc/self/ns/net'));
      assert.equal(said, 'connected');
    });

    test('--net given twice is a usage error', async () => {
      for (const verb of [['run', '--net', '--net', '--', 'true'], ['restore', '--net', '--net', '--task', '5']]) {
        const r = await run(verb);
        assert.equal(r.code, 2);
        assert.match(r.stderr, /--net given twice/);
      }
    });
  });
});
