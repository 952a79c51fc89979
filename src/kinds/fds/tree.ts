// The fd tables of the whole dumped tree, looked at once while every process
// is frozen: which open file descriptions several processes hold (a pipe end
// or a log file inherited over fork, a socket passed on), found with
// kcmp(KCMP_FILE) between processes, asked only of descriptions of the same
// inode (st_dev, st_ino) so that the kcmp count stays low. The first process
// in image order that holds a description owns it (dumps it, and restores it
// first); the others refer to it.
//
// Pipes have no name another process could open them by, save
// /proc/PID/fd/N: one opened that way by a process outside the tree is an end
// the kernel does not tell apart from the tree's own (poll sees a writer, or a
// reader, and nothing more). So the fd tables of every process crest may look
// at (the user's own) are searched for the tree's pipes too.
//
// Two processes that share one fd table (clone CLONE_FILES without
// CLONE_THREAD) are refused: restored, each would have a table of its own.
import { readdirSync, readlinkSync } from 'node:fs';
import { native } from '../../sys/native.js';
import { KCMP_FILE } from '../../sys/constants.js';
import { readStatus } from '../../proc/index.js';
import { unsupported } from '../types.js';
import type { FdProbe, TreeFds, TreeProcess } from './types.js';

const KCMP_FILES = 2;

/**
 * The tree's fd tables: `members` (host pids, image order) each probed with
 * `probe`, every description shared with an earlier process given its owner.
 */
export function linkTree(members: readonly number[], probe: (pid: number) => FdProbe[]): TreeFds {
  const procs: TreeProcess[] = members.map((hostPid) => {
    const fds = probe(hostPid);
    const ids = new Map<number, number>();
    for (const p of fds) if (p.rep === p.fd) ids.set(p.fd, ids.size);
    const nspid = readStatus(hostPid).nspid;
    return { hostPid, nsPid: nspid[nspid.length - 1]!, fds, ids };
  });
  if (procs.length > 1) {
    refuseSharedTables(procs);
    findOwners(procs);
  }
  return { procs, pipesOutside: pipesOutside(procs) };
}

/** Refuses two processes with one fd table (kcmp KCMP_FILES, asked only of tables of the same size). */
function refuseSharedTables(procs: readonly TreeProcess[]): void {
  const n = native();
  for (const [i, a] of procs.entries()) {
    for (const b of procs.slice(i + 1)) {
      if (a.fds.length !== b.fds.length || n.kcmp(a.hostPid, b.hostPid, KCMP_FILES, 0, 0) !== 0) continue;
      throw unsupported(b.hostPid, 'fd table', `it shares its fd table with pid ${a.hostPid} (clone with CLONE_FILES, not a thread), which is not supported yet`);
    }
  }
}

/** Sets `owner` on every description an earlier process holds too. */
function findOwners(procs: readonly TreeProcess[]): void {
  const n = native();
  // Descriptions owned so far, by inode: only these are compared (the job's standard streams stay each process's own).
  const owned = new Map<string, { proc: TreeProcess; p: FdProbe }[]>();
  for (const proc of procs) {
    const mine: [string, FdProbe][] = [];
    for (const p of proc.fds) {
      if (p.rep !== p.fd || p.stream !== null) continue;
      const key = `${p.st.dev}:${p.st.ino}`;
      const same = owned.get(key)?.find((o) => n.kcmp(o.proc.hostPid, proc.hostPid, KCMP_FILE, o.p.fd, p.fd) === 0);
      if (same) p.owner = { pid: same.proc.nsPid, id: same.proc.ids.get(same.p.fd)! };
      else mine.push([key, p]);
    }
    for (const [key, p] of mine) {
      const list = owned.get(key) ?? [];
      list.push({ proc, p });
      owned.set(key, list);
    }
  }
}

/** The tree's pipes (inodes) that a process outside it has open too, with one such process. */
function pipesOutside(procs: readonly TreeProcess[]): Map<number, number> {
  const out = new Map<number, number>();
  const pipes = new Set<number>();
  for (const proc of procs) for (const p of proc.fds) if (p.stream === null && p.st.isFIFO() && p.link.startsWith('pipe:[')) pipes.add(p.st.ino);
  if (pipes.size === 0) return out;
  const inTree = new Set(procs.map((p) => p.hostPid));
  for (const name of readdirSync('/proc')) {
    const pid = Number(name);
    if (!Number.isInteger(pid) || inTree.has(pid) || pid === process.pid) continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue; // not ours to look at, or gone
    }
    for (const fd of fds) {
      let link: string;
      try {
        link = readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      const m = /^pipe:\[(\d+)\]$/.exec(link);
      if (m && pipes.has(Number(m[1])) && !out.has(Number(m[1]))) out.set(Number(m[1]), pid);
    }
  }
  return out;
}
