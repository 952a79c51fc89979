// The contract between the file-descriptor driver (../files.ts) and the fd
// kinds (one module per kind of open file: regular files, pipes, eventfd,
// sockets ...). The driver owns what every fd shares: listing the fd table,
// grouping fds that share one open file description (kcmp, within a process
// and across the processes of the tree), the order of the hooks, the high-fd
// placement dance at restore and close-on-exec. A kind owns one kind of open
// file description: how to recognise it, refuse it, capture it and rebuild
// it in the husk (and, for a pipe or a socketpair, the ends other processes
// of the tree hold).
import type { Stats } from 'node:fs';
import type { FdInfo } from '../../proc/index.js';
import type { SockInfo } from './procnet.js';
import type { DataRef, FdImage, Manifest, OpenFileImage, ProcessImage } from '../../image/schema.js';
import { unsupported, type DumpContext, type RestoreContext, type TcpPolicy } from '../types.js';

/** One fd of the process being dumped, as /proc shows it. */
export interface FdProbe {
  fd: number;
  /** readlink of /proc/PID/fd/N: a path, "pipe:[123]", "anon_inode:[eventfd]" ... */
  link: string;
  /** stat through the /proc link (the open file's inode). */
  st: Stats;
  info: FdInfo;
  /** The job's standard stream from outside (the init's fd 0, 1 or 2) this fd shares, or null. */
  stream: 0 | 1 | 2 | null;
  /** The lowest fd sharing this fd's open file description (the fd itself when it is the first). */
  rep: number;
  /** For a socket: the /proc/PID/net table listing it and its line there; null for anything else. */
  sock: SockInfo | null;
  /**
   * An earlier process of the tree (image order) that holds this fd's
   * description too: its pid in the job and the description's id there.
   * Null when this process is the first (it dumps and restores the description).
   */
  owner: { pid: number; id: number } | null;
}

/** One frozen process of the dumped tree and its fd table. */
export interface TreeProcess {
  hostPid: number;
  /** Its pid in the job (the image's). */
  nsPid: number;
  fds: readonly FdProbe[];
  /** Description id by representative fd. */
  ids: ReadonlyMap<number, number>;
}

/** The fd tables of the whole dumped tree, looked at once while every process is frozen. */
export interface TreeFds {
  /** Every process, in image order. */
  procs: readonly TreeProcess[];
  /** Pipe inode -> a process outside the tree (host pid) that has the pipe open. */
  pipesOutside: ReadonlyMap<number, number>;
}

/** What a kind sees while the process still runs (refusals from /proc only). */
export interface FdCheckContext {
  hostPid: number;
  nsPid: number;
  initHostPid: number | null;
  tcp: TcpPolicy;
  /** Every fd of the process, in fd order. */
  fds: readonly FdProbe[];
}

/** What a kind sees while dumping (the process frozen). */
export interface FdDumpContext extends DumpContext, FdCheckContext {
  /** Every process of the tree with its fds (a pipe's other end, a socket's peer may be in another). */
  fdTree: TreeFds;
  /** The later processes of the tree (pids in the job) that hold fd `fd`'s description too. */
  sharedWith(fd: number): number[];
  /** The image id of the open file description fd `fd` refers to (undefined: no such fd). */
  idOf(fd: number): number | undefined;
  /** Stores bulk bytes (buffers, file contents) in the process's fd data file; returns where they are. */
  putData(bytes: Buffer): DataRef;
}

/** What a kind sees before any process exists at restore. */
export interface FdPreflightContext {
  manifest: Manifest;
  proc: ProcessImage;
}

/** One open file description of the image, where it is: process `pid`'s `files[index]`. */
export interface TreeFile {
  pid: number;
  index: number;
  file: OpenFileImage;
}

/** What a kind sees while rebuilding its open file in the husk. */
export interface FdRestoreContext extends RestoreContext {
  /** Every open file description of the process. */
  files: readonly OpenFileImage[];
  /** Every open file description of the image's tree, in image order (`shared` entries left out): a pipe end finds the others here. */
  tree: readonly TreeFile[];
  /**
   * Hands husk fd `fd`, made here, over as description `index` of later
   * process `pid`, which takes it when its turn comes instead of making it
   * (the end of a pipe or socketpair this process does not hold itself).
   */
  handOver(pid: number, index: number, fd: number): void;
  /**
   * Description `index` of process `pid`, when a husk made it already (its
   * owner, or whoever handed it over): a new fd of it in this husk, kept
   * high like the others; undefined when no husk made it.
   */
  takeDescription(pid: number, index: number): number | undefined;
  /** The fds that refer to description `id`. */
  fdsOf(id: number): readonly FdImage[];
  /**
   * Moves husk fd `fd` above every fd the process will have (closing `fd`)
   * and returns the new number; closed again once every fd is in place.
   */
  keep(fd: number, what: string): number;
  /** State shared by the entries of one object (the two ends of a pipe, a socketpair), by key. */
  shared: Map<string, unknown>;
  /** Address in the husk of the bytes `ref` names (the data file is mapped read-only until the end of the files stage). */
  dataAt(ref: DataRef): number;
}

/** The image variant of kind K. */
export type ImageOf<K extends OpenFileImage['kind']> = Extract<OpenFileImage, { kind: K }>;

/**
 * One kind of open file description. Hooks run in this order: check (the
 * process still runs: /proc only), inject (inside the dump's injection
 * window, once per description: state only the task can read), dump (after
 * the window); at restore preflight (before any process exists), restore
 * (returns a husk fd; the driver moves it into place), afterPlaced (every fd
 * is at its number: registrations, locks).
 */
export interface FdKind<K extends OpenFileImage['kind'] = OpenFileImage['kind']> {
  readonly name: K;
  /** True when this kind handles the fd (the first matching kind in the registry wins). */
  match(p: FdProbe): boolean;
  /** Refuses what this kind cannot capture; runs before the freeze and again once frozen. */
  check?(p: FdProbe, ctx: FdCheckContext): void;
  /** Runs in the injection window; whatever it returns is handed to dump(). Must leave the task as it was. */
  inject?(p: FdProbe, ctx: FdDumpContext): unknown;
  dump(p: FdProbe, ctx: FdDumpContext, id: number, injected: unknown): ImageOf<K>;
  /** Refuses, before a husk exists, an image this kind cannot restore here. */
  preflight?(image: ImageOf<K>, ctx: FdPreflightContext): void;
  /** Creates the description in the husk; returns its fd there. */
  restore(image: ImageOf<K>, ctx: FdRestoreContext): number;
  /** Runs once every fd is at its place; `fdOf(id)` is an fd of description `id`. */
  afterPlaced?(image: ImageOf<K>, ctx: FdRestoreContext, fdOf: (id: number) => number): void;
}

/** Any one fd kind (the registry's element type). */
export type AnyFdKind = { [K in OpenFileImage['kind']]: FdKind<K> }[OpenFileImage['kind']];

/** The refusal of one fd: names pid, fd, kind and why; the process is left running. */
export function refuseFd(pid: number, fd: number, kind: string, why: string): Error {
  return unsupported(pid, `fd ${fd} (${kind})`, why);
}

/** Major and minor of a dev_t as stat(2) returns it. */
export function devMajor(dev: number): number {
  return (Math.floor(dev / 256) & 0xfff) | (Math.floor(dev / 2 ** 32) & ~0xfff);
}
export function devMinor(dev: number): number {
  return (dev & 0xff) | (Math.floor(dev / 4096) & ~0xff & 0xfffff);
}
