// The contract between the file-descriptor driver (../files.ts) and the fd
// kinds (one module per kind of open file: regular files, pipes, eventfd,
// sockets ...). The driver owns what every fd shares: listing the fd table,
// grouping fds that share one open file description (kcmp), the order of
// the hooks, the high-fd placement dance at restore and close-on-exec. A kind
// owns one kind of open file description: how to recognise it, refuse it,
// capture it and rebuild it in the husk.
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

/** What a kind sees while rebuilding its open file in the husk. */
export interface FdRestoreContext extends RestoreContext {
  /** Every open file description of the process (a pipe end finds its peer here). */
  files: readonly OpenFileImage[];
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
