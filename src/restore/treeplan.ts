// The plan that rebuilds a job's process tree: who creates which process,
// and when each one calls setsid and setpgid, so that every process ends up
// with its parent, its session and its process group. Pure: a function of
// the image (dump runs it too, to refuse a tree it could not rebuild), so
// it is tested on made-up trees (test/treeplan.test.ts); restore/treebuild.ts
// carries it out.
//
// The kernel's rules that shape it:
// - A process gets its session only from whoever forks it (or setsid, which
//   makes it the leader of a new one, named by its own pid). So a process
//   must be created by a process that is in its session at that moment.
//   Usually that is its parent. When the parent is a session leader that
//   forked it before its own setsid ("born" in the old session), the parent
//   forks it before calling setsid, and must itself be born there.
// - A process whose session came from a process that is gone (an orphan,
//   reparented to the job's init or to a subreaper) is created by a
//   temporary process in that session, which exits once it has forked it:
//   the kernel then reparents it where it was. When the session's leader is
//   gone too, the temporary process takes the leader's pid and calls setsid
//   (CRIU's trick); otherwise it is forked by a process of that session
//   under the same reaper.
// - setpgid moves a process only into a group of its own session, and a
//   group exists while one process is in it: group leaders create their
//   groups first (a temporary process with the pid of a leader that is gone),
//   then the members join, then the leaders that had moved on join their
//   final groups, and last the temporary processes exit.
// - Exits reparent at once: temporary processes exit after every process
//   exists; zombies (the image's exited, unreaped children) exit after them.
import { CrestError } from '../sys/errors.js';

/** What the plan needs of one process of the image. */
export interface TreeNode {
  /** PID in the job's namespace. */
  pid: number;
  /** 1: the job's init. */
  ppid: number;
  /** 0: outside the job (crest run's, at restore crest restore's). */
  pgid: number;
  sid: number;
  /** Signal its parent gets when it exits (clone's exit_signal; 17 = SIGCHLD). */
  exitSignal: number;
  /** PR_SET_CHILD_SUBREAPER: orphans below it are reparented to it. */
  subreaper: boolean;
  /** It has exited and waits for its parent to reap it. */
  zombie: boolean;
}

/** Who runs a step: a process of the tree by pid, or the job's init (1). */
export type Step =
  /** `by` forks `pid` (by = 1: crest's helper makes it as a child of the job's init). */
  | { op: 'fork'; by: number; pid: number; exitSignal: number; temp: boolean }
  | { op: 'setsid'; pid: number }
  /** setpgid(0, pgid) in `pid` (pgid = pid: it creates its group). */
  | { op: 'setpgid'; pid: number; pgid: number }
  | { op: 'subreaper'; pid: number }
  /** A temporary process exits; `reapBy` (a process of the tree, or 1 = init) reaps it. */
  | { op: 'exit-temp'; pid: number; reapBy: number };

export interface TreePlan {
  steps: Step[];
  /** What the job's init makes (its children), the image's first process first: `fork` steps with by = 1. */
  initForks: { pid: number }[];
  /** Temporary processes (not in the image). */
  temps: number[];
}

const SIGCHLD = 17;

interface Slot {
  pid: number;
  temp: boolean;
  /** Session leader of its own session (setsid after its `before` children). */
  leader: boolean;
  /** Forked before this one's setsid (they keep the session it was born in). */
  before: Slot[];
  after: Slot[];
  creator: Slot | null; // null: init
  exitSignal: number;
  subreaper: boolean;
}

function refuse(pid: number, why: string): CrestError {
  return new CrestError('UNSUPPORTED', `pid ${pid}: process tree: ${why}`);
}

/**
 * The steps that rebuild `nodes` (parents before children; the first is the
 * job's first process, a child of init). Throws a CrestError (UNSUPPORTED)
 * naming the process when the tree cannot be rebuilt.
 */
export function planTree(nodes: readonly TreeNode[], opts: { usedIds?: Iterable<number>; maxId?: number } = {}): TreePlan {
  const maxId = opts.maxId ?? 4194303;
  const byPid = new Map<number, TreeNode>();
  for (const n of nodes) {
    if (byPid.has(n.pid)) throw refuse(n.pid, 'listed twice');
    if (n.ppid !== 1 && !byPid.has(n.ppid)) throw refuse(n.pid, `its parent ${n.ppid} is not an earlier process of the tree`);
    if (n.ppid !== 1 && byPid.get(n.ppid)!.zombie) throw refuse(n.pid, `its parent ${n.ppid} has exited`);
    if (n.sid !== 0 && n.pgid === 0) throw refuse(n.pid, `it is in session ${n.sid} of the job but in a process group outside it`);
    if (n.sid === n.pid && n.pgid !== n.pid) throw refuse(n.pid, `it leads session ${n.sid} but is in process group ${n.pgid}`);
    byPid.set(n.pid, n);
  }
  const first = nodes[0];
  if (first && first.ppid !== 1) throw refuse(first.pid, "the tree's first process must be a child of the job's init");

  const slots = new Map<number, Slot>();
  const init: Slot = { pid: 1, temp: false, leader: false, before: [], after: [], creator: null, exitSignal: SIGCHLD, subreaper: false };
  const born = new Map<number, number>(); // session leader pid -> session it is born in
  const temps: Slot[] = [];
  const sessionTemps = new Map<string, Slot>();
  // Temporary pids above every id the image uses (pids, thread ids, groups, sessions).
  let nextTemp = Math.max(1, ...nodes.flatMap((n) => [n.pid, n.pgid, n.sid]), ...(opts.usedIds ?? [])) + 1;
  const freshPid = (): number => {
    if (nextTemp > maxId) throw refuse(nodes[0]!.pid, 'no free pid left for a temporary process');
    return nextTemp++;
  };
  const sidOf = (s: Slot): number => (s === init ? 0 : s.temp ? tempSid.get(s)! : byPid.get(s.pid)!.sid);
  const tempSid = new Map<Slot, number>();

  // The process orphans below `x` go to when their parent exits: the nearest subreaper at or above it, else init (1).
  const reaperOf = (pid: number): number => {
    for (let p = pid; p !== 1; p = byPid.get(p)!.ppid) if (byPid.get(p)!.subreaper) return p;
    return 1;
  };
  const order = new Map(nodes.map((n, i) => [n.pid, i]));

  const attach = (creator: Slot, s: Slot, when: 'before' | 'after'): void => {
    if (s.creator) {
      const c = s.creator;
      c.before = c.before.filter((x) => x !== s);
      c.after = c.after.filter((x) => x !== s);
    }
    s.creator = creator;
    creator[when].push(s);
  };

  /** A temporary process that gives session `sid` to orphans of `reaper`. */
  const sessionTemp = (p: TreeNode, reaper: number, sid: number): Slot => {
    const key = `${reaper}:${sid}`;
    const have = sessionTemps.get(key);
    if (have) return have;
    let t: Slot;
    if (!byPid.has(sid)) {
      // The leader is gone: the temporary process takes its pid and makes the session again.
      if ([...sessionTemps.values()].some((x) => x.pid === sid)) {
        throw refuse(p.pid, `session ${sid} (its leader exited) has orphans under different reapers; not supported`);
      }
      t = { pid: sid, temp: true, leader: true, before: [], after: [], creator: null, exitSignal: reaper === 1 ? SIGCHLD : 0, subreaper: false };
      attach(reaper === 1 ? init : slots.get(reaper)!, t, 'after');
    } else {
      // The leader lives: fork it from a process of that session whose orphans go where p's parent is.
      const x = nodes.find((n) => n.sid === sid && order.get(n.pid)! < order.get(p.pid)! && reaperOf(n.pid) === reaper);
      if (!x) {
        throw refuse(p.pid, `its session ${sid} came from a process that exited, and no process of that session has ${reaper === 1 ? "the job's init" : `subreaper ${reaper}`} as its reaper to recreate it from`);
      }
      t = { pid: freshPid(), temp: true, leader: false, before: [], after: [], creator: null, exitSignal: 0, subreaper: false };
      attach(slots.get(x.pid)!, t, 'after');
    }
    tempSid.set(t, sid);
    sessionTemps.set(key, t);
    temps.push(t);
    return t;
  };

  /** Attaches p's slot to a creator that is in session `need` (null: any) when it forks p. */
  const place = (p: TreeNode, need: number | null): void => {
    const s = slots.get(p.pid)!;
    const parent = p.ppid === 1 ? init : slots.get(p.ppid)!;
    if (need === null || sidOf(parent) === need) return attach(parent, s, 'after');
    if (p === first) throw refuse(p.pid, `the job's first process is in session ${need}, which it cannot have been born in`);
    if (parent !== init) {
      const q = byPid.get(p.ppid)!;
      const b = born.get(q.pid);
      if (q.sid === q.pid && (b === undefined || b === need)) {
        // q forked p before it called setsid: q is born in p's session too.
        born.set(q.pid, need);
        if (b === undefined) place(q, need);
        return attach(parent, s, 'before');
      }
      if (!q.subreaper) {
        throw refuse(p.pid, `it is in session ${need}, but its parent ${q.pid} is in session ${q.sid} and did not fork it before leaving it (nor is the parent a subreaper that adopted it)`);
      }
    }
    attach(sessionTemp(p, parent.pid, need), s, 'after');
  };

  for (const n of nodes) {
    slots.set(n.pid, { pid: n.pid, temp: false, leader: n.sid === n.pid, before: [], after: [], creator: null, exitSignal: n.exitSignal, subreaper: n.subreaper });
    place(n, n.sid === n.pid ? null : n.sid);
  }

  // Creation order: depth first from init, each creator forking its `before`
  // children, then calling setsid, then forking the others.
  const steps: Step[] = [];
  const pgidNow = new Map<number, number>();
  const visit = (c: Slot): void => {
    const fork = (x: Slot): void => {
      steps.push({ op: 'fork', by: c.pid, pid: x.pid, exitSignal: c === init ? SIGCHLD : x.exitSignal, temp: x.temp });
      pgidNow.set(x.pid, c === init ? 0 : pgidNow.get(c.pid)!);
      visit(x);
    };
    c.before.forEach(fork);
    if (c.leader) {
      steps.push({ op: 'setsid', pid: c.pid });
      pgidNow.set(c.pid, c.pid);
    }
    if (c.subreaper) steps.push({ op: 'subreaper', pid: c.pid });
    c.after.forEach(fork);
  };
  visit(init);

  // Process groups: leaders (or temporary stand-ins) create them, members join.
  const groups = [...new Set(nodes.map((n) => n.pgid).filter((g) => g !== 0))];
  const movers: TreeNode[] = [];
  for (const g of groups) {
    const members = nodes.filter((n) => n.pgid === g);
    const sid = members[0]!.sid;
    const other = members.find((m) => m.sid !== sid);
    if (other) throw refuse(other.pid, `process group ${g} spans sessions ${sid} and ${other.sid}`);
    const leader = byPid.get(g);
    if (leader) {
      if (leader.sid !== sid) throw refuse(g, `it leads process group ${g} in session ${sid} but is in session ${leader.sid}`);
      if (leader.sid === leader.pid) continue; // setsid made the group
      steps.push({ op: 'setpgid', pid: g, pgid: g });
      pgidNow.set(g, g);
      if (leader.pgid !== g) movers.push(leader);
      continue;
    }
    if (temps.some((t) => t.pid === g && tempSid.get(t) === sid)) continue; // the session's stand-in leads it
    const x = members[0]!;
    const u: Slot = { pid: g, temp: true, leader: false, before: [], after: [], creator: slots.get(x.pid)!, exitSignal: 0, subreaper: false };
    tempSid.set(u, sid);
    temps.push(u);
    steps.push({ op: 'fork', by: x.pid, pid: g, exitSignal: 0, temp: true });
    steps.push({ op: 'setpgid', pid: g, pgid: g });
    pgidNow.set(g, g);
  }
  const join = (n: TreeNode): void => {
    if (n.sid === n.pid || pgidNow.get(n.pid) === n.pgid) return;
    if (n.pgid === 0) throw refuse(n.pid, 'it is in the process group outside the job, but would be created in another one');
    steps.push({ op: 'setpgid', pid: n.pid, pgid: n.pgid });
    pgidNow.set(n.pid, n.pgid);
  };
  nodes.filter((n) => !movers.includes(n)).forEach(join);
  movers.forEach(join);

  // Temporary processes go, last made first; orphans move to their reapers.
  for (const t of [...temps].reverse()) {
    steps.push({ op: 'exit-temp', pid: t.pid, reapBy: t.creator === init || t.creator === null ? 1 : t.creator.pid });
  }
  const initForks = steps.filter((s): s is Extract<Step, { op: 'fork' }> => s.op === 'fork' && s.by === 1).map((s) => ({ pid: s.pid }));
  // The helper waits for its first task as the job: the image's first process.
  if (first) initForks.sort((a, b) => Number(b.pid === first.pid) - Number(a.pid === first.pid));
  return { steps, initForks, temps: temps.map((t) => t.pid) };
}
