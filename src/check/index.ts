// `crest check`: probes and the report.
export {
  type CheckOptions,
  type CheckReport,
  type ModeFacts,
  concludeModes,
  type JsonValue,
  type ModeName,
  type ModeResult,
  type ProbeResult,
  type TrackingMethod,
  formatCheck,
  kernelVersion,
  readSysctl,
  runCheck,
} from './check.js';
export { CAP_CHECKPOINT_RESTORE, CAP_SYS_ADMIN, CAP_SYS_PTRACE, type FileCaps, decodeFileCaps, encodeFileCaps, hasCap, hex64 } from './caps.js';
export { type LocatedBuffer, allocLocated, locateBuffer, probePagemap, probeSoftDirty, readPagemap } from './memprobe.js';
