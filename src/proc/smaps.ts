// /proc/PID/smaps: each mapping's maps line followed by "Key:   value [kB]"
// lines, the last of which is "VmFlags: rd wr mr ...".
import { type MapEntry, parseMapLine } from './maps.js';
import { type PidRef, lines, parseError, procPath, readProcText } from './util.js';

/** One mapping of /proc/PID/smaps. */
export interface SmapsEntry extends MapEntry {
  /** Every "Key: N kB" line in kB: Size, KernelPageSize, Rss, Pss, Anonymous, Swap, ... */
  sizes: Record<string, number>;
  /** The other "Key: value" lines as printed (THPeligible, ProtectionKey, ...). */
  fields: Record<string, string>;
  /** The two-letter codes of the VmFlags line (rd, wr, ex, sh, mr, mw, me, ms, gd, ac, dd, sd, ...). */
  vmFlags: string[];
}

const FIELD = /^([A-Za-z_][A-Za-z0-9_]*):\s*(.*?)\s*$/;
const KB = /^(\d+) kB$/;

/** Parses the text of /proc/PID/smaps. Throws CrestError PROC_PARSE naming the bad line. */
export function parseSmaps(text: string, file = 'smaps'): SmapsEntry[] {
  const out: SmapsEntry[] = [];
  let cur: SmapsEntry | undefined;
  for (const line of lines(text)) {
    const header = parseMapLine(line, file);
    if (header) {
      cur = { ...header, sizes: {}, fields: {}, vmFlags: [] };
      out.push(cur);
      continue;
    }
    const m = FIELD.exec(line);
    if (!m) throw parseError(file, line, 'neither a mapping line nor a "Key: value" line');
    if (!cur) throw parseError(file, line, 'field before the first mapping line');
    const key = m[1]!;
    const value = m[2]!;
    if (key === 'VmFlags') {
      cur.vmFlags = value === '' ? [] : value.split(/\s+/);
      continue;
    }
    const kb = KB.exec(value);
    if (kb) {
      const n = Number(kb[1]);
      if (!Number.isSafeInteger(n)) throw parseError(file, line, 'size does not fit a JS number');
      cur.sizes[key] = n;
    } else {
      cur.fields[key] = value;
    }
  }
  return out;
}

/** Reads and parses /proc/PID/smaps. */
export function readSmaps(pid: PidRef, tid?: number): SmapsEntry[] {
  const path = procPath(pid, 'smaps', tid);
  return parseSmaps(readProcText(path), path);
}
