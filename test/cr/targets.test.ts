// Checkpoint/restore of each target: start it under `crest run`, dump it
// (which kills it: `crest run` exits 75 and the process is gone), let it go
// and restore it in the foreground; the restored target verifies its own
// state and must print PASS with exit 0 as the output of `crest restore`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  type RoundTripOptions,
  type TargetName,
  assertPass,
  jobTargetPids,
  registerCleanup,
  roundTrip,
} from '../harness.js';

registerCleanup();

const TIMEOUT = 180_000;

/** One round trip of `target`, judged. */
async function checkRoundTrip(target: TargetName, opts: RoundTripOptions = {}): Promise<void> {
  const rt = await roundTrip(target, opts);
  assertPass(rt.restore, target, `crest restore of ${target}`);
  // Exactly one process reached go: the restored one, with the pid the original had.
  const resumed = fs.readFileSync(path.join(rt.job.workDir, 'resumed'), 'utf8').trim().split('\n');
  assert.deepEqual(resumed, [String(rt.job.nsPid)], `W/resumed: ${JSON.stringify(resumed)}, pid at ready ${rt.job.nsPid}`);
  assert.deepEqual(jobTargetPids(rt.job), [], 'a target process outlived crest restore');
}

test('counter: 64 MiB of heap, a counter, the pid (dynamically linked)', { timeout: TIMEOUT }, async () => {
  await checkRoundTrip('counter');
});

test('static_counter: a static binary, dumped by --pid', { timeout: TIMEOUT }, async () => {
  await checkRoundTrip('static_counter', { byPid: true });
});

test('mmap_file: private (copy-on-write) and shared file mappings', { timeout: TIMEOUT }, async () => {
  await checkRoundTrip('mmap_file');
});

test('layout: holes, guard page, read-only page, sparse 1 GiB MAP_NORESERVE region', { timeout: TIMEOUT }, async () => {
  const started = Date.now();
  await checkRoundTrip('layout');
  // A sparse 1 GiB mapping must cost what is in it, not its size.
  assert.ok(Date.now() - started < 60_000, `layout round trip took ${Date.now() - started} ms`);
});

test('fpu: x87, SSE and AVX registers and MXCSR live across the checkpoint', { timeout: TIMEOUT }, async () => {
  await checkRoundTrip('fpu');
});

test('signals: actions, masks, alternate stack, pending and queued signals', { timeout: TIMEOUT }, async () => {
  await checkRoundTrip('signals');
});

test('vdso_time: clocks through the vDSO after restore', { timeout: TIMEOUT }, async () => {
  await checkRoundTrip('vdso_time');
});

test('files: offsets, flags, dup sharing, O_APPEND, close-on-exec, /dev/null', { timeout: TIMEOUT }, async () => {
  await checkRoundTrip('files');
});

test('itimer: ITIMER_REAL keeps ticking', { timeout: TIMEOUT }, async () => {
  await checkRoundTrip('itimer');
});

test('threads2: a second thread sleeping in a loop, joined after restore', { timeout: TIMEOUT }, async () => {
  await checkRoundTrip('threads2');
});

test('forker: a parent waiting on its child (a process tree), both restored with their PIDs', { timeout: TIMEOUT }, async () => {
  await checkRoundTrip('forker');
});

test('itimer_pending: the timer due, SIGALRM blocked and pending at the checkpoint', { timeout: TIMEOUT }, async () => {
  await checkRoundTrip('itimer_pending');
});

test('posix_timers: timers of every notify kind (one aimed at a thread), ID gaps, a timer signal pending', { timeout: TIMEOUT }, async () => {
  await checkRoundTrip('posix_timers');
});

test('posix_timers, restored as on a kernel without PR_TIMER_CREATE_RESTORE_IDS (IDs handed out in order)', { timeout: TIMEOUT }, async () => {
  await checkRoundTrip('posix_timers', { restoreEnv: { CREST_FAULT: 'timer-ids-in-order' } });
});

test('py_loop: a python3 interpreter', { timeout: TIMEOUT }, async () => {
  await checkRoundTrip('py_loop');
});
