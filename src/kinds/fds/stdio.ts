// The job's standard streams from outside (the terminal or pipes crest run
// was given, shared with the job's init): not the process's own objects, so
// the restored job gets `crest restore`'s corresponding streams instead.
import type { FdKind } from './types.js';

export const stdio: FdKind<'stdio'> = {
  name: 'stdio',
  match: (p) => p.stream !== null,
  dump(p, _ctx, id) {
    return { kind: 'stdio', id, stream: p.stream!, was: p.link };
  },
  restore(image, ctx) {
    // The driver parked crest restore's own streams (or /dev/null for a closed one) before anything else.
    const parked = ctx.shared.get(`stdio:${image.stream}`);
    if (typeof parked !== 'number') throw new Error(`stdio stream ${image.stream} was not parked`);
    return parked;
  },
};
