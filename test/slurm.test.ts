// crest under a real Slurm: a batch job (submitted as whoever runs the tests,
// an ordinary user in CI) runs test/targets/steps under
// `crest run --checkpoint-dir`, gets the warning signal
// (`scancel --signal=USR1 --batch`, what `#SBATCH --signal=B:USR1@60`
// sends), checkpoints, exits 75 and requeues itself; the requeued run
// resumes from the checkpoint and ends with the right result. The job's own
// log proves the resume: one "start", and steps that go on from where they
// stopped instead of from 1.
//
// Needs a Slurm cluster this user can submit to (.ci/slurm-up makes one on
// this machine, as root). Without one the test is skipped with a message,
// unless CI is set (or CREST_SLURM=required): then it fails, loudly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CREST_CLI, TARGETS_BIN, registerCleanup, sleep, tmpWorkDir } from './harness.js';

registerCleanup();

const REQUIRED = process.env.CREST_SLURM === 'required' || (!!process.env.CI && process.env.CREST_SLURM !== 'skip');
const STEPS = path.join(TARGETS_BIN, 'steps');
const TOTAL = 120;

function sh(cmd: string, args: string[]): { ok: boolean; out: string; err: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 30_000 });
  return { ok: r.status === 0, out: r.stdout ?? '', err: r.error ? r.error.message : (r.stderr ?? '') };
}

/** Why this machine cannot run the test, or null when a Slurm partition answers with a usable node. */
function slurmProblem(): string | null {
  const s = sh('sinfo', ['-h', '-N', '-o', '%T']);
  if (!s.ok) return `sinfo failed: ${s.err.trim() || 'no output'}`;
  const states = s.out.trim().split('\n').filter(Boolean);
  if (!states.some((x) => /^(idle|mixed|allocated)/.test(x))) return `no usable Slurm node (states: ${states.join(', ') || 'none'})`;
  return null;
}

function setupLog(): string {
  const p = process.env.CREST_SLURM_SETUP_LOG;
  if (!p) return '';
  try {
    return `\n--- ${p} ---\n${fs.readFileSync(p, 'utf8')}`;
  } catch {
    return `\n(${p} unreadable)`;
  }
}

const problem = slurmProblem();
const skip = problem && !REQUIRED ? `no Slurm here (${problem}); CI runs this test against the cluster .ci/slurm-up starts (set CREST_SLURM=required to fail instead)` : false;

/** `scontrol show job ID` as key -> value. */
function jobInfo(id: string): Map<string, string> {
  const r = sh('scontrol', ['show', 'job', '-o', id]);
  const m = new Map<string, string>();
  for (const kv of r.out.trim().split(/\s+/)) {
    const i = kv.indexOf('=');
    if (i > 0) m.set(kv.slice(0, i), kv.slice(i + 1));
  }
  return m;
}

function read(p: string): string {
  try {
    return fs.readFileSync(p, 'utf8');
  } catch {
    return '';
  }
}

/** The batch script of docs/slurm.md, with this test's paths. */
function batchScript(work: string, dir: string): string {
  const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
  return `#!/bin/bash
#SBATCH --requeue
#SBATCH --open-mode=append
echo "batch start restart=\${SLURM_RESTART_COUNT:-0}"
${q(process.execPath)} ${q(CREST_CLI)} run --checkpoint-dir ${q(dir)} --every 2s --on-signal USR1 -- ${q(STEPS)} ${q(work)} ${TOTAL} 100 &
crest_pid=$!
trap 'kill -USR1 "$crest_pid" 2>/dev/null' USR1
while :; do
  wait "$crest_pid"; status=$?
  kill -0 "$crest_pid" 2>/dev/null || break
done
echo "crest run exited $status"
if [ "$status" -eq 75 ]; then
  scontrol requeue "$SLURM_JOB_ID"
  sleep 30
fi
exit "$status"
`;
}

test('Slurm: warning signal -> checkpoint, exit 75, requeue -> resume -> the right result', { timeout: 300_000, skip }, async () => {
  if (problem) assert.fail(`Slurm is required here (CI) but unusable: ${problem}${setupLog()}`);
  const work = tmpWorkDir('slurm');
  const dir = path.join(work, 'D');
  const out = path.join(work, 'slurm.out');
  fs.writeFileSync(path.join(work, 'job.sh'), batchScript(work, dir), { mode: 0o755 });
  const expected = spawnSync(STEPS, [tmpWorkDir('slurm-expected'), String(TOTAL), '0'], { encoding: 'utf8' }).stdout.trim();
  assert.match(expected, /^RESULT 0x[0-9a-f]{16} steps 120$/);

  const sub = sh('sbatch', ['--parsable', '-J', `crest-test-${process.pid}`, '-o', out, '-D', work, path.join(work, 'job.sh')]);
  assert.ok(sub.ok, `sbatch failed: ${sub.err}`);
  const id = sub.out.trim().split(';')[0]!;
  const diag = (): string => `\n--- scontrol show job ${id} ---\n${[...jobInfo(id)].map(([k, v]) => `${k}=${v}`).join(' ')}\n--- ${out} ---\n${read(out)}`;
  const waitFor = async (what: string, cond: () => boolean, ms: number): Promise<void> => {
    const end = Date.now() + ms;
    while (!cond()) {
      if (Date.now() > end) assert.fail(`${what}: not within ${ms / 1000} s${diag()}`);
      await sleep(250);
    }
  };
  try {
    // Running, with a timer checkpoint behind it and steps after that.
    await waitFor('a timer checkpoint of the running job', () => /checkpoint ckpt-0001 \(timer/.test(read(out)), 60_000);
    await waitFor('steps after it', () => (read(path.join(work, 'progress.log')).match(/^step /gm) ?? []).length >= 40, 30_000);
    assert.equal(jobInfo(id).get('JobState'), 'RUNNING', diag());

    // The resource manager's warning, to the batch shell only (as --signal=B:USR1@T does).
    const sig = sh('scancel', ['--signal=USR1', '--batch', id]);
    assert.ok(sig.ok, `scancel --signal=USR1 --batch: ${sig.err}`);
    await waitFor('crest run to exit 75', () => /crest run exited 75/.test(read(out)), 30_000);
    const stoppedAt = (read(path.join(work, 'progress.log')).match(/^step /gm) ?? []).length;
    assert.ok(stoppedAt < TOTAL, 'the job was stopped before its end');

    // Requeued, resumed, finished.
    await waitFor('the job to be requeued, resumed and completed', () => jobInfo(id).get('JobState') === 'COMPLETED', 150_000);
  } finally {
    if (jobInfo(id).get('JobState') !== 'COMPLETED') sh('scancel', [id]);
  }
  const info = jobInfo(id);
  assert.equal(info.get('ExitCode'), '0:0', diag());
  assert.equal(info.get('Restarts'), '1', diag());
  const log = read(out);
  assert.match(log, /SIGUSR1: checkpointing job .* and stopping it/, diag());
  assert.match(log, /batch start restart=1[\s\S]*resuming from ckpt-[0-9]{4}/, diag());
  assert.equal(read(path.join(work, 'result')).trim(), expected, diag());
  // The job's own log: started once; after the stop it went on from the next step, not from 1.
  const lines = read(path.join(work, 'progress.log')).split('\n').filter(Boolean);
  assert.equal(lines.filter((l) => l === 'start').length, 1, 'the command started once');
  const steps = lines.filter((l) => l.startsWith('step ')).map((l) => Number(l.split(' ')[1]));
  assert.deepEqual(steps, Array.from({ length: TOTAL }, (_, i) => i + 1), 'every step once, in order: stopped at the checkpoint, resumed right after it');
});
