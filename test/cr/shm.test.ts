// Shared memory in process trees: a parent and its child share memory
// (test/targets/shm_*.c): shared anonymous memory, memfds (with and without
// an fd, mapped past their end, privately), POSIX shared memory (named and
// unlinked) and files deleted while mapped. Each target must pass alone,
// each of its checks must fail when sabotaged, and it must pass after a
// checkpoint and a restore: the two processes still talk through the very
// same memory, which needs it to be one object again in both.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  type TargetName,
  assertOk,
  assertPass,
  assertRefused,
  crest,
  createGo,
  describeResult,
  dump,
  expectRunningUntraced,
  jobTargetPids,
  readManifest,
  registerCleanup,
  restore,
  roundTrip,
  runTargetDirect,
  startJob,
  targetArgv,
  tmpImageDir,
  withTimeout,
} from '../harness.js';
import { readImage } from '../../src/image/reader.js';
import { canonicalJson } from '../../src/image/canonical.js';

registerCleanup();

// shm_files names its POSIX shared memory in W/shm-name and removes it when it
// ends; should a test fail before, nothing is left in /dev/shm.
const shmNames = new Set<string>();
after(() => {
  for (const n of shmNames) fs.rmSync(path.join('/dev/shm', n), { force: true });
});
function rememberShm(workDir: string): void {
  try {
    shmNames.add(fs.readFileSync(path.join(workDir, 'shm-name'), 'utf8').trim().replace(/^\//, ''));
  } catch {
    /* not that target */
  }
}

const TIMEOUT = 240_000;

function target(name: string): TargetName {
  return name as TargetName;
}

function sabotageKeys(t: TargetName): string[] {
  const [cmd, ...args] = targetArgv(t, '--sabotage-list');
  return execFileSync(cmd as string, args, { encoding: 'utf8' })
    .split('\n')
    .filter((l) => l.length > 0);
}

async function checksCanFail(t: TargetName): Promise<void> {
  const ok = await runTargetDirect(t);
  rememberShm(ok.workDir);
  assert.ok(ok.code === 0 && ok.stdout.trim() === `PASS ${t}`, describeResult(`${t} without crest`, ok));
  for (const key of sabotageKeys(t)) {
    const r = await runTargetDirect(t, { env: { CREST_TEST_SABOTAGE: key } });
    rememberShm(r.workDir);
    const what = `${t} with CREST_TEST_SABOTAGE=${key}`;
    assert.equal(r.code, 1, describeResult(what, r));
    assert.ok(r.stdout.startsWith(`FAIL ${t}: `) && r.stdout.includes(`${key}: `), describeResult(what, r));
  }
}

interface Vma {
  start: number;
  end: number;
  kind: string;
  shared: boolean;
  pgoff: number;
  runs: [number, number][];
  object?: { ino: number; size: number; name?: string; path?: string };
}

function vmasOf(imageDir: string): { pid: number; vmas: Vma[] }[] {
  return (readManifest(imageDir).processes as { pid: number; vmas: Vma[] }[]).map((p) => ({ pid: p.pid, vmas: p.vmas }));
}

/** Every page of every object is stored at most once in the whole image. */
function assertStoredOnce(imageDir: string): void {
  const seen = new Map<number, Set<number>>();
  for (const p of vmasOf(imageDir)) {
    for (const v of p.vmas) {
      if (!v.object || !v.shared) continue;
      const pages = seen.get(v.object.ino) ?? new Set<number>();
      seen.set(v.object.ino, pages);
      for (const [first, count] of v.runs) {
        for (let i = first; i < first + count; i++) {
          const at = v.pgoff / 4096 + i;
          assert.ok(!pages.has(at), `page ${at} of object ${v.object.ino} is stored twice (again by pid ${p.pid})`);
          pages.add(at);
        }
      }
    }
  }
}

/** One checkpoint (killing the tree) and restore; the restored parent must pass. Returns the image. */
async function checkRoundTrip(t: TargetName): Promise<string> {
  const rt = await roundTrip(t);
  rememberShm(rt.job.workDir);
  assertPass(rt.restore, t, `crest restore of ${t}`);
  assert.deepEqual(jobTargetPids(rt.job), [], 'a target process outlived crest restore');
  const procs = vmasOf(rt.imageDir);
  assert.equal(procs.length, 2, 'the image does not hold the parent and its child');
  assertStoredOnce(rt.imageDir);
  const m = readImage(rt.imageDir);
  assert.equal(canonicalJson(m), fs.readFileSync(path.join(rt.imageDir, 'manifest.json'), 'utf8'), 'the manifest does not re-encode to its bytes');
  return rt.imageDir;
}

describe('shm_anon', () => {
  test('passes alone; every check can fail', { timeout: TIMEOUT }, async () => {
    await checksCanFail(target('shm_anon'));
  });
  test('round trip: shared anonymous memory between parent and child (pages only an exited child wrote, an alias)', { timeout: TIMEOUT }, async () => {
    const img = await checkRoundTrip(target('shm_anon'));
    const [parent, child] = vmasOf(img);
    const shared = (p: { vmas: Vma[] }) => p.vmas.filter((v) => v.kind === 'shmem-anon' && v.object);
    assert.equal(shared(parent!).length, 2, 'the parent has the area and its alias');
    assert.equal(shared(child!).length, 1);
    assert.equal(new Set([...shared(parent!), ...shared(child!)].map((v) => v.object!.ino)).size, 1, 'not one object');
  });
});

describe('shm_memfd', () => {
  test('passes alone; every check can fail', { timeout: TIMEOUT }, async () => {
    await checksCanFail(target('shm_memfd'));
  });
  test('round trip: memfds mapped shared (fd kept, fd closed, past the end) and privately', { timeout: TIMEOUT }, async () => {
    const img = await checkRoundTrip(target('shm_memfd'));
    const names = new Set(vmasOf(img).flatMap((p) => p.vmas.filter((v) => v.kind === 'memfd').map((v) => v.object!.name)));
    assert.deepEqual([...names].sort(), ['crest-closed', 'crest-private', 'crest-shm']);
    const shown = await crest(['show', '-D', img]);
    assertOk(shown, 'crest show');
    assert.match(shown.stdout, /memfd:crest-shm/);
  });
});

describe('shm_files', () => {
  test('passes alone; every check can fail', { timeout: TIMEOUT }, async () => {
    await checksCanFail(target('shm_files'));
  });
  test('round trip: POSIX shared memory (named, unlinked), a deleted file shared with its fd, a deleted file mapped privately', { timeout: TIMEOUT }, async () => {
    const img = await checkRoundTrip(target('shm_files'));
    const parent = vmasOf(img)[0]!;
    const deleted = parent.vmas.filter((v) => v.kind === 'deleted');
    assert.equal(deleted.filter((v) => v.shared && v.object).length, 2, JSON.stringify(deleted));
    assert.equal(deleted.filter((v) => !v.shared && !v.object).length, 1, JSON.stringify(deleted));
  });
});

describe('--leave-running: the tree goes on, the image restores too', () => {
  for (const t of ['shm_anon', 'shm_memfd', 'shm_files']) {
    test(t, { timeout: TIMEOUT }, async () => {
      const job = await startJob(target(t));
      rememberShm(job.workDir);
      const dir = tmpImageDir(`${t}-leave`);
      assertOk(await dump({ job: job.name, dir, leaveRunning: true }), `dump --leave-running of ${t}`);
      await expectRunningUntraced(job.hostPid, `${t} after dump --leave-running`);
      createGo(job.workDir);
      const r = await withTimeout(job.run.exited, 120_000, `crest run of ${job.name}`);
      assertPass(r, target(t), `${t} left running after its checkpoint`);
      if (t === 'shm_files') {
        // It removed its named shared memory when it ended; the image maps that file by name: refused.
        assertRefused(await restore(dir), `restore of ${t}'s --leave-running image`, /\/dev\/shm\/crest-test-/);
        return;
      }
      assertPass(await restore(dir), target(t), `restore of ${t}'s --leave-running image`);
    });
  }
});
