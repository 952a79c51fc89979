// The stage runner behind dump and restore: each named step is timed, and
// the timings are reported to whoever asked (progress, --json, the bench).
import { performance } from 'node:perf_hooks';

export class StageRunner {
  readonly stages: { name: string; ms: number }[] = [];
  private readonly t0 = performance.now();
  constructor(private readonly onStage?: (name: string, ms: number) => void) {}

  run<T>(name: string, fn: () => T): T {
    const t = performance.now();
    const out = fn();
    this.done(name, t);
    return out;
  }

  async runAsync<T>(name: string, fn: () => Promise<T>): Promise<T> {
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
