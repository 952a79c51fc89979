// Verbs, options and exit codes of the crest command. Knows nothing of
// ptrace: it parses, calls the API, prints, and maps errors to exit codes.
import { Command, CommanderError, InvalidArgumentError, Option } from '@commander-js/extra-typings';
import { resolve } from 'node:path';
import { CrestError } from '../sys/errors.js';
import { CREST_VERSION } from '../version.js';
import { EXIT_CHECKPOINTED } from '../jobs/run.js';
import { barSink, progressWanted, withProgress } from './progress.js';

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

/** "10m", "90s", "1h", "500ms", "1.5h", or plain seconds. */
export function durationArg(v: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?$/.exec(v.trim());
  if (!m) throw new InvalidArgumentError(`expected a duration such as 90s, 10m or 1h, got ${JSON.stringify(v)}`);
  const ms = Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
  if (ms < 100 || ms > 2 ** 31 - 1) throw new InvalidArgumentError(`a duration between 100ms and 24 days, got ${JSON.stringify(v)}`);
  return ms;
}

/** Signals crest run --on-signal may take for itself (not KILL or STOP, which cannot be caught). */
const WARNING_SIGNALS = ['SIGUSR1', 'SIGUSR2', 'SIGTERM', 'SIGHUP', 'SIGINT', 'SIGQUIT', 'SIGXCPU', 'SIGPWR', 'SIGALRM'] as const;
export function signalArg(v: string): NodeJS.Signals {
  const up = v.trim().toUpperCase();
  const name = (up.startsWith('SIG') ? up : `SIG${up}`) as NodeJS.Signals;
  if (!(WARNING_SIGNALS as readonly string[]).includes(name)) {
    throw new InvalidArgumentError(`expected one of ${WARNING_SIGNALS.map((x) => x.slice(3)).join(', ')}, got ${JSON.stringify(v)}`);
  }
  return name;
}

function countArg(v: string): number {
  if (!/^[1-9][0-9]*$/.test(v)) throw new InvalidArgumentError(`expected a positive whole number, got ${JSON.stringify(v)}`);
  return Number(v);
}

const when = (iso: string | undefined): string => (iso ? iso.replace('T', ' ').replace(/\.[0-9]+Z$/, 'Z') : '?');

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
      const { pidHelperPath } = await import('../pids/pidhelper.js');
      const report = runCheck({ helperPath: helperPath(), pidHelperPath: pidHelperPath() });
      out(o.json ? JSON.stringify(report, null, 2) : formatCheck(report));
    });

  p.command('run')
    .description('run a command as a restorable job (own user+pid+mount namespace)')
    .option('--name <name>', 'job name (default: the command name)')
    .option('--net', 'give the job its own network namespace (loopback only), so that its TCP connections can be checkpointed and restored')
    .option('--checkpoint-dir <dir>', 'checkpoint into DIR (DIR/ckpt-0001 ...); a DIR that holds checkpoints is resumed instead of starting the command')
    .option('--every <duration>', 'with --checkpoint-dir: checkpoint this often (90s, 10m, 1h), the job running on', durationArg)
    .option('--on-signal <signal>', "with --checkpoint-dir: on this signal (USR1 ...), checkpoint, stop the job and exit 75; the signal is crest's, not the job's", signalArg)
    .option('--keep <n>', 'with --checkpoint-dir: keep the newest N checkpoints (and what they depend on)', countArg)
    .option('--full-every <n>', 'with --checkpoint-dir: checkpoints store only changed pages, a full one every N (1: all full; default 8)', countArg)
    .option('--compress', 'with --checkpoint-dir: compress the pages (zstd, a fast level)')
    .argument('<command...>', 'the command and its arguments (after --)')
    .action(async (command, o) => {
      if (o.checkpointDir === undefined) {
        if (o.every !== undefined || o.onSignal !== undefined || o.keep !== undefined || o.fullEvery !== undefined || o.compress) {
          throw new CrestError('USAGE', '--every, --on-signal, --keep, --full-every and --compress need --checkpoint-dir DIR');
        }
        const { run } = await import('../jobs/run.js');
        const r = await run({ command, name: o.name, net: !!o.net });
        result.code = finish(r.exit, r.checkpointedTo, r.name);
        return;
      }
      const { runWithCheckpoints } = await import('../jobs/batch.js');
      const r = await runWithCheckpoints({
        command,
        name: o.name,
        checkpointDir: resolve(o.checkpointDir),
        everyMs: o.every,
        onSignal: o.onSignal,
        keep: o.keep,
        fullEvery: o.fullEvery,
        compress: !!o.compress,
        net: !!o.net,
        log: (l) => err(`crest: ${l}`),
        resumeProgress: progressWanted() ? barSink() : null,
      });
      if (r.checkpointedTo) {
        err(`crest: job ${r.name} was checkpointed to ${r.checkpointedTo} and stopped; run the same crest run command again to resume it`);
        result.code = EXIT.CHECKPOINTED;
      } else {
        result.code = finish(r.exit, null, r.name);
      }
    });

  p.command('checkpoint')
    .description('checkpoint a job started with crest run --checkpoint-dir into its directory, now')
    .requiredOption('--job <name>', 'the job name')
    .option('--stop', 'stop the job once the checkpoint is complete (its crest run exits 75)')
    .option('--wait <duration>', 'how long to wait for a checkpoint already being written', durationArg, 60_000)
    .option('--json', 'print the result as JSON')
    .action(async (o) => {
      const { loadJob } = await import('../jobs/registry.js');
      const { CheckpointDir } = await import('../jobs/ckptdir.js');
      const { takeCheckpoint } = await import('../jobs/checkpoint.js');
      const { describeCompression, trackerWords } = await import('../image/show.js');
      const rec = loadJob(o.job);
      if (!rec) throw new CrestError('NO_SUCH_JOB', `no running job named ${JSON.stringify(o.job)}`);
      if (!rec.checkpointDir) {
        throw new CrestError('NO_CHECKPOINT_DIR', `job ${o.job} was not started with --checkpoint-dir; checkpoint it with crest dump --job ${o.job} -D DIR`);
      }
      const cd = CheckpointDir.open(rec.checkpointDir);
      const t = await withProgress(() => takeCheckpoint({ cd, job: o.job, stop: !!o.stop, reason: 'request', keep: rec.checkpointKeep, fullEvery: rec.checkpointFullEvery, compress: rec.checkpointCompress, lockWaitMs: o.wait }));
      if (o.json) {
        out(JSON.stringify({ checkpoint: t.name, path: t.path, parent: t.parent, tracker: t.tracker, compression: t.compression, bytes: t.bytes, durationMs: t.durationMs, pauseMs: t.pauseMs, stopped: t.stopped, removed: t.gc?.removed ?? [] }));
      } else {
        for (const w of t.dump.warnings) err(`crest: warning: ${w}`);
        err(
          `crest: checkpoint ${t.path}${t.parent ? ` (incremental on ${t.parent}, changes found by ${trackerWords(t.tracker)})` : ''}${t.compression ? `, ${describeCompression(t.compression)}` : ''}: ${mib(t.bytes)} in ${t.durationMs.toFixed(0)} ms; ` +
            (t.stopped ? 'job stopped' : `the job was paused ${t.pauseMs!.toFixed(0)} ms`),
        );
      }
    });

  p.command('ls')
    .description('list the checkpoints of a checkpoint directory')
    .argument('<dir>', 'the checkpoint directory (crest run --checkpoint-dir)')
    .option('--verify', 'check every byte (default: sizes and manifests only)')
    .option('--json', 'print JSON')
    .action(async (dir, o) => {
      const { CheckpointDir } = await import('../jobs/ckptdir.js');
      const cd = CheckpointDir.open(resolve(dir));
      const list = cd.list({ verifyData: !!o.verify });
      const newest = [...list].reverse().find((e) => e.status === 'complete');
      const run = cd.runLockHolder();
      const fin = cd.finished();
      if (o.json) {
        out(
          JSON.stringify(
            {
              dir: cd.dir,
              command: cd.marker.command,
              running: run,
              finished: fin,
              newest: newest?.name ?? null,
              checkpoints: list.map((e) => ({ name: e.name, status: e.status, createdAt: e.createdAt ?? null, bytes: e.bytes, parent: e.parent, tracker: e.tracker, problem: e.problem ?? null })),
            },
            null,
            1,
          ),
        );
        return;
      }
      out(`${cd.dir}: checkpoints of \`${cd.marker.command.join(' ')}\`${run ? `, in use by crest run pid ${String(run.pid)}` : ''}${fin ? `, finished (exit ${fin.exitCode})` : ''}`);
      if (list.length === 0) {
        out('  (no checkpoints yet)');
        return;
      }
      // PARENT: what an incremental checkpoint is taken on; TRACKER: how it found what changed (full: none needed).
      const rows = list.map((e) => [e.name, when(e.createdAt), mib(e.bytes), e.parent ?? '-', e.parent ? (e.tracker ?? 'page-hash') : e.manifest ? 'full' : '-', e.status + (e === newest ? ' (newest)' : '')]);
      const head = ['NAME', 'TIME', 'SIZE', 'PARENT', 'TRACKER', 'STATUS'];
      const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
      const line = (r: string[]): string => r.map((c, i) => (i === 2 ? c.padStart(w[i]!) : c.padEnd(w[i]!))).join('  ').trimEnd();
      out(line(head));
      for (const r of rows) out(line(r));
      for (const e of list) if (e.problem) out(`${e.name}: ${e.problem}`);
    });

  p.command('gc')
    .description('remove old checkpoints of a checkpoint directory, never one a kept checkpoint depends on')
    .argument('<dir>', 'the checkpoint directory')
    .requiredOption('--keep <n>', 'how many complete checkpoints to keep (the newest)', countArg)
    .option('--dry-run', 'say what would be removed, remove nothing')
    .option('--json', 'print JSON')
    .action(async (dir, o) => {
      const { CheckpointDir, collectGarbage } = await import('../jobs/ckptdir.js');
      const cd = CheckpointDir.open(resolve(dir));
      const lock = await cd.lockCheckpoint({ gc: true }, 60_000);
      try {
        const r = collectGarbage(cd, o.keep, { dryRun: !!o.dryRun, lockHeld: true });
        if (!o.dryRun) for (const x of r.removed) cd.event('removed', { checkpoint: x.name, why: x.why, bytes: x.bytes });
        if (o.json) out(JSON.stringify({ dryRun: !!o.dryRun, ...r }));
        else {
          for (const x of r.removed) out(`${o.dryRun ? 'would remove' : 'removed'} ${x.name} (${mib(x.bytes)}): ${x.why}`);
          out(`kept ${r.kept.length ? r.kept.join(', ') : 'nothing'}`);
        }
      } finally {
        lock.release();
      }
    });

  p.command('dump')
    .description('checkpoint a crest job, or one of your processes, into an image directory')
    .option('--pid <pid>', 'any host PID of the job, or a process of yours outside any job', pidArg)
    .option('--job <name>', 'the job name')
    .requiredOption('-D, --dir <dir>', 'image directory')
    .option('--leave-running', 'keep the job running after the checkpoint')
    .option('--force', 'overwrite an image already in the directory')
    .option('--tcp-close', 'take TCP connections crest cannot recreate (outside a `crest run --net` job, or not ESTABLISHED) as closed: after restore the process finds each reset by its peer')
    .option('--json', 'print the result as JSON')
    .action(async (o) => {
      if ((o.pid === undefined) === (o.job === undefined)) {
        throw new CrestError('USAGE', 'name exactly one process: --pid PID or --job NAME');
      }
      const { dump } = await import('../dump/index.js');
      const r = await withProgress(() => dump({ pid: o.pid, job: o.job, dir: resolve(o.dir), leaveRunning: !!o.leaveRunning, force: !!o.force, tcpClose: !!o.tcpClose, reap: false }));
      if (o.json) out(JSON.stringify(r));
      else {
        for (const w of r.warnings) err(`crest: warning: ${w}`);
        const where = r.pidMode === 'host' ? 'outside any job: PID mode host' : `pid ${r.nsPid} in job ${r.jobName ?? '?'}`;
        err(
          `crest: checkpointed pid ${r.pid} (${where}) to ${r.dir}: ${mib(r.pagesBytes)} of memory in ${r.durationMs.toFixed(0)} ms; ${r.stopped ? 'job stopped' : 'job left running'}`,
        );
      }
    });

  p.command('restore')
    .description('restore a job from an image directory')
    .requiredOption('-D, --dir <dir>', 'image directory')
    .option('--detach', 'return once the job runs, leaving it in the background')
    .option('--name <name>', 'name for the restored job (default: the image\'s)')
    .addOption(
      new Option('--mode <mode>', 'how the PIDs come back: userns (a job\'s own namespace), cap (crest-pidhelper with CAP_CHECKPOINT_RESTORE), cycle (PID cycling); default: the best available for the image').choices(['userns', 'cap', 'cycle'] as const),
    )
    .option('--tcp-close', 'bring every TCP connection back closed (reset by its peer), even those the image could recreate')
    .option('--json', 'print the result as JSON (with --detach)')
    .action(async (o) => {
      const { restore } = await import('../restore/index.js');
      const { forwardSignals } = await import('../jobs/supervise.js');
      const { loadJob, removeJob } = await import('../jobs/registry.js');
      const r = await withProgress(() => restore({ dir: resolve(o.dir), detach: !!o.detach, name: o.name, mode: o.mode, tcpClose: !!o.tcpClose }));
      const cycled = r.cycled ? `; cycled ${r.cycled.ids} IDs in ${r.cycled.ms.toFixed(0)} ms (${r.cycled.rate} PIDs/s)` : '';
      err(`crest: PID mode ${r.pidMode}: ${r.pidModeWhy}${cycled}`);
      for (const w of r.warnings) err(`crest: warning: ${w}`);
      if (o.detach) {
        r.helper.letGo();
        if (o.json) {
          out(
            JSON.stringify({
              job: r.jobName, pid: r.pid, nsPid: r.nsPid, initPid: r.initPid, pidMode: r.pidMode, pidModeWhy: r.pidModeWhy,
              ...(r.cycled ? { cycled: r.cycled } : {}), durationMs: r.durationMs, stages: r.stages, warnings: r.warnings,
            }),
          );
        } else {
          const where = r.pidMode === 'userns' ? `pid ${r.nsPid} in the job` : 'its own PID, outside any job';
          err(`crest: restored job ${r.jobName}: pid ${r.pid} (${where}) in ${r.durationMs.toFixed(0)} ms`);
        }
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
