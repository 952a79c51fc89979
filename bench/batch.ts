// The batch section of `npm run bench`: checkpoints of a running job under
// `crest run --checkpoint-dir` (bench/churn.c holding 1 GiB by default).
// For each memory kind and mode: a first (full) checkpoint, then 5% of the
// pages rewritten, then a second one (incremental unless --full-every 1):
// crest's time, the bytes written, the pause crest reports and the pause the
// job itself measured (its longest gap between two 1 ms rounds), and the
// restore of the newest checkpoint. Modes: full every time, incremental,
// incremental + --compress; memory: random bytes (incompressible) and
// "real" (a numeric array and a text heap). Incremental checkpoints with
// both page trackers side by side: the kernel's write tracking (uffd-wp,
// the default where the kernel has it) and page hashes (CREST_TRACKER=
// page-hash). The restore column compares a full image with a chain (full +
// increment). Medians of CREST_BENCH_BATCH_RUNS (default 3) runs;
// CREST_BENCH_BATCH_MIB sets the size (default 1024); CREST_BENCH_BATCH_MODES
// (substrings of mode names, separated by ";") picks modes; CREST_BENCH_BATCH=0 leaves the
// section out. `node dist/bench/batch.js` runs this section alone.
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const CHANGE_PCT = 5;

interface Mode {
  name: string;
  fill: 'random' | 'real';
  args: string[];
  /** Environment of the crest commands (CREST_TRACKER=page-hash: no kernel write tracking). */
  env?: Record<string, string>;
}

const HASHES = { CREST_TRACKER: 'page-hash' };
const MODES: Mode[] = [
  { name: 'random, full each time', fill: 'random', args: ['--full-every', '1'] },
  { name: 'random, incremental, uffd-wp', fill: 'random', args: [] },
  { name: 'random, incremental, page-hash', fill: 'random', args: [], env: HASHES },
  { name: 'real, full each time', fill: 'real', args: ['--full-every', '1'] },
  { name: 'real, full each time + zstd', fill: 'real', args: ['--full-every', '1', '--compress'] },
  // What zstd does when it may take all the time it needs (the default compresses on spare cores only).
  { name: 'real, full each time + zstd always', fill: 'real', args: ['--full-every', '1', '--compress'], env: { CREST_COMPRESS: 'always' } },
  { name: 'real, incremental, uffd-wp', fill: 'real', args: [] },
  { name: 'real, incremental, page-hash', fill: 'real', args: [], env: HASHES },
  { name: 'real, incremental + zstd, uffd-wp', fill: 'real', args: ['--compress'] },
];

interface Sample {
  fullMs: number;
  fullBytes: number;
  fullPauseMs: number;
  fullJobPauseMs: number;
  incrMs: number;
  incrBytes: number;
  incrPauseMs: number;
  incrJobPauseMs: number;
  restoreMs: number;
  /** How the second checkpoint found its changes: uffd-wp, page-hash, or full. */
  tracker: string;
  compressedShare: number;
}

interface Compression {
  blocks: number;
  compressedBlocks: number;
  rawBytes: number;
  storedBytes: number;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

async function waitFile(p: string, ms: number, alive?: () => boolean): Promise<void> {
  const end = Date.now() + ms;
  while (!existsSync(p)) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${p}`);
    if (alive && !alive()) throw new Error(`the job ended before ${p} appeared`);
    await sleep(5);
  }
}

function cli(cliPath: string, args: string[], work: string, env: Record<string, string> = {}): string {
  const o = openSync(join(work, 'cmd.out'), 'w');
  const e = openSync(join(work, 'cmd.err'), 'w');
  const r = spawnSync(process.execPath, [cliPath, ...args], { stdio: ['ignore', o, e], env: { ...process.env, CI: '1', ...env } });
  closeSync(o);
  closeSync(e);
  if (r.status !== 0) throw new Error(`crest ${args.join(' ')} failed (${r.status}): ${readFileSync(join(work, 'cmd.err'), 'utf8')}`);
  return readFileSync(join(work, 'cmd.out'), 'utf8');
}

/** Asks the job for its longest gap since the last request (ms). */
async function jobGap(work: string, n: number): Promise<number> {
  writeFileSync(join(work, `gap-${n}`), '');
  await waitFile(join(work, `gapus-${n}`), 30_000);
  return Number(readFileSync(join(work, `gapus-${n}`), 'utf8')) / 1000;
}

async function once(root: string, mode: Mode, mib: number, runNo: number): Promise<Sample> {
  const cliPath = join(root, 'dist', 'src', 'cli', 'main.js');
  const work = mkdtempSync(join(tmpdir(), 'crest-bench-batch-'));
  const dir = join(work, 'D');
  const name = `bench-batch-${process.pid}-${MODES.indexOf(mode)}-${runNo}`;
  const job = spawn(process.execPath, [cliPath, 'run', '--name', name, '--checkpoint-dir', dir, '--every', '24h', ...mode.args, '--', join(root, 'bench', 'churn'), work, String(mib), mode.fill], {
    stdio: 'ignore',
    env: { ...process.env, CI: '1', ...mode.env },
    detached: true,
  });
  let ended = false;
  const jobExit = new Promise((r) => job.on('exit', (c) => ((ended = true), r(c))));
  // The whole tree: crest run, its helper and the job.
  const killJob = (): void => {
    try {
      process.kill(-job.pid!, 'SIGKILL');
    } catch {
      /* gone */
    }
  };
  try {
    await waitFile(join(work, 'ready-0'), 300_000, () => !ended);
    await jobGap(work, 0);
    const full = JSON.parse(cli(cliPath, ['checkpoint', '--job', name, '--json'], work, mode.env)) as { durationMs: number; bytes: number; pauseMs: number; compression: Compression | null };
    const fullJobPauseMs = await jobGap(work, 1);
    writeFileSync(join(work, 'change-1'), String(CHANGE_PCT));
    await waitFile(join(work, 'changed-1'), 60_000);
    await jobGap(work, 2);
    const incr = JSON.parse(cli(cliPath, ['checkpoint', '--job', name, '--json'], work, mode.env)) as { durationMs: number; bytes: number; pauseMs: number; path: string; tracker: string | null };
    const incrJobPauseMs = await jobGap(work, 3);
    killJob();
    await jobExit;
    const r = JSON.parse(cli(cliPath, ['restore', '-D', incr.path, '--detach', '--json', '--name', `${name}-r`], work)) as { durationMs: number; pid: number };
    try {
      process.kill(r.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    return {
      fullMs: full.durationMs,
      fullBytes: full.bytes,
      fullPauseMs: full.pauseMs,
      fullJobPauseMs,
      incrMs: incr.durationMs,
      incrBytes: incr.bytes,
      incrPauseMs: incr.pauseMs,
      incrJobPauseMs,
      restoreMs: r.durationMs,
      tracker: incr.tracker ?? 'full',
      // Share of the first checkpoint's blocks zstd compressed (the rest plain: no core was spare).
      compressedShare: full.compression ? full.compression.compressedBlocks / Math.max(1, full.compression.blocks) : 0,
    };
  } finally {
    killJob();
    await sleep(200);
    rmSync(work, { recursive: true, force: true });
  }
}

/** Runs the section, prints its table, writes bench/results-batch.json. */
export async function benchBatch(root: string): Promise<void> {
  if (process.env.CREST_BENCH_BATCH === '0') return;
  const mib = Number(process.env.CREST_BENCH_BATCH_MIB ?? 1024);
  const runs = Number(process.env.CREST_BENCH_BATCH_RUNS ?? 3);
  const churn = join(root, 'bench', 'churn');
  if (!existsSync(churn)) throw new Error(`${churn} missing: run make -C bench`);
  const rows = [];
  const pick = process.env.CREST_BENCH_BATCH_MODES?.split(';');
  for (const mode of MODES.filter((m) => !pick || pick.some((p) => m.name.includes(p)))) {
    const samples: Sample[] = [];
    for (let i = 0; i < runs; i++) {
      samples.push(await once(root, mode, mib, i));
      process.stderr.write('.');
    }
    const m = (k: keyof Sample): number => median(samples.map((s) => Number(s[k])));
    const numeric = (Object.keys(samples[0]!) as (keyof Sample)[]).filter((k) => k !== 'tracker');
    // The tracker the second checkpoint actually used (a mode asking for uffd-wp that fell back says so).
    const tracker = [...new Set(samples.map((s) => s.tracker))].join('/');
    rows.push({ mode: mode.name, mib, runs, tracker, ...Object.fromEntries(numeric.map((k) => [k, m(k)])), samples });
  }
  process.stderr.write('\n');
  const f = (n: number, d = 0): string => n.toFixed(d);
  const mb = (n: number): string => `${f(n / 1048576, 1)} MiB`;
  const head = ['batch: job of ' + mib + ' MiB', '1st ckpt', 'size', 'pause (crest/job)', `2nd ckpt (${CHANGE_PCT}% changed)`, 'tracker', 'size', 'pause (crest/job)', 'restore 2nd'];
  const table = rows.map((r) => {
    const x = r as unknown as Omit<Sample, 'tracker'> & { mode: string; tracker: string };
    return [
      x.mode,
      `${f(x.fullMs)} ms`,
      mb(x.fullBytes),
      `${f(x.fullPauseMs)}/${f(x.fullJobPauseMs)} ms`,
      `${f(x.incrMs)} ms`,
      x.tracker,
      mb(x.incrBytes),
      `${f(x.incrPauseMs)}/${f(x.incrJobPauseMs)} ms`,
      `${f(x.restoreMs)} ms`,
    ];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...table.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  console.log('');
  console.log(line(head));
  for (const r of table) console.log(line(r));
  console.log(`medians of ${runs} runs; checkpoints by crest checkpoint into a crest run --checkpoint-dir; "pause" = how long the job was frozen, as crest reports it / as the job measured it (its longest gap between two 1 ms rounds);`);
  console.log('"real" memory = a numeric array (float64 samples of a smooth field) and a text heap; "random" = incompressible bytes; restore = the second checkpoint (with its parent, when incremental: a chain of two).');
  for (const r of rows) {
    const x = r as unknown as Omit<Sample, 'tracker'> & { mode: string };
    if (x.mode.includes('zstd')) console.log(`${x.mode}: ${f(100 * x.compressedShare)}% of the 1st checkpoint's blocks compressed, size ${mb(x.fullBytes)}`);
  }
  console.log('tracker: how the 2nd checkpoint found what changed: uffd-wp = the kernel\'s write tracking (only written pages read), page-hash = every page read and hashed.');
  const out = join(root, 'bench', 'results-batch.json');
  writeFileSync(out, JSON.stringify({ date: new Date().toISOString(), kernel: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(), changePct: CHANGE_PCT, rows }, null, 1) + '\n');
  console.log(`JSON: ${out}`);
}

// `node dist/bench/batch.js`: this section alone (from the repository root's dist/bench).
if (import.meta.url === `file://${process.argv[1]}`) {
  benchBatch(join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '..', '..')).catch((e) => {
    console.error(e);
    process.exitCode = 1;
  });
}
