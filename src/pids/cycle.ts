// cycle: no privilege at all. crest-pidhelper (having dropped whatever
// capability it has) uses up IDs - threads that exit at once - until the
// kernel's counter hands out the wanted PID, creates the husk then, and the
// husk does the same for each thread ID. Slow (a whole wrap of the counter
// at worst) and racy (another process may take the ID first: the helper
// goes round again, bounded in time); a last resort for processes dumped
// outside a crest job when the cap mode is not enabled.
import type { Manifest } from '../image/schema.js';
import { CrestError } from '../sys/errors.js';
import { awaitHostHusks, awaitIdsFree, preflightHostImage, spawnPidHelper } from './host.js';
import { pidHelperCapability } from './pidhelper.js';
import type { PidMode } from './types.js';

/** How long cycling may take by default. */
export const CYCLE_TIMEOUT_MS = 30_000;

export const cycle: PidMode = {
  name: 'cycle',
  huskPrivileged: false,
  async preflight(m: Manifest) {
    preflightHostImage(m, 'cycle');
    const c = pidHelperCapability();
    if (!c.built) throw new CrestError('HELPER_MISSING', c.why);
    await awaitIdsFree(m);
  },
  spawn(m, opts) {
    return spawnPidHelper('cycle', m, { ...opts, cycleTimeoutMs: opts.cycleTimeoutMs ?? CYCLE_TIMEOUT_MS });
  },
  awaitHusks(helper, m, opts) {
    // The helper stops itself at the bound; allow for starting and parking on top.
    return awaitHostHusks(helper, m, 'cycle', (opts.cycleTimeoutMs ?? CYCLE_TIMEOUT_MS) + 10_000);
  },
};
