// Page tracking's pieces that need no process: raw zstd frames (what a
// compressed pages file holds where compressing would have slowed the
// checkpoint) read back by libzstd, zstd frames round-trip, and the cursor
// over the pages kernel write tracking vouches for.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { IntervalCursor, rawFrame } from '../src/kinds/pagetrack.js';
import { native } from '../src/sys/native.js';

test('raw zstd frames decode to their input (1 byte, one block, several blocks)', { skip: native().zstdVersion() === null ? 'built without libzstd' : false }, () => {
  for (const len of [1, 4096, 131072, 131073, 1048576]) {
    const src = randomBytes(len);
    const out = Buffer.alloc(len + 64);
    const n = rawFrame(src, len, out);
    assert.equal(n, 9 + 3 * Math.ceil(len / 131072) + len);
    const back = Buffer.alloc(len);
    assert.equal(native().zstdDecompress(out, 0, n, back, 0, len), len);
    assert.ok(back.equals(src), `raw frame of ${len} bytes`);
  }
});

test('zstd frames, sync and on the pool, decode to their input', { skip: native().zstdVersion() === null ? 'built without libzstd' : false }, async () => {
  const src = Buffer.alloc(1 << 20);
  for (let i = 0; i < src.length; i += 64) src.write(`line ${i % 1000} of text `, i);
  const out = Buffer.alloc(src.length + 70000);
  const back = Buffer.alloc(src.length);
  const a = native().zstdCompress(src, 0, src.length, out, 0, out.length, -3);
  assert.ok(a < src.length / 4);
  assert.equal(native().zstdDecompress(out, 0, a, back, 0, back.length), src.length);
  assert.ok(back.equals(src));
  const b = await native().zstdCompressAsync(src, 0, src.length, out, 0, out.length, 1);
  back.fill(0);
  assert.equal(native().zstdDecompress(out, 0, b, back, 0, back.length), src.length);
  assert.ok(back.equals(src));
  assert.throws(() => native().zstdDecompress(out, 0, b - 1, back, 0, back.length), /zstd decompress failed/);
});

test('IntervalCursor: pages inside and outside the vouched intervals, in runs', () => {
  const c = new IntervalCursor([
    [10, 20],
    [25, 26],
    [40, 100],
  ]);
  assert.deepEqual(c.span(0, 50), [false, 10]);
  assert.deepEqual(c.span(10, 50), [true, 10]);
  assert.deepEqual(c.span(15, 18), [true, 3]);
  assert.deepEqual(c.span(20, 50), [false, 5]);
  assert.deepEqual(c.span(25, 50), [true, 1]);
  assert.deepEqual(c.span(26, 30), [false, 4]);
  assert.deepEqual(c.span(45, 200), [true, 55]);
  assert.deepEqual(c.span(100, 200), [false, 100]);
});
