// The process-tree plan (src/restore/treeplan.ts) on made-up trees: each
// plan is carried out by a small model of the kernel's rules (fork inherits
// session and group, setsid, setpgid within a session, reparenting to the
// nearest subreaper or init on exit), which refuses any step the kernel
// would refuse, and the resulting tree must be the image's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { planTree, type TreeNode, type TreePlan } from '../src/restore/treeplan.js';

interface Sim {
  ppid: number;
  sid: number;
  pgid: number;
  subreaper: boolean;
  alive: boolean;
}

/** Runs the plan in a model of the kernel; throws on a step the kernel refuses. */
function simulate(plan: TreePlan): Map<number, Sim> {
  const t = new Map<number, Sim>([[1, { ppid: 0, sid: 0, pgid: 0, subreaper: false, alive: true }]]);
  const get = (pid: number): Sim => {
    const s = t.get(pid);
    assert.ok(s && s.alive, `pid ${pid} does not exist`);
    return s;
  };
  const groupExists = (g: number, sid: number): boolean => [...t.entries()].some(([p, s]) => p !== 1 && s.alive && s.pgid === g && s.sid === sid);
  for (const step of plan.steps) {
    switch (step.op) {
      case 'fork': {
        const c = get(step.by);
        assert.ok(!t.get(step.pid)?.alive, `fork: pid ${step.pid} is taken`);
        t.set(step.pid, { ppid: step.by, sid: c.sid, pgid: c.pgid, subreaper: false, alive: true });
        break;
      }
      case 'setsid': {
        const s = get(step.pid);
        assert.ok(!groupExists(step.pid, s.sid) || s.pgid !== step.pid, `setsid: ${step.pid} leads a group`);
        assert.ok(![...t.values()].some((x) => x.alive && x.pgid === step.pid), `setsid: group ${step.pid} exists`);
        s.sid = step.pid;
        s.pgid = step.pid;
        break;
      }
      case 'setpgid': {
        const s = get(step.pid);
        assert.notEqual(s.sid, step.pid, `setpgid: ${step.pid} is a session leader`);
        if (step.pgid !== step.pid) assert.ok(groupExists(step.pgid, s.sid), `setpgid: no group ${step.pgid} in session ${s.sid} for ${step.pid}`);
        s.pgid = step.pgid;
        break;
      }
      case 'subreaper':
        get(step.pid).subreaper = true;
        break;
      case 'exit-temp': {
        const s = get(step.pid);
        s.alive = false;
        assert.equal(s.ppid, step.reapBy, `temp ${step.pid} is reaped by its parent`);
        let reaper = 1;
        for (let p = s.ppid; p !== 1; p = t.get(p)!.ppid) {
          if (t.get(p)!.subreaper) {
            reaper = p;
            break;
          }
        }
        for (const x of t.values()) if (x.alive && x.ppid === step.pid) x.ppid = reaper;
        break;
      }
    }
  }
  return t;
}

function node(pid: number, ppid: number, sid = 0, pgid = sid, extra: Partial<TreeNode> = {}): TreeNode {
  return { pid, ppid, sid, pgid, exitSignal: 17, subreaper: false, zombie: false, ...extra };
}

function check(nodes: TreeNode[]): TreePlan {
  const plan = planTree(nodes, { usedIds: [] });
  const t = simulate(plan);
  for (const n of nodes) {
    const s = t.get(n.pid);
    assert.ok(s && s.alive, `${n.pid} was not created`);
    assert.deepEqual({ pid: n.pid, ppid: s.ppid, sid: s.sid, pgid: s.pgid }, { pid: n.pid, ppid: n.ppid, sid: n.sid, pgid: n.pgid });
  }
  for (const p of plan.temps) assert.ok(!t.get(p)!.alive, `temporary ${p} is still there`);
  assert.equal(plan.initForks[0]?.pid, nodes[0]!.pid, "the job's first process is the helper's first task");
  return plan;
}

test('a plain tree: everything in the outer session, made by its parent', () => {
  const plan = check([node(2, 1), node(3, 2), node(4, 3)]);
  assert.deepEqual(plan.temps, []);
  assert.deepEqual(plan.initForks, [{ pid: 2 }]);
});

test('a session leader with a process group and a member', () => {
  check([node(2, 1), node(3, 2, 3), node(4, 3, 3, 4), node(5, 3, 3, 4), node(6, 3, 3)]);
});

test('born before setsid: a child forked in the old session, then the parent left it', () => {
  check([node(2, 1), node(3, 2, 3), node(4, 3, 0, 0)]);
  // Two levels: 3 was born in session 2 (of 2), 4 kept session 2.
  check([node(2, 1, 2), node(3, 2, 3), node(4, 3, 2, 2)]);
});

test('orphans of an exited session leader come back under init, with a stand-in leader', () => {
  // 5 led session 5, forked 6 and exited: 6 (and its child 7) are orphans in session 5, group 5.
  const plan = check([node(2, 1), node(6, 1, 5, 5), node(7, 6, 5, 5)]);
  assert.deepEqual(plan.temps, [5]);
});

test('an orphan of a living session leader, and a group whose leader exited', () => {
  // 3 leads session 3; its child 4 made group 4, forked 5, exited: 5 is init's, group 4, session 3.
  const plan = check([node(2, 1), node(3, 2, 3), node(5, 1, 3, 4), node(6, 3, 3, 4)]);
  assert.equal(plan.temps.length, 2);
});

test('orphans under a subreaper', () => {
  check([node(2, 1, 0, 0, { subreaper: true }), node(3, 2, 3), node(5, 2, 3)]);
  check([node(2, 1, 0, 0, { subreaper: true }), node(5, 2, 4, 4)]);
});

test('a group leader that moved to another group after members joined its group', () => {
  check([node(2, 1), node(3, 2, 0, 4), node(4, 2, 0, 4), node(5, 2, 0, 3)]);
});

test('zombies are created like the others (they exit later)', () => {
  check([node(2, 1, 2), node(3, 2, 2, 3, { zombie: true }), node(4, 2, 2, 3)]);
});

test('refused: a session the parent never had, without a subreaper', () => {
  assert.throws(() => planTree([node(2, 1), node(3, 2, 0, 0), node(4, 3, 9, 9)]), /pid 4: process tree/);
});

test('refused: a process whose parent is not in the tree', () => {
  assert.throws(() => planTree([node(2, 1), node(4, 3)]), /pid 4: .*parent 3/);
});

test('temporary pids stay clear of every id of the image', () => {
  const plan = planTree([node(2, 1), node(3, 2, 3), node(5, 1, 3, 4)], { usedIds: [900] });
  assert.ok(plan.temps.every((p) => p > 900 || p === 4), JSON.stringify(plan.temps));
});
