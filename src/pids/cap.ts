// cap: crest-pidhelper, given CAP_CHECKPOINT_RESTORE by an administrator,
// creates the husk and its threads with clone3 set_tid in the host's pid
// namespace, then drops the capability from every thread before crest
// touches them. The husk therefore holds no capability: its threads come
// from the helper, and /proc/self/exe cannot be changed (PR_SET_MM_MAP's
// exe_fd needs the capability in the process itself).
import type { Manifest } from '../image/schema.js';
import { CrestError } from '../sys/errors.js';
import { awaitHostHusks, awaitIdsFree, preflightHostImage, spawnPidHelper } from './host.js';
import { pidHelperCapability, setcapCommand } from './pidhelper.js';
import type { PidMode } from './types.js';

export const cap: PidMode = {
  name: 'cap',
  huskPrivileged: false,
  async preflight(m: Manifest) {
    preflightHostImage(m, 'cap');
    const c = pidHelperCapability();
    if (!c.capable) {
      throw new CrestError('CAP_MISSING', `the cap mode needs crest-pidhelper to hold CAP_CHECKPOINT_RESTORE: ${c.why}. An administrator enables it with: ${setcapCommand(c.path)}`);
    }
    await awaitIdsFree(m);
  },
  spawn(m, opts) {
    return spawnPidHelper('husk', m, opts);
  },
  awaitHusks(helper, m) {
    return awaitHostHusks(helper, m, 'cap', 10_000);
  },
};
