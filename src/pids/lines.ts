// Reading a helper's control lines with a time bound.
import { performance } from 'node:perf_hooks';
import { CrestError } from '../sys/errors.js';
import type { Helper } from '../jobs/supervise.js';

/**
 * Feeds the helper's lines to `onLine` until it returns a value (not
 * undefined); fails when the helper ends or `timeoutMs` passes first.
 */
export async function readUntil<T>(helper: Helper, what: string, timeoutMs: number, onLine: (word: string, args: string[]) => T | undefined): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const line = await Promise.race([
      helper.nextLine(),
      new Promise<undefined>((r) => setTimeout(() => r(undefined), Math.max(0, deadline - performance.now())).unref()),
    ]);
    if (line === undefined || line === null) {
      const ex = await Promise.race([helper.exited, new Promise<null>((r) => setTimeout(() => r(null), line === null ? 1000 : 100).unref())]);
      throw new CrestError(
        'HELPER_FAILED',
        `${what} did not create the process${ex ? ` (it exited: ${ex.signal ?? ex.code})` : line === null ? ' (it closed its control pipe)' : ` within ${Math.round(timeoutMs / 1000)} s`}`,
      );
    }
    const [word, ...args] = line.split(' ');
    const out = onLine(word ?? '', args);
    if (out !== undefined) return out;
  }
}
