// Kernel write tracking (userfaultfd async write-protect + PAGEMAP_SCAN) for
// incremental checkpoints: a job changes its memory in known ways between
// checkpoints (rewrites, a write by the kernel, new mappings, munmap, mremap
// moves and growth, MADV_DONTNEED, mprotect) and verifies every page itself
// after each resume. The images must say the tracker was used (pages not
// read), fall back to hashes where it could not vouch (its fd closed by the
// job), and be armed again after a resume. The parked userfaultfd never
// shows in an image.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TARGETS_BIN, assertOk, assertRefused, cleanEnv, crest, describeResult, registerCleanup, sleep, spawnCrest, tmpWorkDir, uniqueName, waitForFile, withTimeout, type Proc } from '../harness.js';
import { native } from '../../src/sys/native.js';

registerCleanup();

const TIMEOUT = 240_000;
const TRACKED = path.join(TARGETS_BIN, 'tracked');
const UFFD_WP_ASYNC = 1n << 15n;

interface Tracking {
  method: 'uffd-wp' | 'page-hash';
  why?: string;
  trackedPages: number;
  readPages: number;
}

interface Man {
  parent?: { dir: string };
  processes: { tracking?: Tracking; fds: { fd: number }[] }[];
}

function manifest(dir: string, name: string): Man {
  return JSON.parse(fs.readFileSync(path.join(dir, name, 'manifest.json'), 'utf8')) as Man;
}

const kernelTracks = ((): boolean => {
  const u = native().uffdProbe();
  return u.ok && (u.features & UFFD_WP_ASYNC) !== 0n && native().pagemapScanProbe().ok;
})();

/** Runs phase k of the target and checks it found all its earlier pages right. */
async function phase(work: string, k: number, run: Proc): Promise<void> {
  fs.writeFileSync(path.join(work, `go-${k}`), '');
  await waitForFile(path.join(work, `done-${k}`), 60_000, run);
  assert.equal(fs.readFileSync(path.join(work, `done-${k}`), 'utf8').trim(), 'ok', `phase ${k}: the job's memory before it`);
}

async function checkpoint(name: string, stop = false): Promise<{ checkpoint: string; parent: string | null; tracker: string | null }> {
  const r = await crest(['checkpoint', '--job', name, '--json', ...(stop ? ['--stop'] : [])]);
  assertOk(r, `crest checkpoint${stop ? ' --stop' : ''}`);
  return JSON.parse(r.stdout) as { checkpoint: string; parent: string | null; tracker: string | null };
}

test('uffd-wp tracked increments: every page right after each resume, the tracker used, fallen back where it could not vouch, armed again after resume', { timeout: TIMEOUT, skip: !kernelTracks && 'this kernel has no userfaultfd WP_ASYNC + PAGEMAP_SCAN' }, async () => {
  const work = tmpWorkDir('tracked');
  const dir = path.join(work, 'D');
  const name = uniqueName('tracked');
  const argv = [TRACKED, work];
  const run1 = spawnCrest(['run', '--name', name, '--checkpoint-dir', dir, '--every', '1h', '--', ...argv]);
  await waitForFile(path.join(work, 'ready'), 60_000, run1);
  assert.equal((await checkpoint(name)).parent, null, 'the first checkpoint is full');
  for (let k = 1; k <= 3; k++) {
    await phase(work, k, run1);
    const c = await checkpoint(name, k === 3);
    assert.equal(c.parent, `ckpt-000${k}`, `checkpoint after phase ${k} is incremental`);
  }
  const r1 = await withTimeout(run1.exited, 30_000, 'crest run after the stop');
  assert.equal(r1.code, 75, describeResult('crest run', r1));

  // Resumed from the chain: phase 4 starts by checking every page; phase 5 closes the tracker.
  const run2 = spawnCrest(['run', '--name', name, '--checkpoint-dir', dir, '--every', '1h', '--', ...argv]);
  for (let k = 4; k <= 6; k++) {
    await phase(work, k, run2);
    const c = await checkpoint(name, k === 6);
    assert.equal(c.parent, `ckpt-000${k}`);
  }
  assert.equal(fs.readFileSync(path.join(work, 'closed-uffd'), 'utf8').trim(), '1', 'the job saw exactly one userfaultfd (crest\'s) and closed it');
  const r2 = await withTimeout(run2.exited, 30_000, 'crest run after the second stop');
  assert.equal(r2.code, 75, describeResult('crest run', r2));

  // What each image says about how it was taken.
  const t = (n: number): Tracking => manifest(dir, `ckpt-000${n}`).processes[0]!.tracking!;
  assert.equal(manifest(dir, 'ckpt-0001').processes[0]!.tracking, undefined, 'a full image has no tracking record');
  for (const n of [2, 3, 4, 5, 7]) {
    const tr = t(n);
    assert.equal(tr.method, 'uffd-wp', `ckpt-000${n}: ${JSON.stringify(tr)}`);
    // About 5% of 16384 pages written per phase, plus new mappings: most pages vouched for, not read.
    assert.ok(tr.trackedPages > 12000, `ckpt-000${n} vouched for ${tr.trackedPages} pages`);
    assert.ok(tr.readPages < tr.trackedPages / 3, `ckpt-000${n} read ${tr.readPages} pages`);
  }
  // ckpt-0005 follows the resume: the restored process was armed before it ran.
  // ckpt-0006: the job closed the tracker: every page read and hashed, none missing.
  assert.equal(t(6).method, 'page-hash', JSON.stringify(t(6)));
  assert.match(t(6).why ?? '', /tracker is gone/);
  assert.equal(t(6).trackedPages, 0);
  assert.ok(t(6).readPages > 16000);
  // ckpt-0007: armed again at ckpt-0006.
  for (let n = 1; n <= 7; n++) {
    const fds = manifest(dir, `ckpt-000${n}`).processes[0]!.fds.map((f) => f.fd);
    assert.ok(fds.every((fd) => fd < 100), `ckpt-000${n} holds only the job's own fds: ${fds.join(', ')}`);
  }

  // crest ls, crest show and the event log say which tracker each checkpoint used.
  const ls = await crest(['ls', dir, '--json']);
  assertOk(ls, 'crest ls');
  const entries = (JSON.parse(ls.stdout) as { checkpoints: { name: string; parent: string | null; tracker: string | null }[] }).checkpoints;
  assert.deepEqual(entries.map((e) => e.tracker), [null, 'uffd-wp', 'uffd-wp', 'uffd-wp', 'uffd-wp', 'page-hash', 'uffd-wp']);
  assert.deepEqual(entries.map((e) => e.parent), [null, 'ckpt-0001', 'ckpt-0002', 'ckpt-0003', 'ckpt-0004', 'ckpt-0005', 'ckpt-0006']);
  const lsText = await crest(['ls', dir]);
  assert.match(lsText.stdout, /PARENT\s+TRACKER\s+STATUS/);
  assert.match(lsText.stdout, /ckpt-0006 .* ckpt-0005\s+page-hash\s+complete/);
  const show = await crest(['show', '-D', path.join(dir, 'ckpt-0006')]);
  assertOk(show, 'crest show');
  assert.match(show.stdout, /incremental on \.\.\/ckpt-0005 /);
  assert.match(show.stdout, /changes found by page hashes: all \d+ pages read \(no write tracking: the tracker is gone/);
  const events = fs.readFileSync(path.join(dir, 'events.jsonl'), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { event: string; tracker?: string | null });
  const taken = events.filter((e) => e.event === 'checkpoint');
  assert.deepEqual(taken.map((e) => e.tracker), [null, 'uffd-wp', 'uffd-wp', 'uffd-wp', 'uffd-wp', 'page-hash', 'uffd-wp'], JSON.stringify(taken));

  // The last resume: every page of the 7-image chain, checked by the job itself.
  fs.writeFileSync(path.join(work, 'go'), '');
  const r3 = await withTimeout(spawnCrest(['run', '--checkpoint-dir', dir, '--', ...argv]).exited, 60_000, 'the last resume');
  assertOk(r3, 'the job resumed from the whole chain');
  assert.match(r3.stdout, /PASS tracked/);
});

test('the tracked target fails when a page is wrong (sabotage)', { timeout: TIMEOUT }, async () => {
  const work = tmpWorkDir('tracked-sab');
  const dir = path.join(work, 'D');
  const name = uniqueName('tracked-sab');
  const run = spawnCrest(['run', '--name', name, '--checkpoint-dir', dir, '--every', '1h', '--', TRACKED, work], { env: cleanEnv({ CREST_TEST_SABOTAGE: 'pages' }) });
  await waitForFile(path.join(work, 'ready'), 60_000, run);
  await checkpoint(name);
  await phase(work, 1, run);
  await checkpoint(name);
  await sleep(10);
  fs.writeFileSync(path.join(work, 'go'), '');
  const r = await withTimeout(run.exited, 60_000, 'the sabotaged job');
  assert.equal(r.code, 1, describeResult('crest run of a sabotaged job', r));
  assert.match(r.stdout, /FAIL tracked: pages: R2 page 5 differs/);
});

test('a parent whose pages file was damaged: the chain restore checks it as it streams and refuses before the process runs', { timeout: TIMEOUT }, async () => {
  const work = tmpWorkDir('tracked-dmg');
  const dir = path.join(work, 'D');
  const name = uniqueName('tracked-dmg');
  const run = spawnCrest(['run', '--name', name, '--checkpoint-dir', dir, '--every', '1h', '--', TRACKED, work]);
  await waitForFile(path.join(work, 'ready'), 60_000, run);
  await checkpoint(name);
  await phase(work, 1, run);
  assert.equal((await checkpoint(name, true)).parent, 'ckpt-0001');
  await withTimeout(run.exited, 30_000, 'crest run after the stop');
  // One byte deep inside the parent's pages (a page the leaf inherits): the manifests stay valid.
  const pages = fs.readdirSync(path.join(dir, 'ckpt-0001')).find((f) => /^pages-\d+\.img$/.test(f))!;
  const fd = fs.openSync(path.join(dir, 'ckpt-0001', pages), 'r+');
  const at = 8 * 1024 * 1024 + 123;
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, at);
  b[0] = b[0]! ^ 0xff;
  fs.writeSync(fd, b, 0, 1, at);
  fs.closeSync(fd);
  fs.writeFileSync(path.join(work, 'go'), '');
  const r = await crest(['restore', '-D', path.join(dir, 'ckpt-0002')]);
  assertRefused(r, 'restore of a chain with a damaged parent', /ckpt-0001\/pages-\d+\.img is corrupted \(CRC-32/);
  assert.ok(!fs.existsSync(path.join(work, 'resumed')), 'the restored process never ran');
});
