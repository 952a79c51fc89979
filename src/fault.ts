// Named fault-injection points, for tests of what crest does when things go
// wrong half-way (a disk that fills, crest killed mid-checkpoint).
// CREST_FAULT is a comma-separated list of points, each `name` or `name:arg`.
// Unset (always, outside tests) it costs one environment lookup per call.

/** The argument of fault point `name` ("" when given without one), or null when it is not armed. */
export function faultArg(name: string): string | null {
  const v = process.env.CREST_FAULT;
  if (!v) return null;
  for (const item of v.split(',')) {
    const i = item.indexOf(':');
    const n = i < 0 ? item : item.slice(0, i);
    if (n === name) return i < 0 ? '' : item.slice(i + 1);
  }
  return null;
}

/** Blocks this thread for `ms` (a stall that the event loop cannot end: only a signal does). */
export function stall(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}
