// The stage runner behind dump and restore: each named step is timed, and
// the timings are reported to whoever asked (progress, --json, the bench).
import { performance } from 'node:perf_hooks';
import { CrestError } from './sys/errors.js';

export class StageRunner {
  readonly stages: { name: string; ms: number }[] = [];
  private readonly t0 = performance.now();
  constructor(private readonly onStage?: (name: string, ms: number) => void) {}

  /** Set by a signal handler: the next stage boundary aborts (see deferSignals). */
  interrupted: NodeJS.Signals | null = null;

  /** Throws at a stage boundary once a deferred signal arrived. */
  checkInterrupted(): void {
    if (this.interrupted) {
      throw new CrestError('INTERRUPTED', `interrupted by ${this.interrupted}; nothing was changed`);
    }
  }

  /**
   * While `fn` runs, SIGINT/SIGTERM/SIGHUP do not kill crest on the spot
   * (which could leave a traced process with borrowed registers): they are
   * noted, and the next stage boundary aborts cleanly.
   */
  async deferSignals<T>(fn: () => Promise<T>): Promise<T> {
    const sigs: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
    const h = (s: NodeJS.Signals): void => {
      this.interrupted ??= s;
    };
    for (const s of sigs) process.on(s, h);
    try {
      return await fn();
    } finally {
      for (const s of sigs) process.off(s, h);
    }
  }

  run<T>(name: string, fn: () => T): T {
    this.checkInterrupted();
    const t = performance.now();
    const out = fn();
    this.done(name, t);
    return out;
  }

  async runAsync<T>(name: string, fn: () => Promise<T>): Promise<T> {
    this.checkInterrupted();
    const t = performance.now();
    const out = await fn();
    this.done(name, t);
    return out;
  }

  private done(name: string, t: number): void {
    const ms = performance.now() - t;
    this.stages.push({ name, ms });
    this.onStage?.(name, ms);
  }

  totalMs(): number {
    return performance.now() - this.t0;
  }
}
