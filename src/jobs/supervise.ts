// Starting the helper and talking to it: the helper writes one line per
// event on a control pipe (fd 3 on its side); crest reads them here.
import { spawn, type ChildProcess } from 'node:child_process';
import type { Readable } from 'node:stream';
import { existsSync } from 'node:fs';
import { helperPath } from '../paths.js';
import { CrestError } from '../sys/errors.js';
import type { Manifest } from '../image/schema.js';

/** The helper's stdin, stdout and stderr: crest's own, or /dev/null. */
export type StdioChoice = 'inherit' | 'ignore' | readonly ['inherit' | 'ignore', 'inherit' | 'ignore', 'inherit' | 'ignore'];

/**
 * The streams a restore's helper (and so its husks and the job's init)
 * gets. In the foreground, crest restore's own. With --detach, only those
 * a restored process takes as its own (an image's `stdio` files); the rest
 * are /dev/null, so that a caller reading crest restore's output through a
 * pipe (`out=$(crest restore --detach --json ...)`) sees it end when crest
 * restore exits, rather than when the job does.
 */
export function restoreStdio(m: Manifest, detached: boolean): StdioChoice {
  if (!detached) return 'inherit';
  const used = new Set(m.processes.flatMap((p) => p.files.flatMap((f) => (f.kind === 'stdio' ? [f.stream] : []))));
  const pick = (s: 0 | 1 | 2): 'inherit' | 'ignore' => (used.has(s) ? 'inherit' : 'ignore');
  return [pick(0), pick(1), pick(2)];
}

/** How a supervised helper ended. */
export interface HelperExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A running helper and its control lines. */
export class Helper {
  readonly child: ChildProcess;
  readonly exited: Promise<HelperExit>;
  private buf = '';
  private queue: string[] = [];
  private waiters: ((line: string | null) => void)[] = [];
  private ended = false;

  /**
   * `path`: another helper with the same ctl-line protocol (crest-pidhelper,
   * verbs husk and cycle); default crest-helper.
   */
  constructor(verb: 'run' | 'restore' | 'husk' | 'cycle', args: string[], opts: { detached?: boolean; stdio?: StdioChoice; path?: string } = {}) {
    const path = opts.path ?? helperPath();
    if (!existsSync(path)) {
      throw new CrestError('HELPER_MISSING', `crest's helper ${path} is not built; run \`npm ci\` (or \`npm run build\`) in the crest package`);
    }
    const std = opts.stdio ?? 'inherit';
    const [i, o, e] = typeof std === 'string' ? [std, std, std] : std;
    this.child = spawn(path, [verb, '--ctl', '3', ...args], {
      stdio: [i, o, e, 'pipe'],
      detached: !!opts.detached,
    });
    this.exited = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => resolve({ code, signal }));
      this.child.on('error', () => resolve({ code: 127, signal: null }));
    });
    const ctl = this.child.stdio[3] as Readable;
    ctl.setEncoding('utf8');
    ctl.on('data', (d: string) => {
      this.buf += d;
      let i;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 1);
        const w = this.waiters.shift();
        if (w) w(line);
        else this.queue.push(line);
      }
    });
    ctl.on('close', () => {
      this.ended = true;
      for (const w of this.waiters.splice(0)) w(null);
    });
  }

  /** The next control line, or null once the helper closed the pipe. */
  nextLine(): Promise<string | null> {
    const l = this.queue.shift();
    if (l !== undefined) return Promise.resolve(l);
    if (this.ended) return Promise.resolve(null);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Stops listening so crest can exit while the helper lives on (--detach). */
  letGo(): void {
    const ctl = this.child.stdio[3] as Readable;
    ctl.destroy();
    this.child.unref();
  }

  kill(): void {
    try {
      this.child.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
}

/** Mirrors a job's end onto crest's own process: the same exit code, or death by the same signal. */
export function mirrorExit(exit: HelperExit): number {
  if (exit.signal) {
    for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2'] as const) process.removeAllListeners(s);
    process.kill(process.pid, exit.signal);
    return 128 + 9;
  }
  return exit.code ?? 1;
}

/** Signals a supervisor passes on to the job (the terminal's own signals already reach it). */
export const FORWARDED: NodeJS.Signals[] = ['SIGTERM', 'SIGHUP', 'SIGUSR1', 'SIGUSR2', 'SIGCONT', 'SIGWINCH'];
/** Signals a supervisor ignores for itself: from a terminal they reach the job directly. */
export const IGNORED: NodeJS.Signals[] = ['SIGINT', 'SIGQUIT'];

/**
 * Installs forwarding of signals to the helper; returns an uninstaller.
 * Signals in `except` are left alone (crest run --on-signal handles its own).
 */
export function forwardSignals(helper: Helper, opts: { except?: readonly NodeJS.Signals[] } = {}): () => void {
  const handlers: [NodeJS.Signals, () => void][] = [];
  const except = new Set(opts.except ?? []);
  for (const s of FORWARDED) {
    if (except.has(s)) continue;
    const h = (): void => {
      try {
        helper.child.kill(s);
      } catch {
        /* gone */
      }
    };
    process.on(s, h);
    handlers.push([s, h]);
  }
  for (const s of IGNORED) {
    if (except.has(s)) continue;
    const h = (): void => {};
    process.on(s, h);
    handlers.push([s, h]);
  }
  return () => {
    for (const [s, h] of handlers) process.off(s, h);
  };
}
