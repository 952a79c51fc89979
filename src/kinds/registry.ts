// The one list of resource kinds. Dump runs their checks, injected parts and
// dumps in this order; restore calls them in the order restore/ defines.
import type { Kind } from './types.js';
import { creds } from './creds.js';
import { files } from './files.js';
import { memory } from './memory.js';
import { mm } from './mm.js';
import { processAttrs } from './process.js';
import { registers } from './registers.js';
import { sched } from './sched.js';
import { signals } from './signals.js';
import { threadState } from './threadstate.js';
import { tree } from './tree.js';
import { posixTimers } from './timers.js';

export const KINDS: readonly Kind[] = [creds, processAttrs, tree, mm, files, signals, posixTimers, threadState, sched, registers, memory];

/** A kind by name; an unknown name is a programming error, refused loudly. */
export function kind(name: string): Kind {
  const k = KINDS.find((x) => x.name === name);
  if (!k) throw new Error(`unknown resource kind ${name}`);
  return k;
}
