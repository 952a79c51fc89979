// `npm run bench`: dump and restore times and image sizes for processes
// holding 1 MiB, 256 MiB and 1 GiB of touched anonymous memory (and for a
// 16-thread process and a 16-process tree, 64 MiB per task), next to what
// this machine needs just to touch that much fresh memory, measured in the
// same run (machines are shared and noisy: compare ratios, quote medians).
// Prints a table and writes bench/results.json.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, readdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { benchBatch } from './batch.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CLI = join(ROOT, 'dist', 'src', 'cli', 'main.js');
const TARGET = join(ROOT, 'test', 'targets', 'bin', 'counter');
const TOUCH = join(ROOT, 'bench', 'touch');

// CREST_BENCH_SIZES=0 leaves these rows out.
const SIZES_MIB = (process.env.CREST_BENCH_SIZES ?? '1,256,1024').split(',').map(Number).filter((n) => n > 0);
const RUNS = Number(process.env.CREST_BENCH_RUNS ?? 5);

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/** Runs the crest CLI; output goes to files, since a detached job keeps crest's stdio open. */
function timeCmd(args: string[], work: string): { ms: number; out: string; code: number | null } {
  const outPath = join(work, 'cmd.out');
  const errPath = join(work, 'cmd.err');
  const o = openSync(outPath, 'w');
  const e = openSync(errPath, 'w');
  const t = performance.now();
  const r = spawnSync(process.execPath, [CLI, ...args], { stdio: ['ignore', o, e] });
  const ms = performance.now() - t;
  closeSync(o);
  closeSync(e);
  if (r.status !== 0) throw new Error(`crest ${args.join(' ')} failed (${r.status}): ${readFileSync(errPath, 'utf8')}`);
  return { ms, out: readFileSync(outPath, 'utf8'), code: r.status };
}

function touch(mib: number, mode: 'page' | 'bulk'): number {
  const r = spawnSync(TOUCH, [String(mib), mode], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`touch failed: ${r.stderr}`);
  return Number(r.stdout.trim()) * 1000;
}

async function waitFile(path: string, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!existsSync(path)) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${path}`);
    await sleep(20);
  }
}

function dirSize(dir: string): number {
  return readdirSync(dir).reduce((a, f) => a + statSync(join(dir, f)).size, 0);
}

interface Sample {
  dumpWallMs: number;
  dumpMs: number;
  restoreWallMs: number;
  restoreMs: number;
  imageBytes: number;
  touchPageMs: number;
  touchBulkMs: number;
}

async function once(mib: number, runNo: number): Promise<Sample> {
  return roundTrip('crest-bench-', `bench-${process.pid}-${mib}-${runNo}`, (work) => [TARGET, work, String(mib)], mib);
}

/**
 * One dump and restore of a job running `argv(work)`, which fills `mib` MiB
 * and then writes work/ready: wall and crest's own times, the image size,
 * and the first-touch baselines for as much memory, taken right before the
 * restore in the same conditions.
 */
async function roundTrip(prefix: string, name: string, argv: (work: string) => string[], mib: number): Promise<Sample> {
  const work = mkdtempSync(join(tmpdir(), prefix));
  const image = join(work, 'image');
  const job = spawn(process.execPath, [CLI, 'run', '--name', name, '--', ...argv(work)], { stdio: 'ignore' });
  const jobExit = new Promise((r) => job.on('exit', r));
  try {
    await waitFile(join(work, 'ready'), 120000);
    const d = timeCmd(['dump', '--job', name, '-D', image, '--json'], work);
    await jobExit;
    const dj = JSON.parse(d.out) as { durationMs: number };
    const imageBytes = dirSize(image);
    const touchPageMs = touch(mib, 'page');
    const touchBulkMs = touch(mib, 'bulk');
    const r = timeCmd(['restore', '-D', image, '--detach', '--json', '--name', `${name}-r`], work);
    const rj = JSON.parse(r.out) as { durationMs: number; pid: number };
    try {
      process.kill(rj.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    return { dumpWallMs: d.ms, dumpMs: dj.durationMs, restoreWallMs: r.ms, restoreMs: rj.durationMs, imageBytes, touchPageMs, touchBulkMs };
  } finally {
    try {
      job.kill('SIGKILL');
    } catch {
      /* gone */
    }
    await sleep(200);
    rmSync(work, { recursive: true, force: true });
  }
}

// ---- Many tasks: a multi-threaded process (test/targets/threads_mem: every
// thread fills its own memory, then sleeps in a 10 ms loop) and a process
// tree (test/targets/tree_mem: a parent and its children, each filling its
// own memory, then ticking), TASKS tasks with MIB_PER_TASK MiB each, dumped
// and restored like the rows above. CREST_BENCH_THREADS / CREST_BENCH_TREE
// = "TASKSxMIB" (default 16x64 each), or "0" to leave the row out.
const TASK_ROWS = [
  { kind: 'threads', spec: process.env.CREST_BENCH_THREADS ?? '16x64', target: join(ROOT, 'test', 'targets', 'bin', 'threads_mem'), env: 'CREST_BENCH_THREADS' },
  { kind: 'processes', spec: process.env.CREST_BENCH_TREE ?? '16x64', target: join(ROOT, 'test', 'targets', 'bin', 'tree_mem'), env: 'CREST_BENCH_TREE' },
] as const;
type TaskRow = (typeof TASK_ROWS)[number];

async function onceTasks(row: TaskRow, tasks: number, mibPerTask: number, runNo: number): Promise<Sample> {
  const name = `bench-${process.pid}-${row.kind}${tasks}-${runNo}`;
  return roundTrip('crest-bench-tasks-', name, (work) => [row.target, work, String(tasks), String(mibPerTask)], tasks * mibPerTask);
}

/** A many-task row (medians of 3 runs), or null when its variable is 0. */
async function benchTasks(row: TaskRow) {
  if (row.spec === '0') return null;
  const m = /^(\d+)x(\d+)$/.exec(row.spec);
  if (!m) throw new Error(`${row.env}=${row.spec}: expected TASKSxMIB (e.g. 16x64) or 0`);
  const tasks = Number(m[1]);
  const mibPerTask = Number(m[2]);
  if (!existsSync(row.target)) throw new Error(`${row.target} missing: run make -C test/targets first`);
  const runs = Math.max(3, Math.min(RUNS, 3));
  const samples: Sample[] = [];
  for (let i = 0; i < runs; i++) {
    samples.push(await onceTasks(row, tasks, mibPerTask, i));
    process.stderr.write('.');
  }
  const med = (k: keyof Sample): number => median(samples.map((s) => s[k]));
  const mib = tasks * mibPerTask;
  return {
    mib,
    label: `${tasks} ${row.kind} x ${mibPerTask} MiB`,
    tasks,
    mibPerTask,
    runs,
    dumpWallMs: med('dumpWallMs'),
    dumpMs: med('dumpMs'),
    dumpGBps: (mib * 1048576) / 1e9 / (med('dumpMs') / 1000),
    restoreWallMs: med('restoreWallMs'),
    restoreMs: med('restoreMs'),
    imageMiB: med('imageBytes') / 1048576,
    touchPageMs: med('touchPageMs'),
    touchBulkMs: med('touchBulkMs'),
    restoreVsTouch: median(samples.map((s) => s.restoreMs / s.touchPageMs)),
    samples,
  };
}

// ---- PID cycling: how fast the cycle mode reaches a PID. A counter started
// outside crest (so its image has PID mode host) is dumped, then restored
// with --mode cycle: the counter has moved past its PID, so the helper uses
// up about a whole pid_max of IDs to get it back. CREST_BENCH_CYCLE=0 leaves it out.
interface CycleSample {
  ids: number;
  ms: number;
  rate: number;
}

async function onceCycle(runNo: number): Promise<CycleSample> {
  const work = mkdtempSync(join(tmpdir(), 'crest-bench-cycle-'));
  const image = join(work, 'image');
  // fds above 2 closed (nothing leaked into the bench becomes the target's); as root, without capabilities.
  const argv = [
    'python3', '-c', 'import os, sys; os.closerange(3, 65536); os.execvp(sys.argv[1], sys.argv[1:])',
    ...(process.getuid!() === 0 ? ['setpriv', '--securebits', '+noroot,+noroot_locked', '--'] : []),
    TARGET, work, '1',
  ];
  const target = spawn(argv[0]!, argv.slice(1), { stdio: 'ignore', detached: true });
  const targetExit = new Promise((r) => target.on('exit', r));
  let restored = 0;
  try {
    await waitFile(join(work, 'ready'), 60000);
    const pid = Number(readFileSync(join(work, 'ready'), 'utf8').trim());
    timeCmd(['dump', '--pid', String(pid), '-D', image, '--json'], work);
    await targetExit;
    const r = timeCmd(['restore', '-D', image, '--mode', 'cycle', '--detach', '--json', '--name', `bench-${process.pid}-cycle-${runNo}`], work);
    const rj = JSON.parse(r.out) as { pid: number; cycled?: CycleSample };
    restored = rj.pid;
    if (!rj.cycled) throw new Error(`restore --mode cycle reported no cycling: ${r.out}`);
    return rj.cycled;
  } finally {
    for (const p of [restored, target.pid ?? 0]) {
      try {
        if (p > 0) process.kill(p, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await sleep(200);
    rmSync(work, { recursive: true, force: true });
  }
}

/** The cycling rate (median of 3 restores), or null when CREST_BENCH_CYCLE=0. */
async function benchCycling(): Promise<{ runs: number; pidMax: number; rate: number; ids: number; ms: number; samples: CycleSample[] } | null> {
  if (process.env.CREST_BENCH_CYCLE === '0') return null;
  const samples: CycleSample[] = [];
  for (let i = 0; i < 3; i++) {
    samples.push(await onceCycle(i));
    process.stderr.write('.');
  }
  process.stderr.write('\n');
  const pidMax = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8').trim());
  return { runs: samples.length, pidMax, rate: median(samples.map((s) => s.rate)), ids: median(samples.map((s) => s.ids)), ms: median(samples.map((s) => s.ms)), samples };
}

async function main(): Promise<void> {
  for (const p of [CLI, TARGET, TOUCH]) if (!existsSync(p)) throw new Error(`${p} missing: run npm run build first`);
  const rows = [];
  for (const mib of SIZES_MIB) {
    const runs = mib >= 1024 ? Math.max(3, Math.min(RUNS, 3)) : RUNS;
    const samples: Sample[] = [];
    for (let i = 0; i < runs; i++) {
      samples.push(await once(mib, i));
      process.stderr.write('.');
    }
    const m = (k: keyof Sample): number => median(samples.map((s) => s[k]));
    const bytes = mib * 1048576;
    rows.push({
      mib,
      runs,
      dumpWallMs: m('dumpWallMs'),
      dumpMs: m('dumpMs'),
      dumpGBps: bytes / 1e9 / (m('dumpMs') / 1000),
      restoreWallMs: m('restoreWallMs'),
      restoreMs: m('restoreMs'),
      imageMiB: m('imageBytes') / 1048576,
      touchPageMs: m('touchPageMs'),
      touchBulkMs: m('touchBulkMs'),
      restoreVsTouch: median(samples.map((s) => s.restoreMs / s.touchPageMs)),
      samples,
    });
  }
  for (const row of TASK_ROWS) {
    const r = await benchTasks(row);
    if (r) rows.push(r);
  }
  process.stderr.write('\n');
  const f = (n: number, d = 0): string => n.toFixed(d);
  const head = ['memory', 'dump wall', 'dump', 'dump rate', 'restore wall', 'restore', 'image', 'touch (page)', 'touch (bulk)', 'restore/touch'];
  const table = rows.map((r) => [
    'label' in r ? String(r.label) : `${r.mib} MiB`,
    `${f(r.dumpWallMs)} ms`,
    `${f(r.dumpMs)} ms`,
    `${f(r.dumpGBps, 2)} GB/s`,
    `${f(r.restoreWallMs)} ms`,
    `${f(r.restoreMs)} ms`,
    `${f(r.imageMiB, 1)} MiB`,
    `${f(r.touchPageMs)} ms`,
    `${f(r.touchBulkMs)} ms`,
    `${f(r.restoreVsTouch, 2)}x`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...table.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padStart(widths[i]!)).join('  ');
  console.log(line(head));
  for (const r of table) console.log(line(r));
  console.log(`medians of ${RUNS} runs (3 for 1 GiB and for the threads and processes rows); "wall" includes starting the crest command; "dump"/"restore" are crest's own timings;`);
  console.log('restore/touch = restore time over the time this machine takes to first-touch the same amount of fresh memory, measured right before it.');
  const cycling = await benchCycling();
  if (cycling) {
    console.log(
      `PID cycling (crest restore --mode cycle of a process dumped outside a job): ${f(cycling.rate)} PIDs/s, ${f(cycling.ids)} IDs in ${f(cycling.ms)} ms to get its PID back (median of ${cycling.runs}; pid_max ${cycling.pidMax})`,
    );
  }
  const out = join(ROOT, 'bench', 'results.json');
  writeFileSync(out, JSON.stringify({ date: new Date().toISOString(), kernel: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(), rows, cycling }, null, 1) + '\n');
  console.log(`JSON: ${out}`);
  // Checkpoints of a running job: full vs incremental, pauses, compression (bench/batch.ts).
  await benchBatch(ROOT);
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
