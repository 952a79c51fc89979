// Incremental checkpoints of a real job: after the first, a checkpoint
// stores only the pages whose hash changed and names its parent; a resume
// assembles the chain; gc keeps every parent a kept checkpoint needs; a
// chain with a missing parent is refused before any process exists (and a
// resume passes over it to a checkpoint whose chain is whole).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  TARGETS_BIN,
  assertOk,
  assertRefused,
  crest,
  describeResult,
  registerCleanup,
  sleep,
  spawnCrest,
  tmpWorkDir,
  uniqueName,
  withTimeout,
} from '../harness.js';

registerCleanup();

const TIMEOUT = 180_000;
const STEPS = path.join(TARGETS_BIN, 'steps');
const MIB = 32;

interface Listing {
  newest: string | null;
  checkpoints: { name: string; status: string; parent: string | null; bytes: number; problem: string | null }[];
}

async function ls(dir: string): Promise<Listing> {
  const r = await crest(['ls', dir, '--json']);
  assertOk(r, 'crest ls');
  return JSON.parse(r.stdout) as Listing;
}

function expected(total: number): string {
  const r = spawnSync(STEPS, [tmpWorkDir('expected'), String(total), '0', String(MIB)], { encoding: 'utf8' });
  return r.stdout.trim();
}

function steps(work: string): string[] {
  return fs.readFileSync(path.join(work, 'progress.log'), 'utf8').split('\n').filter(Boolean);
}

/** Runs steps (32 MiB, 1/32 of it rewritten per step) under crest run with checkpoints every 400 ms until `n` exist, then stops it (75). */
async function chainOf(n: number, extra: string[] = []): Promise<{ work: string; dir: string; argv: string[]; total: number }> {
  const work = tmpWorkDir('incr');
  const dir = path.join(work, 'D');
  const total = 60;
  const argv = [STEPS, work, String(total), '100', String(MIB)];
  const run = spawnCrest(['run', '--name', uniqueName('incr'), '--checkpoint-dir', dir, '--every', '400ms', '--on-signal', 'USR1', ...extra, '--', ...argv]);
  const end = Date.now() + 60_000;
  while (!(fs.existsSync(dir) && fs.readdirSync(dir).filter((x) => /^ckpt-/.test(x) && fs.existsSync(path.join(dir, x, 'manifest.json'))).length >= n)) {
    if (run.result || Date.now() > end) assert.fail(`no ${n} checkpoints: ${run.result ? describeResult('crest run', run.result) : run.stderr()}`);
    await sleep(20);
  }
  process.kill(run.pid, 'SIGUSR1');
  const r = await withTimeout(run.exited, 30_000, 'crest run after USR1');
  assert.equal(r.code, 75, describeResult('crest run (expected 75)', r));
  return { work, dir, argv, total };
}

test('after the first, checkpoints store only what changed and name their parent; the resume assembles the chain', { timeout: TIMEOUT }, async () => {
  const c = await chainOf(3);
  const list = await ls(c.dir);
  const [first, ...rest] = list.checkpoints;
  assert.ok(first && rest.length >= 3, JSON.stringify(list));
  assert.equal(first.parent, null);
  assert.ok(first.bytes >= MIB * 1048576, `the full checkpoint holds all ${MIB} MiB (${first.bytes})`);
  for (const [i, e] of rest.entries()) {
    assert.equal(e.status, 'complete');
    assert.equal(e.parent, list.checkpoints[i]!.name, `${e.name} is incremental on the one before`);
    // About 4 steps of 1/32 each between checkpoints (more on a busy machine): well under the whole memory.
    assert.ok(e.bytes < first.bytes * 0.75, `${e.name} stores ${e.bytes} bytes, the full one ${first.bytes}`);
  }
  const newest = list.newest!;
  const man = JSON.parse(fs.readFileSync(path.join(c.dir, newest, 'manifest.json'), 'utf8')) as { formatVersion: number; parent: { dir: string } };
  assert.equal(man.formatVersion, 2);
  assert.equal(man.parent.dir, `../${rest.at(-2)!.name}`);

  const r = await withTimeout(spawnCrest(['run', '--checkpoint-dir', c.dir, '--every', '10m', '--', ...c.argv]).exited, 60_000, 'the resume');
  assertOk(r, 'resume from an incremental checkpoint');
  assert.match(r.stderr, new RegExp(`resuming from ${newest}`));
  assert.equal(r.stdout.trim(), expected(c.total), 'the job computed the right result from the assembled memory');
  const lines = steps(c.work);
  assert.equal(lines.filter((l) => l === 'start').length, 1);
});

test('--full-every 2: chains of two; gc --keep 1 keeps the newest and its parent, removes the rest', { timeout: TIMEOUT }, async () => {
  const c = await chainOf(4, ['--full-every', '2']);
  const list = await ls(c.dir);
  const parents = list.checkpoints.map((e) => e.parent);
  assert.deepEqual(parents.slice(0, 4), [null, 'ckpt-0001', null, 'ckpt-0003'], JSON.stringify(list));
  const newest = list.checkpoints.at(-1)!;
  const gc = await crest(['gc', c.dir, '--keep', '1', '--json']);
  assertOk(gc, 'gc --keep 1');
  const g = JSON.parse(gc.stdout) as { kept: string[]; removed: { name: string }[] };
  const want = newest.parent ? [newest.parent, newest.name] : [newest.name];
  assert.deepEqual(g.kept, want, 'the newest and what it depends on');
  const after = await ls(c.dir);
  assert.deepEqual(after.checkpoints.map((e) => e.name), want);
  assert.ok(after.checkpoints.every((e) => e.status === 'complete'), JSON.stringify(after));
  // What is left still resumes to the right result.
  const r = await withTimeout(spawnCrest(['run', '--checkpoint-dir', c.dir, '--', ...c.argv]).exited, 60_000, 'the resume');
  assertOk(r, 'resume after gc');
  assert.equal(r.stdout.trim(), expected(c.total));
});

test('a chain with a missing parent: restore refuses it before any process exists; the resume passes over it', { timeout: TIMEOUT }, async () => {
  const c = await chainOf(3);
  const list = await ls(c.dir);
  const names = list.checkpoints.map((e) => e.name);
  const newest = names.at(-1)!;
  fs.rmSync(path.join(c.dir, names[1]!), { recursive: true });

  const r = await crest(['restore', '-D', path.join(c.dir, newest)]);
  assertRefused(r, 'restore of a chain with a hole', /is incremental on .*, which is missing or incomplete/);
  assert.ok(!fs.readFileSync(path.join(c.work, 'progress.log'), 'utf8').endsWith(`step ${c.total} `), 'nothing ran');

  const after = await ls(c.dir);
  assert.equal(after.newest, names[0], JSON.stringify(after));
  assert.ok(after.checkpoints.filter((e) => e.name > names[1]!).every((e) => e.status === 'damaged' && /parent .* is missing/.test(e.problem ?? '')), JSON.stringify(after));

  const before = steps(c.work).length;
  const res = await withTimeout(spawnCrest(['run', '--checkpoint-dir', c.dir, '--', ...c.argv]).exited, 60_000, 'the resume');
  assertOk(res, 'resume past a broken chain');
  assert.match(res.stderr, new RegExp(`passing over ${newest} is damaged: its parent`));
  assert.match(res.stderr, new RegExp(`resuming from ${names[0]}`));
  assert.equal(res.stdout.trim(), expected(c.total));
  assert.ok(steps(c.work).length > before);
});

test('a multi-threaded job: incremental and compressed checkpoints, stopped, resumed, every thread checks its memory', { timeout: TIMEOUT }, async () => {
  const work = tmpWorkDir('incr-threads');
  const dir = path.join(work, 'D');
  const argv = [path.join(TARGETS_BIN, 'threads_mem'), work, '4', '16'];
  const name = uniqueName('incr-thr');
  const run = spawnCrest(['run', '--name', name, '--checkpoint-dir', dir, '--compress', '--every', '1h', '--', ...argv]);
  const end = Date.now() + 60_000;
  while (!fs.existsSync(path.join(work, 'ready'))) {
    if (run.result || Date.now() > end) assert.fail(run.result ? describeResult('crest run', run.result) : 'threads_mem not ready');
    await sleep(20);
  }
  assertOk(await crest(['checkpoint', '--job', name]), 'the first (full) checkpoint');
  const t0 = Date.now();
  const stop = await crest(['checkpoint', '--job', name, '--stop', '--json']);
  assertOk(stop, 'the second checkpoint, with --stop');
  const j = JSON.parse(stop.stdout) as { parent: string | null; stopped: boolean };
  assert.equal(j.parent, 'ckpt-0001');
  assert.ok(j.stopped);
  // Every thread killed and reaped at once (a leader reaped first used to wait 5 s for its threads).
  assert.ok(Date.now() - t0 < 4000, `the stop checkpoint took ${Date.now() - t0} ms`);
  const r1 = await withTimeout(run.exited, 30_000, 'crest run after the stop');
  assert.equal(r1.code, 75, describeResult('crest run', r1));

  fs.writeFileSync(path.join(work, 'go'), '');
  const r2 = await withTimeout(spawnCrest(['run', '--checkpoint-dir', dir, '--compress', '--', ...argv]).exited, 60_000, 'the resume');
  assertOk(r2, 'the resumed multi-threaded job');
  assert.match(r2.stderr, /resuming from ckpt-0002/);
  assert.match(r2.stdout, /PASS threads_mem/);
});
