// The contract between restore and the ways of getting PIDs back. A mode
// refuses what it cannot do before any process exists, starts the helper
// that makes the husks (placeholder processes with the image's PIDs), and
// reads the helper's report of them. Restore then seizes the husks the same
// way whatever the mode.
import type { Manifest } from '../image/schema.js';
import type { Helper } from '../jobs/supervise.js';

export type PidModeName = 'userns' | 'cap' | 'cycle';
export const PID_MODES: readonly PidModeName[] = ['userns', 'cap', 'cycle'];

/** How many IDs cycling used up, in how long, and the rate that makes. */
export interface CycleStats {
  ids: number;
  ms: number;
  /** IDs per second. */
  rate: number;
}

/** What a mode's helper made. */
export interface Husks {
  /**
   * The process the job record names as the job's anchor: the job's init
   * (userns) or the PID helper that parents the husk (cap, cycle).
   */
  initPid: number;
  /** Host PID of the husk of each image PID. */
  pids: Map<number, number>;
  /** Host TID of each thread the helper made already, by image TID (cap, cycle). */
  threads: Map<number, number>;
  cycled?: CycleStats;
}

export interface SpawnOptions {
  detached: boolean;
  /** cycle: give up after this long (default 30 s). */
  cycleTimeoutMs?: number;
}

/** One way of getting PIDs back. */
export interface PidMode {
  readonly name: PidModeName;
  /**
   * Whether the husks hold a capability over their pid namespace: then
   * restore may create threads with clone3 set_tid itself and set
   * /proc/self/exe; otherwise the helper makes the threads, and
   * /proc/self/exe stays the helper's.
   */
  readonly huskPrivileged: boolean;
  /** Refusals that need no process (the image's kind, IDs in range and free ...). */
  preflight(m: Manifest): Promise<void>;
  /** Starts the helper that makes the husks. */
  spawn(m: Manifest, opts: SpawnOptions): Helper;
  /** Reads the helper's report until every husk exists. */
  awaitHusks(helper: Helper, m: Manifest, opts: SpawnOptions): Promise<Husks>;
}

/** The mode restore uses and why it was picked. */
export interface ModeChoice {
  mode: PidMode;
  why: string;
}
