// /proc parsers: pure text -> typed object functions, and readX(pid) wrappers.
export { type PidRef, procPath, readProcFile, readProcText } from './util.js';
export { type MapEntry, parseMapLine, parseMaps, readMaps, mappingSize } from './maps.js';
export { type SmapsEntry, parseSmaps, readSmaps } from './smaps.js';
export { type ProcStatus, parseStatus, readStatus } from './status.js';
export { type ProcStat, parseStat, readStat } from './stat.js';
export { type FdInfo, parseFdinfo, readFdinfo } from './fdinfo.js';
export { AT, type AuxvEntry, auxvGet, parseAuxv, readAuxv } from './auxv.js';
export { parseChildren, readChildren, readTasks } from './children.js';
