// kinds/sched.ts: the CPU list of /proc (Cpus_allowed_list) and the
// cpu_set_t that sched_setaffinity takes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpuMask, parseCpuList } from '../src/kinds/sched.js';

test('parseCpuList reads ranges and single CPUs', () => {
  assert.deepEqual(parseCpuList('0'), [0]);
  assert.deepEqual(parseCpuList('0-3,8,10-11\n'), [0, 1, 2, 3, 8, 10, 11]);
  assert.deepEqual(parseCpuList(''), []);
  assert.throws(() => parseCpuList('0-'), /malformed CPU list/);
  assert.throws(() => parseCpuList('a'), /malformed CPU list/);
});

test('cpuMask sets bit c for CPU c, in whole 64-bit words', () => {
  assert.deepEqual([...cpuMask([0])], [1, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual([...cpuMask([1, 9])], [2, 2, 0, 0, 0, 0, 0, 0]);
  const big = cpuMask([64, 130]);
  assert.equal(big.length, 24);
  assert.equal(big[8], 1);
  assert.equal(big[16], 4);
  assert.equal(cpuMask([]).length, 8);
});
