// The targets on their own, without crest: each passes when nothing happens
// between ready and go, and each of its checks fails when the state it looks
// at is corrupted (CREST_TEST_SABOTAGE=<key>), so a PASS after a restore means
// something. Also: counter is dynamically linked and static_counter static.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  TARGETS,
  TARGETS_BIN,
  type TargetName,
  cleanEnv,
  describeResult,
  registerCleanup,
  runTargetDirect,
  spawnTracked,
  targetArgv,
  tmpWorkDir,
} from './harness.js';

registerCleanup();

/** Small buffers: this is about the checks, not the size. */
const EXTRA: Partial<Record<TargetName, string[]>> = { counter: ['8'], static_counter: ['2'] };

function sabotageKeys(target: TargetName): string[] {
  const [cmd, ...args] = targetArgv(target, '--sabotage-list');
  const out = execFileSync(cmd as string, args, { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.length > 0);
}

test('every target is built', () => {
  for (const t of TARGETS) {
    if (t.startsWith('py_')) continue;
    const p = path.join(TARGETS_BIN, t);
    assert.ok(fs.existsSync(p), `${p} is missing: run make -C test/targets`);
  }
});

/** True when the ELF file has a PT_INTERP program header (dynamically linked). */
function hasInterp(file: string): boolean {
  const b = fs.readFileSync(file);
  assert.equal(b.readUInt32BE(0), 0x7f454c46, `${file} is not ELF`);
  const phoff = Number(b.readBigUInt64LE(0x20));
  const phentsize = b.readUInt16LE(0x36);
  const phnum = b.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) if (b.readUInt32LE(phoff + i * phentsize) === 3) return true;
  return false;
}

test('counter is dynamically linked, static_counter is static', () => {
  assert.equal(hasInterp(path.join(TARGETS_BIN, 'counter')), true);
  assert.equal(hasInterp(path.join(TARGETS_BIN, 'static_counter')), false);
});

for (const target of TARGETS) {
  describe(`target ${target}`, () => {
    test('passes without crest', { timeout: 60_000 }, async () => {
      const r = await runTargetDirect(target, { extra: EXTRA[target] });
      assert.equal(r.code, 0, describeResult(target, r));
      assert.equal(r.stdout.trim(), `PASS ${target}`, describeResult(target, r));
      assert.ok(fs.existsSync(path.join(r.workDir, 'resumed')), 'W/resumed was not written');
    });

    test('lists its checks, "pid" among them', () => {
      const keys = sabotageKeys(target);
      assert.ok(keys.includes('pid'), `keys: ${keys.join(' ')}`);
      assert.ok(keys.length >= 2, `keys: ${keys.join(' ')}`);
      assert.equal(new Set(keys).size, keys.length, `duplicate keys: ${keys.join(' ')}`);
    });

    test('every check fails when its state is corrupted', { timeout: 180_000 }, async () => {
      for (const key of [...sabotageKeys(target), '1']) {
        const r = await runTargetDirect(target, { extra: EXTRA[target], env: { CREST_TEST_SABOTAGE: key } });
        const what = `${target} with CREST_TEST_SABOTAGE=${key}`;
        assert.equal(r.code, 1, describeResult(what, r));
        assert.ok(r.stdout.startsWith(`FAIL ${target}: `), describeResult(what, r));
        assert.ok(!r.stdout.includes('PASS'), describeResult(what, r));
        if (key !== '1') assert.ok(r.stdout.includes(`${key}: `), `${describeResult(what, r)}\n(the failure does not name the check "${key}")`);
      }
    });

    test('refuses an unknown sabotage key (setup error, exit 2)', { timeout: 30_000 }, async () => {
      const argv = targetArgv(target, tmpWorkDir(`${target}-badkey`));
      const r = await spawnTracked(argv, { env: cleanEnv({ CREST_TEST_SABOTAGE: 'no-such-check' }), timeoutMs: 20_000 }).exited;
      assert.equal(r.code, 2, describeResult(target, r));
    });
  });
}
