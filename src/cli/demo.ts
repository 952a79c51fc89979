// `crest demo`: a real checkpoint and restore of the bundled sample job,
// showing it continue from the same count with the same PID.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PACKAGE_ROOT } from '../paths.js';
import { CrestError } from '../sys/errors.js';

function readState(file: string): { pid: number; count: number } | null {
  try {
    const [pid, count] = readFileSync(file, 'utf8').trim().split(' ').map(Number);
    return pid && count ? { pid, count } : null;
  } catch {
    return null;
  }
}

export async function demo(say: (s: string) => void): Promise<number> {
  const { run } = await import('../jobs/run.js');
  const { dump } = await import('../dump/index.js');
  const { restore } = await import('../restore/index.js');
  const { freeJobName } = await import('../jobs/registry.js');
  const counter = join(PACKAGE_ROOT, 'demo', 'counter');
  if (!existsSync(counter)) throw new CrestError('DEMO_MISSING', `${counter} is not built; run npm ci`);
  const work = mkdtempSync(join(tmpdir(), 'crest-demo-'));
  const image = join(work, 'image');
  const state = join(work, 'state');
  const name = freeJobName('demo');
  try {
    say(`crest demo: running ${counter} as job ${name} (its own user+pid+mount namespace, no privilege)`);
    let hostPid = 0;
    const running = run({ command: [counter, state], name, onStart: (i) => (hostPid = i.pid) });
    await sleep(1300);
    const before = readState(state);
    say(`crest demo: checkpointing job ${name} to ${image}`);
    const d = await dump({ job: name, dir: image });
    const ended = await running;
    say(
      `crest demo: checkpoint written in ${d.durationMs.toFixed(0)} ms (${(d.pagesBytes / 1048576).toFixed(1)} MiB of memory); ` +
        `the job was stopped (crest run ${ended.checkpointedTo ? 'reported "checkpointed"' : 'ended'}), host pid ${hostPid} ${existsSync(`/proc/${hostPid}`) ? 'still exists' : 'is gone'}`,
    );
    await sleep(300);
    say('crest demo: restoring it');
    const r = await restore({ dir: image, name });
    say(`crest demo: restored in ${r.durationMs.toFixed(0)} ms as host pid ${r.pid}; it continues:`);
    await sleep(1300);
    const after = readState(state);
    process.kill(r.pid, 'SIGTERM');
    await r.exited;
    const samePid = !!before && !!after && before.pid === after.pid;
    const continued = !!before && !!after && after.count > before.count;
    say(
      `crest demo: before the checkpoint: pid ${before?.pid} at count ${before?.count}; after the restore: pid ${after?.pid} at count ${after?.count}`,
    );
    say(samePid && continued ? 'crest demo: OK - same PID, and it went on counting from where it was' : 'crest demo: FAILED');
    return samePid && continued ? 0 : 1;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
