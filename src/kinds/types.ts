// The contract between the dump/restore stages and the resource kinds. A kind
// knows one kind of kernel state; the stages know the order. Kinds never call
// each other: what one needs from another travels through the context.
import type { Thread } from '../tracer/tracer.js';
import type { ProcStat, ProcStatus } from '../proc/index.js';
import type { Manifest, ProcessImage, ThreadImage } from '../image/schema.js';
import type { ImageWriter } from '../image/writer.js';
import type { PageTracking } from './pagetrack.js';
import { CrestError } from '../sys/errors.js';
import type { SharedObjects } from './objects.js';

/** How TCP connections are taken: the job's network namespace and `--tcp-close`. */
export interface TcpPolicy {
  /** The job has its own network namespace (`crest run --net`): crest may repair its connections (TCP_REPAIR). */
  ownNetns: boolean;
  /** `crest dump --tcp-close`: connections crest cannot recreate are taken as closed (reset by the peer at restore). */
  close: boolean;
}

/** What a kind sees while a process is being dumped. */
export interface DumpContext {
  /** The process as the dumper sees it (host pid namespace). */
  hostPid: number;
  /** The same process as it sees itself (innermost pid namespace). */
  nsPid: number;
  /** The job's init (crest helper), whose fds 0-2 are the job's outside stdio; null outside a job. */
  initHostPid: number | null;
  /** Every process of the dumped tree (host pids), in image order: parents before children, this one among them. */
  members: readonly number[];
  tcp: TcpPolicy;
  status: ProcStatus;
  stat: ProcStat;
  /** The frozen main thread; injection is possible while `scratch` is non-zero. */
  thread: Thread;
  /** Address of a scratch area in the target during the injection window, else 0. */
  scratch: number;
  scratchSize: number;
  /** Allocates bytes in the scratch area (valid during the injection window). */
  mem: ScratchAllocator;
  /** The process image being filled in by the kinds. */
  proc: Partial<ProcessImage>;
  /** The main thread's image being filled in. */
  thr: Partial<ThreadImage>;
  /** Every thread (main first) with its image being filled in. */
  threads: ThreadSlot[];
  writer: ImageWriter;
  warnings: string[];
  /** Incremental checkpoints: hash every page, compare with the parent's (kinds/pagetrack.ts). */
  pageTracking?: PageTracking;
  /**
   * Process trees (kinds/tree.ts): its stopped children and its zombies
   * (pids in the job); filled in: the stops it has not collected yet, and
   * the wait status each zombie has for it.
   */
  tree?: { stoppedChildren: number[]; unreported: Set<number>; zombies: number[]; status: Map<number, number> };
}

/** One frozen thread and the image being filled in for it. */
export interface ThreadSlot {
  thread: Thread;
  thr: Partial<ThreadImage>;
}

/** What a kind sees while a process is being rebuilt in a husk. */
export interface RestoreContext {
  manifest: Manifest;
  proc: ProcessImage;
  dir: string;
  /** The husk's main thread, stopped; all injected calls go through it. */
  thread: Thread;
  /** The husk's PID in the host namespace (for /proc reads). */
  huskHostPid: number;
  /** Scratch area in the husk: a `syscall` instruction at `scratch`, free bytes after it. */
  scratch: number;
  scratchSize: number;
  /** Allocates bytes in the scratch area. */
  mem: ScratchAllocator;
  warnings: string[];
  /** Objects the processes of the tree share (memfds, deleted files, shared anonymous memory): one per restore. */
  objects: SharedObjects;
  /** `crest restore --tcp-close`: every TCP connection comes back closed (reset by its peer), even those the image could recreate. */
  tcpClose?: boolean;
  /**
   * The PID mode's name when the husk holds no capability (cap, cycle:
   * crest-pidhelper dropped them all), for what cannot be done without one.
   */
  unprivilegedMode?: string;
}

/** One kind of resource: how it is refused, captured and rebuilt. */
export interface Kind {
  readonly name: string;
  /** Reads /proc only (the process still runs): refuses what this kind cannot capture. */
  check?(ctx: Pick<DumpContext, 'hostPid' | 'nsPid' | 'status' | 'stat' | 'initHostPid' | 'tcp'>): void;
  /** Runs inside the injection window (scratch available, signals blocked). Keep it short. */
  dumpInjected?(ctx: DumpContext): void;
  /** Runs after the injection window, with the thread stopped and its registers back. */
  dump?(ctx: DumpContext): void | Promise<void>;
  /** Per-thread part of the injection window: runs in each thread (scratch shared). */
  dumpThreadInjected?(ctx: DumpContext, slot: ThreadSlot): void;
  /** Per-thread collection after the injection window. */
  dumpThread?(ctx: DumpContext, slot: ThreadSlot): void;
  /** Rebuilds this kind's process-wide state in the husk. */
  restore?(ctx: RestoreContext): void;
  /** Rebuilds this kind's per-thread state, in thread `thread` of the husk. */
  restoreThread?(ctx: RestoreContext, thread: Thread, img: ThreadImage): void;
}

/** Refusal of a process crest cannot fully capture: names pid, what and why. */
export function unsupported(pid: number, what: string, why: string): CrestError {
  return new CrestError('UNSUPPORTED', `pid ${pid}: ${what}: ${why}; the process was left running untouched`);
}

/** Writes bytes into the scratch area (after the syscall instruction) and returns their address. */
export class ScratchAllocator {
  private next: number;
  constructor(
    private readonly thread: Thread,
    private readonly base: number,
    private readonly size: number,
    /** Bytes at `base` that are not the allocator's (the restore's syscall instruction). */
    private readonly reserved = 16,
  ) {
    this.next = base + reserved;
  }
  reset(): void {
    this.next = this.base + this.reserved;
  }
  /** Copies `data` into the scratch area; returns the address. */
  put(data: Buffer): number {
    const at = Math.ceil(this.next / 8) * 8; // addresses exceed 32 bits: no bitwise ops
    if (at + data.length > this.base + this.size) {
      throw new CrestError('SCRATCH_FULL', `scratch area too small for ${data.length} bytes`);
    }
    this.thread.writeMem(at, data);
    this.next = at + data.length;
    return at;
  }
  /** Reserves `len` zeroed bytes; returns the address. */
  alloc(len: number): number {
    return this.put(Buffer.alloc(len));
  }
  /** A NUL-terminated string. */
  str(s: string): number {
    return this.put(Buffer.from(s + '\0'));
  }
}
