// The one list of fd kinds, in matching order: the first kind whose match()
// accepts an fd handles it (the job's standard streams from outside come
// before anything else, then descriptions an earlier process of the tree holds
// too, then its terminal opened again, memfds and deleted files before plain
// files, TCP connections before the bound and listening inet sockets).
import type { OpenFileImage } from '../../image/schema.js';
import type { AnyFdKind } from './types.js';
import { stdio } from './stdio.js';
import { tty } from './tty.js';
import { file } from './file.js';
import { chardev } from './chardev.js';
import { eventfd } from './eventfd.js';
import { signalfd } from './signalfd.js';
import { timerfd } from './timerfd.js';
import { epoll } from './epoll.js';
import { fifo, pipe } from './pipe.js';
import { unix } from './unix.js';
import { inet } from './inet.js';
import { tcp } from './tcp.js';
import { memfd } from './memfd.js';
import { deleted } from './deleted.js';
import { inotify } from './inotify.js';
import { shared } from './shared.js';

export const FD_KINDS: readonly AnyFdKind[] = [stdio, shared, tty, memfd, deleted, file, chardev, eventfd, signalfd, timerfd, epoll, pipe, fifo, unix, tcp, inet, inotify];

/** The kind that restores images of kind `name`; an unknown name is a programming error. */
export function fdKind(name: OpenFileImage['kind']): AnyFdKind {
  const k = FD_KINDS.find((x) => x.name === name);
  if (!k) throw new Error(`no fd kind restores "${name}" open files`);
  return k;
}
