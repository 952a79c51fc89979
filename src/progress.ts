// Byte progress of the long part of a dump or a restore (memory), for
// whoever shows it: the CLI sets a sink (a bar on a terminal), the library
// only reports. No sink, no cost beyond a null check per 8 MiB.

/** Receives progress: one start, adds of bytes done, one done. */
export interface ProgressSink {
  start(what: 'checkpoint' | 'restore', totalBytes: number): void;
  add(bytes: number): void;
  done(): void;
}

let sink: ProgressSink | null = null;

/** Installs (or with null removes) the sink; returns the previous one. */
export function setProgressSink(s: ProgressSink | null): ProgressSink | null {
  const prev = sink;
  sink = s;
  return prev;
}

/** The installed sink, or null. */
export function progressSink(): ProgressSink | null {
  return sink;
}
