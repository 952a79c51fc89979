// pids/: the three ways to get PIDs back behind one interface (./types.ts),
// and the choice between them. userns for images of crest jobs (the job's
// own pid namespace); for a process dumped outside a job, cap when
// crest-pidhelper holds CAP_CHECKPOINT_RESTORE, else cycle.
import type { Manifest } from '../image/schema.js';
import { CrestError } from '../sys/errors.js';
import { cap } from './cap.js';
import { cycle } from './cycle.js';
import { pidHelperCapability, setcapCommand } from './pidhelper.js';
import { PID_MODES, type ModeChoice, type PidMode, type PidModeName } from './types.js';
import { userns } from './userns.js';

export { PID_MODES, type CycleStats, type Husks, type ModeChoice, type PidMode, type PidModeName, type SpawnOptions } from './types.js';
export { pidHelperCapability, pidHelperPath, probePidHelper, setcapCommand, type PidHelperCapability } from './pidhelper.js';
export { holderOf, restoreSession, type Holder } from './host.js';

const MODES: Record<PidModeName, PidMode> = { userns, cap, cycle };

export function pidMode(name: PidModeName): PidMode {
  return MODES[name];
}

/** The mode for this image: `requested` if it can serve it, else the best one available. */
export function choosePidMode(m: Manifest, requested?: PidModeName): ModeChoice {
  if (requested !== undefined && !PID_MODES.includes(requested)) {
    throw new CrestError('USAGE', `unknown PID mode ${JSON.stringify(requested)}: userns, cap or cycle`);
  }
  if (m.job.pidMode === 'userns') {
    if (requested !== undefined && requested !== 'userns') {
      throw new CrestError('MODE_MISMATCH', `--mode ${requested} restores processes dumped outside a crest job; this image is of a crest job, whose PIDs live in its own pid namespace: restore it in the userns mode (the default)`);
    }
    return { mode: userns, why: `${requested ? 'asked for (--mode userns); ' : ''}the image is of a crest job: its PIDs come back in a new job's own pid namespace` };
  }
  if (requested === 'userns') {
    throw new CrestError('MODE_MISMATCH', 'the image is of a process outside any crest job: its PIDs are the host\'s, not a job\'s; restore it with --mode cap or --mode cycle (or without --mode)');
  }
  const c = pidHelperCapability();
  if (requested === 'cycle') return { mode: cycle, why: 'asked for (--mode cycle)' };
  if (requested === 'cap') return { mode: cap, why: `asked for (--mode cap); ${c.why}` };
  if (c.capable) return { mode: cap, why: c.why };
  return { mode: cycle, why: `${c.why}, so PIDs are reached by cycling (slow); an administrator can enable the cap mode with: ${setcapCommand(c.path)}` };
}
