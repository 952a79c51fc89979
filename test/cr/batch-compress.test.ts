// crest run --compress: checkpoints whose pages are zstd frames, full and
// incremental; the resume decompresses the chain (and a compressed parent's
// frames for inherited pages) to the right result; a damaged frame is
// refused before the job runs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TARGETS_BIN, assertOk, cleanEnv, crest, describeResult, registerCleanup, sleep, spawnCrest, tmpWorkDir, uniqueName, withTimeout } from '../harness.js';

registerCleanup();

const STEPS = path.join(TARGETS_BIN, 'steps');
const MIB = 32;
const TOTAL = 50;

function expected(): string {
  return spawnSync(STEPS, [tmpWorkDir('expected'), String(TOTAL), '0', String(MIB), 'text'], { encoding: 'utf8' }).stdout.trim();
}

interface Manifest {
  files: Record<string, { size: number }>;
  parent?: { dir: string };
  processes: { pagesFile: string; compression?: { codec: string; blocks: [number, number][] }; vmas: { runs: [number, number][] }[] }[];
}
const manifest = (d: string): Manifest => JSON.parse(fs.readFileSync(path.join(d, 'manifest.json'), 'utf8')) as Manifest;

test('--compress: smaller checkpoints, full and incremental; the resume decompresses the chain; a damaged frame is refused', { timeout: 180_000 }, async () => {
  const work = tmpWorkDir('compress');
  const dir = path.join(work, 'D');
  const argv = [STEPS, work, String(TOTAL), '100', String(MIB), 'text'];
  // CREST_COMPRESS=always: every block compressed, however busy the machine (by default a block is
  // stored raw when compressing it would slow the checkpoint down, which depends on the spare CPU).
  const run = spawnCrest(['run', '--name', uniqueName('zstd'), '--checkpoint-dir', dir, '--compress', '--every', '400ms', '--on-signal', 'USR1', '--', ...argv], { env: cleanEnv({ CREST_COMPRESS: 'always' }) });
  const done = (): string[] => (fs.existsSync(dir) ? fs.readdirSync(dir).filter((n) => /^ckpt-/.test(n) && fs.existsSync(path.join(dir, n, 'manifest.json'))).sort() : []);
  const end = Date.now() + 60_000;
  while (done().length < 3) {
    if (run.result || Date.now() > end) assert.fail(run.result ? describeResult('crest run', run.result) : `no 3 checkpoints: ${run.stderr()}`);
    await sleep(20);
  }
  process.kill(run.pid, 'SIGUSR1');
  const r1 = await withTimeout(run.exited, 30_000, 'crest run after USR1');
  assert.equal(r1.code, 75, describeResult('crest run', r1));

  const names = done();
  const first = manifest(path.join(dir, names[0]!));
  const p0 = first.processes[0]!;
  assert.equal(p0.compression?.codec, 'zstd');
  const stored = p0.vmas.reduce((n, v) => n + v.runs.reduce((a, [, c]) => a + c, 0), 0);
  assert.equal(p0.compression!.blocks.reduce((n, [pages]) => n + pages, 0), stored);
  assert.ok(p0.compression!.blocks.every(([, bytes]) => bytes > 0), 'CREST_COMPRESS=always: every block a zstd frame');
  const size = first.files[p0.pagesFile]!.size;
  assert.ok(size < (stored * 4096) / 2, `the full checkpoint's pages compress (${size} bytes for ${stored} pages)`);
  const last = manifest(path.join(dir, names.at(-1)!));
  assert.ok(last.parent, 'the later checkpoints are incremental');
  assert.ok(last.processes[0]!.compression, 'and compressed');

  // The resume: frames of the leaf streamed, inherited pages from compressed parents.
  const res = await withTimeout(spawnCrest(['run', '--checkpoint-dir', dir, '--compress', '--', ...argv]).exited, 60_000, 'the resume');
  assertOk(res, 'resume from compressed checkpoints');
  assert.equal(res.stdout.trim(), expected());

  // A damaged frame in the newest: restore refuses it before the job runs.
  const leaf = path.join(dir, names.at(-1)!);
  const pf = path.join(leaf, last.processes[0]!.pagesFile);
  const b = fs.readFileSync(pf);
  b[Math.floor(b.length / 2)] = b[Math.floor(b.length / 2)]! ^ 0xff;
  fs.writeFileSync(pf, b);
  const bad = await crest(['restore', '-D', leaf]);
  assert.notEqual(bad.code, 0, describeResult('restore of a damaged compressed image', bad));
  assert.match(bad.stderr, /crest: .*(checksum|CRC-32|damaged|corrupted)/);
});
