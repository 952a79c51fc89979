// userns: a crest job owns its user+pid namespace, and inside it the husks
// get any PID by clone3 set_tid with no privilege on the host
// (helper/crest-helper.c `restore`). The default, and the only mode for
// images of crest jobs.
import type { Manifest } from '../image/schema.js';
import { Helper, restoreStdio } from '../jobs/supervise.js';
import { CrestError } from '../sys/errors.js';
import { readUntil } from './lines.js';
import { planImageTree } from '../restore/treebuild.js';
import type { Husks, PidMode } from './types.js';

export const userns: PidMode = {
  name: 'userns',
  huskPrivileged: true,
  async preflight(m: Manifest) {
    if (m.job.pidMode !== 'userns') {
      throw new CrestError('MODE_MISMATCH', `the image is of a process outside any crest job (PID mode ${m.job.pidMode}): its PIDs are the host's, not a job's; restore it with --mode cap or --mode cycle`);
    }
  },
  spawn(m, opts) {
    // The helper makes the children of the job's init (the first process
    // first: the helper's init waits for it as the job); restore forks the rest.
    const tasks = planImageTree(m).initForks.flatMap((f) => ['--task', String(f.pid)]);
    // A job with its own network namespace (crest run --net) gets a new one, loopback up.
    return new Helper('restore', [...(m.job.net ? ['--net'] : []), ...tasks], { detached: opts.detached, stdio: restoreStdio(m, !!opts.detached) });
  },
  async awaitHusks(helper) {
    const pids = new Map<number, number>();
    return readUntil<Husks>(helper, "crest's helper", 10_000, (word, [a, b]) => {
      if (word === 'husk') pids.set(Number(a), Number(b));
      else if (word === 'ready') return { initPid: Number(a), pids, threads: new Map() };
      else if (word === 'error') {
        throw new CrestError(b === 'EEXIST' ? 'PID_TAKEN' : 'HELPER_FAILED', `could not create pid ${a} in the job's namespace: ${b}`);
      }
      return undefined;
    });
  },
};
