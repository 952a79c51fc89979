// /proc/PID/task/TID/children: space-separated pids of the children that
// thread created (CONFIG_PROC_CHILDREN). The process's children are the
// union over its threads.
import { readdirSync } from 'node:fs';
import { CrestError } from '../sys/errors.js';
import { type PidRef, dec, procPath, readProcText } from './util.js';

/** Parses the text of one children file. Throws CrestError PROC_PARSE on malformed input. */
export function parseChildren(text: string, file = 'children'): number[] {
  const t = text.trim();
  return t === '' ? [] : t.split(/\s+/).map((s) => dec(s, file, text.trim(), 'child pid'));
}

/** Thread ids of a process, from /proc/PID/task, ascending. */
export function readTasks(pid: PidRef): number[] {
  const dir = `/proc/${pid}/task`;
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new CrestError(code === 'ENOENT' || code === 'ESRCH' ? 'PROC_GONE' : 'PROC_READ', `cannot list ${dir}: ${code ?? String(e)}`, { cause: e });
  }
  return names.filter((n) => /^\d+$/.test(n)).map(Number).sort((a, b) => a - b);
}

/**
 * Direct children of a process (of all its threads), in the order the threads
 * list them, without duplicates. Threads exiting meanwhile are skipped.
 */
export function readChildren(pid: PidRef): number[] {
  const seen = new Set<number>();
  for (const tid of readTasks(pid)) {
    const path = procPath(pid, 'children', tid);
    let text: string;
    try {
      text = readProcText(path);
    } catch (e) {
      if (e instanceof CrestError && e.code === 'PROC_GONE') continue;
      throw e;
    }
    for (const c of parseChildren(text, path)) seen.add(c);
  }
  return [...seen];
}
