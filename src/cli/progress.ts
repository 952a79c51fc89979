// A progress bar for checkpoints and restores (bytes, rate, eta), on a
// terminal only: cli-progress behind the library's ProgressSink. Off a
// terminal (pipes, batch logs) nothing is drawn.
import { createRequire } from 'node:module';
import type { SingleBar } from 'cli-progress';
import { setProgressSink, type ProgressSink } from '../progress.js';

// Loaded on first use: commands that draw no bar do not pay for it.
let bars: typeof import('cli-progress') | undefined;
function cliProgress(): typeof import('cli-progress') {
  bars ??= createRequire(import.meta.url)('cli-progress') as typeof import('cli-progress');
  return bars;
}

const MiB = 1048576;

/** True when a bar may be drawn: stderr is a terminal (and not in CI). */
export function progressWanted(): boolean {
  return process.stderr.isTTY === true && !process.env.CI;
}

/** A ProgressSink drawing one cli-progress bar per start() on stderr. */
export function barSink(): ProgressSink {
  let bar: SingleBar | null = null;
  let t0 = 0;
  let value = 0;
  let total = 0;
  return {
    start(what, totalBytes) {
      bar?.stop();
      t0 = performance.now();
      value = 0;
      total = Math.max(1, totalBytes);
      bar = new (cliProgress().SingleBar)({
        stream: process.stderr,
        format: `crest: ${what} [{bar}] {percentage}% {done}/{all} MiB, {rate} MB/s, eta {eta_formatted}`,
        barsize: 24,
        hideCursor: true,
        clearOnComplete: true,
        etaBuffer: 20,
      });
      bar.start(total, 0, { done: '0', all: (total / MiB).toFixed(0), rate: '-' });
    },
    add(bytes) {
      if (!bar) return;
      value += bytes;
      // The total of a checkpoint is an estimate (resident memory): never show more than 100%.
      if (value > total) {
        total = value;
        bar.setTotal(total);
      }
      const s = (performance.now() - t0) / 1000;
      bar.update(value, { done: (value / MiB).toFixed(0), all: (total / MiB).toFixed(0), rate: s > 0 ? (value / 1e6 / s).toFixed(0) : '-' });
    },
    done() {
      bar?.stop();
      bar = null;
    },
  };
}

/** Shows a bar on stderr while `fn` runs, when stderr is a terminal. */
export async function withProgress<T>(fn: () => Promise<T>): Promise<T> {
  if (!progressWanted()) return fn();
  const sink = barSink();
  const prev = setProgressSink(sink);
  try {
    return await fn();
  } finally {
    sink.done();
    setProgressSink(prev);
  }
}
