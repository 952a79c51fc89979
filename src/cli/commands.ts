// Verbs, options and exit codes of the crest command. Knows nothing of
// ptrace: it parses, calls the API, prints, and maps errors to exit codes.
import { Command, CommanderError, InvalidArgumentError } from '@commander-js/extra-typings';
import { resolve } from 'node:path';
import { CrestError } from '../sys/errors.js';
import { CREST_VERSION } from '../version.js';
import { EXIT_CHECKPOINTED } from '../jobs/run.js';

/** Exit codes: documented in the README. */
export const EXIT = { OK: 0, ERROR: 1, USAGE: 2, CHECKPOINTED: EXIT_CHECKPOINTED } as const;

function pidArg(v: string): number {
  if (!/^[1-9][0-9]*$/.test(v)) throw new InvalidArgumentError(`expected a process id (a positive integer), got ${JSON.stringify(v)}`);
  return Number(v);
}

function err(s: string): void {
  process.stderr.write(s.endsWith('\n') ? s : s + '\n');
}
function out(s: string): void {
  process.stdout.write(s.endsWith('\n') ? s : s + '\n');
}

const mib = (n: number): string => `${(n / 1048576).toFixed(1)} MiB`;

/** Builds the command tree; each action sets `result` to the exit code. */
function program(result: { code: number }): Command {
  const p = new Command('crest')
    .description('checkpoint and restore Linux processes, without root')
    .version(CREST_VERSION)
    .showHelpAfterError('(run crest --help for usage)')
    .exitOverride();

  p.command('check')
    .description('probe what this kernel and this user allow, and which PID modes are usable')
    .option('--json', 'print the report as JSON')
    .action(async (o) => {
      const { runCheck, formatCheck } = await import('../check/check.js');
      const { helperPath } = await import('../paths.js');
      const report = runCheck({ helperPath: helperPath() });
      out(o.json ? JSON.stringify(report, null, 2) : formatCheck(report));
    });

  p.command('run')
    .description('run a command as a restorable job (own user+pid+mount namespace)')
    .option('--name <name>', 'job name (default: the command name)')
    .argument('<command...>', 'the command and its arguments (after --)')
    .action(async (command, o) => {
      const { run } = await import('../jobs/run.js');
      const r = await run({ command, name: o.name });
      result.code = finish(r.exit, r.checkpointedTo, r.name);
    });

  p.command('dump')
    .description('checkpoint a crest job into an image directory')
    .option('--pid <pid>', 'any host PID of the job', pidArg)
    .option('--job <name>', 'the job name')
    .requiredOption('-D, --dir <dir>', 'image directory')
    .option('--leave-running', 'keep the job running after the checkpoint')
    .option('--force', 'overwrite an image already in the directory')
    .option('--json', 'print the result as JSON')
    .action(async (o) => {
      if ((o.pid === undefined) === (o.job === undefined)) {
        throw new CrestError('USAGE', 'name exactly one process: --pid PID or --job NAME');
      }
      const { dump } = await import('../dump/index.js');
      const r = await dump({ pid: o.pid, job: o.job, dir: resolve(o.dir), leaveRunning: !!o.leaveRunning, force: !!o.force, reap: false });
      if (o.json) out(JSON.stringify(r));
      else {
        for (const w of r.warnings) err(`crest: warning: ${w}`);
        err(
          `crest: checkpointed pid ${r.pid} (pid ${r.nsPid} in job ${r.jobName ?? '?'}) to ${r.dir}: ${mib(r.pagesBytes)} of memory in ${r.durationMs.toFixed(0)} ms; ${r.stopped ? 'job stopped' : 'job left running'}`,
        );
      }
    });

  p.command('restore')
    .description('restore a job from an image directory')
    .requiredOption('-D, --dir <dir>', 'image directory')
    .option('--detach', 'return once the job runs, leaving it in the background')
    .option('--name <name>', 'name for the restored job (default: the image\'s)')
    .option('--json', 'print the result as JSON (with --detach)')
    .action(async (o) => {
      const { restore } = await import('../restore/index.js');
      const { forwardSignals } = await import('../jobs/supervise.js');
      const { loadJob, removeJob } = await import('../jobs/registry.js');
      const r = await restore({ dir: resolve(o.dir), detach: !!o.detach, name: o.name });
      for (const w of r.warnings) err(`crest: warning: ${w}`);
      if (o.detach) {
        r.helper.letGo();
        if (o.json) out(JSON.stringify({ job: r.jobName, pid: r.pid, nsPid: r.nsPid, initPid: r.initPid, durationMs: r.durationMs, stages: r.stages, warnings: r.warnings }));
        else err(`crest: restored job ${r.jobName}: pid ${r.pid} (pid ${r.nsPid} in the job) in ${r.durationMs.toFixed(0)} ms`);
        return;
      }
      const unforward = forwardSignals(r.helper);
      const exit = await r.exited;
      unforward();
      const rec = loadJob(r.jobName, { includeEnded: true });
      removeJob(r.jobName);
      result.code = finish(exit, rec?.checkpointed?.dir ?? null, r.jobName);
    });

  p.command('show')
    .description('print what an image holds')
    .requiredOption('-D, --dir <dir>', 'image directory')
    .option('--json', 'print a JSON summary')
    .action(async (o) => {
      const { readImage } = await import('../image/reader.js');
      const { describeImage, summarizeImage } = await import('../image/show.js');
      const dir = resolve(o.dir);
      const m = readImage(dir, { verifyData: true });
      out(o.json ? JSON.stringify(summarizeImage(m), null, 2) : describeImage(m, dir));
    });

  p.command('demo')
    .description('checkpoint and restore a bundled sample job, showing it continue with the same PID')
    .action(async () => {
      const { demo } = await import('./demo.js');
      result.code = await demo(out);
    });

  return p;
}

/** Exit code for a job that ended: checkpointed, its own code, or (mirrored) its signal. */
function finish(exit: { code: number | null; signal: NodeJS.Signals | null }, checkpointedTo: string | null, name: string): number {
  if (checkpointedTo) {
    err(`crest: job ${name} was checkpointed to ${checkpointedTo} and stopped; resume it with: crest restore -D ${checkpointedTo}`);
    return EXIT.CHECKPOINTED;
  }
  if (exit.signal) {
    for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2'] as const) process.removeAllListeners(s);
    process.kill(process.pid, exit.signal);
    return 128;
  }
  return exit.code ?? EXIT.ERROR;
}

/** Runs the CLI on argv; resolves to the exit code. Nothing below here exits the process. */
export async function main(argv: string[]): Promise<number> {
  const result = { code: EXIT.OK as number };
  const p = program(result);
  p.configureOutput({ writeErr: (s) => process.stderr.write(s), writeOut: (s) => process.stdout.write(s) });
  try {
    await p.parseAsync(argv, { from: 'user' });
    return result.code;
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') return EXIT.OK;
      return EXIT.USAGE;
    }
    if (e instanceof CrestError) {
      err(`crest: ${e.message}`);
      if (process.env.CREST_DEBUG && e.cause) err(`cause: ${String((e.cause as Error).stack ?? e.cause)}`);
      return e.code === 'USAGE' ? EXIT.USAGE : EXIT.ERROR;
    }
    err(`crest: internal error: ${(e as Error).stack ?? String(e)}`);
    return EXIT.ERROR;
  }
}
