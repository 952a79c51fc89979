// What `crest show` prints, as pure functions over a manifest the reader
// accepted: a readable description and a JSON-able summary. No printing here.
import type { Manifest, OpenFileImage, ProcessImage, TerminalImage, VmaImage } from './schema.js';
import { PAGE_SIZE } from './validate.js';

/** Per-process part of ImageSummary. */
export interface ProcessSummary {
  pid: number;
  ppid: number;
  comm: string;
  exe: string;
  cwd: string;
  threads: number;
  tids: number[];
  vmas: number;
  storedPages: number;
  storedBytes: number;
  fds: number;
  sigactions: number;
  pagesFile: string;
}

/** What `crest show --json` prints: identity, sizes and counts of an image. */
export interface ImageSummary {
  formatVersion: number;
  crestVersion: string;
  createdAt: string;
  source: { kernel: string; arch: string; hostname: string };
  job: { name: string | null; pidMode: string };
  processCount: number;
  threadCount: number;
  storedPages: number;
  /** Sum of all data files' sizes. */
  totalBytes: number;
  files: { name: string; size: number; crc32: string }[];
  processes: ProcessSummary[];
  /** The image this one is incremental on (its directory relative to this one), or null for a full image. */
  parent: { dir: string; checksum: string; createdAt: string } | null;
  /** Pages the image takes from its parents instead of storing them. */
  inheritedPages: number;
  /** How an incremental image found what changed (trackerOf); null for a full one. */
  tracker: Tracker | null;
}

/** How an incremental image found its changed pages: the kernel's write tracking, page hashes, or both (some processes each). */
export type Tracker = 'uffd-wp' | 'page-hash' | 'mixed';

/** How much of an image's pages went through zstd: blocks compressed (the rest stored plain) and the bytes before and after. */
export interface CompressionSummary {
  blocks: number;
  compressedBlocks: number;
  /** The stored pages' size. */
  rawBytes: number;
  /** Their size in the pages files. */
  storedBytes: number;
}

/** Compression of an image's pages (null when it has none). */
export function compressionOf(m: Manifest): CompressionSummary | null {
  let any = false;
  const c: CompressionSummary = { blocks: 0, compressedBlocks: 0, rawBytes: 0, storedBytes: 0 };
  for (const p of m.processes) {
    if (!p.compression) continue;
    any = true;
    for (const [pages, bytes] of p.compression.blocks) {
      c.blocks++;
      if (bytes > 0) c.compressedBlocks++;
      c.rawBytes += pages * PAGE_SIZE;
      c.storedBytes += bytes > 0 ? Math.ceil(bytes / PAGE_SIZE) * PAGE_SIZE : pages * PAGE_SIZE;
    }
  }
  return any ? c : null;
}

/** "zstd 3.1x (all 1024 blocks)" / "zstd 1.2x (100 of 1024 blocks; the rest stored plain: no core was spare)". */
export function describeCompression(c: CompressionSummary): string {
  const ratio = c.storedBytes > 0 ? c.rawBytes / c.storedBytes : 1;
  const share = c.compressedBlocks === c.blocks ? `all ${c.blocks} blocks` : `${c.compressedBlocks} of ${c.blocks} blocks; the rest stored plain, as compressing them would have slowed the checkpoint (no core was spare)`;
  return `zstd ${ratio.toFixed(2)}x (${share})`;
}

/** The tracker in words, for log lines: a full image needs none. */
export function trackerWords(t: Tracker | null): string {
  return t === 'mixed' ? 'uffd-wp and page hashes' : (t ?? 'page-hash');
}

/** The page tracker an image's processes used, or null when none recorded one (a full image). */
export function trackerOf(m: Manifest): Tracker | null {
  const methods = new Set(m.processes.map((p) => p.tracking?.method).filter((x) => x !== undefined));
  if (methods.size === 0) return null;
  return methods.size > 1 ? 'mixed' : [...methods][0]!;
}

function storedPagesOf(vma: VmaImage): number {
  let n = 0;
  for (const [, count] of vma.runs) n += count;
  return n;
}

function storedPages(proc: ProcessImage): number {
  let n = 0;
  for (const vma of proc.vmas) n += storedPagesOf(vma);
  return n;
}

/** Counts and sizes of an image, JSON-able (numbers and strings only). */
export function summarizeImage(m: Manifest): ImageSummary {
  const processes = m.processes.map((p): ProcessSummary => {
    const pages = storedPages(p);
    return {
      pid: p.pid,
      ppid: p.ppid,
      comm: p.comm,
      exe: p.exe.path,
      cwd: p.cwd,
      threads: p.threads.length,
      tids: p.threads.map((t) => t.tid),
      vmas: p.vmas.length,
      storedPages: pages,
      storedBytes: pages * PAGE_SIZE,
      fds: p.fds.length,
      sigactions: p.sigactions.length,
      pagesFile: p.pagesFile,
    };
  });
  const files = Object.keys(m.files)
    .sort()
    .map((name) => ({ name, size: m.files[name]!.size, crc32: m.files[name]!.crc32 }));
  return {
    formatVersion: m.formatVersion,
    crestVersion: m.crestVersion,
    createdAt: m.createdAt,
    source: { kernel: m.source.kernel, arch: m.source.arch, hostname: m.source.hostname },
    job: { name: m.job.name, pidMode: m.job.pidMode },
    processCount: processes.length,
    threadCount: processes.reduce((n, p) => n + p.threads, 0),
    storedPages: processes.reduce((n, p) => n + p.storedPages, 0),
    totalBytes: files.reduce((n, f) => n + f.size, 0),
    files,
    processes,
    parent: m.parent ?? null,
    inheritedPages: m.processes.reduce((n, p) => n + p.vmas.reduce((k, v) => k + (v.inherited ?? []).reduce((a, [, c]) => a + c, 0), 0), 0),
    tracker: trackerOf(m),
  };
}

/** "24 KiB", "1.5 MiB": for people; exact byte counts are printed beside it. */
export function humanBytes(n: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} bytes` : `${v >= 10 || Number.isInteger(v) ? Math.round(v) : v.toFixed(1)} ${units[u]}`;
}

const SIGNAL_NAMES = [
  '', 'SIGHUP', 'SIGINT', 'SIGQUIT', 'SIGILL', 'SIGTRAP', 'SIGABRT', 'SIGBUS', 'SIGFPE', 'SIGKILL',
  'SIGUSR1', 'SIGSEGV', 'SIGUSR2', 'SIGPIPE', 'SIGALRM', 'SIGTERM', 'SIGSTKFLT', 'SIGCHLD', 'SIGCONT',
  'SIGSTOP', 'SIGTSTP', 'SIGTTIN', 'SIGTTOU', 'SIGURG', 'SIGXCPU', 'SIGXFSZ', 'SIGVTALRM', 'SIGPROF',
  'SIGWINCH', 'SIGIO', 'SIGPWR', 'SIGSYS',
];

/** x86-64 signal name; real-time signals as SIGRTMIN+n counted from the kernel's 32. */
export function signalName(sig: number): string {
  return SIGNAL_NAMES[sig] || (sig >= 32 && sig <= 64 ? `SIGRTMIN+${sig - 32}` : `SIG${sig}`);
}

/** The signals set in a 64-bit mask (bit n-1 is signal n). */
function maskSignals(mask: string): string {
  const bits = BigInt(mask);
  if (bits === 0n) return 'none';
  const names: string[] = [];
  for (let sig = 1; sig <= 64; sig++) if ((bits >> BigInt(sig - 1)) & 1n) names.push(signalName(sig));
  return names.join(' ');
}

const SA_FLAGS: [bigint, string][] = [
  [0x1n, 'SA_NOCLDSTOP'], [0x2n, 'SA_NOCLDWAIT'], [0x4n, 'SA_SIGINFO'], [0x04000000n, 'SA_RESTORER'],
  [0x08000000n, 'SA_ONSTACK'], [0x10000000n, 'SA_RESTART'], [0x40000000n, 'SA_NODEFER'], [0x80000000n, 'SA_RESETHAND'],
];

function bitNames(value: bigint, table: [bigint, string][]): string {
  const names: string[] = [];
  let rest = value;
  for (const [bit, name] of table) {
    if ((value & bit) === bit) {
      names.push(name);
      rest &= ~bit;
    }
  }
  if (rest !== 0n) names.push(`0x${rest.toString(16)}`);
  return names.length ? names.join('|') : '0';
}

// x86-64 open(2) status flags, as octal constants from <asm-generic/fcntl.h>.
const O_FLAGS: [bigint, string][] = [
  [0o4010000n, 'O_SYNC'], [0o100n, 'O_CREAT'], [0o200n, 'O_EXCL'], [0o400n, 'O_NOCTTY'], [0o1000n, 'O_TRUNC'],
  [0o2000n, 'O_APPEND'], [0o4000n, 'O_NONBLOCK'], [0o10000n, 'O_DSYNC'], [0o20000n, 'O_ASYNC'],
  [0o40000n, 'O_DIRECT'], [0o100000n, 'O_LARGEFILE'], [0o200000n, 'O_DIRECTORY'], [0o400000n, 'O_NOFOLLOW'],
  [0o1000000n, 'O_NOATIME'], [0o10000000n, 'O_PATH'],
];

/** "O_WRONLY|O_APPEND" from open status flags. */
export function openFlags(flags: number): string {
  const mode = ['O_RDONLY', 'O_WRONLY', 'O_RDWR', 'O_ACCMODE'][flags & 3]!;
  const rest = bitNames(BigInt(flags) & ~3n, O_FLAGS);
  return rest === '0' ? mode : `${mode}|${rest}`;
}

function hexAddr(n: number): string {
  return n.toString(16).padStart(12, '0');
}

/** A terminal's settings in brief: the modes a user would notice. */
function terminalModes(t: TerminalImage): string {
  const lflag = (bit: number, name: string) => ((t.lflag & bit) !== 0 ? name : `-${name}`);
  return `terminal ${lflag(0o10, 'echo')} ${lflag(0o2, 'icanon')} ${lflag(0o1, 'isig')}${t.foreground ? '  foreground' : ''}`;
}

/** An open file as `crest show` lists it; a `shared` one with what it is in the process that restores it. */
function describeFile(f: OpenFileImage | undefined, procs: readonly ProcessImage[]): string {
  if (f === undefined) return '(missing)';
  switch (f.kind) {
    case 'file':
      return `file ${f.file.path}  ${openFlags(f.flags)}  pos ${f.pos}`;
    case 'chardev':
      return `chardev ${f.path}  ${openFlags(f.flags)}  pos ${f.pos}`;
    case 'stdio':
      return `stdio: restored as crest's ${['stdin', 'stdout', 'stderr'][f.stream]} (was ${f.was})${f.terminal ? `  ${terminalModes(f.terminal)}` : ''}`;
    case 'tty':
      return `tty: its terminal again, as /dev/tty (was ${f.was})  ${openFlags(f.flags)}  ${terminalModes(f.terminal)}`;
    case 'eventfd':
      return `eventfd  count ${BigInt(f.count)}${f.semaphore ? '  semaphore' : ''}  ${openFlags(f.flags)}`;
    case 'timerfd':
      return `timerfd  clock ${f.clockid}  next in ${f.value.sec}.${String(f.value.nsec).padStart(9, '0')} s  interval ${f.interval.sec}.${String(f.interval.nsec).padStart(9, '0')} s  ticks ${f.ticks}`;
    case 'signalfd':
      return `signalfd  ${maskSignals(f.sigmask)}  ${openFlags(f.flags)}`;
    case 'epoll':
      return `epoll  ${f.targets.length} registrations (fds ${f.targets.map((x) => x.tfd).join(', ') || 'none'})`;
    case 'inotify':
      return `inotify  ${f.watches.map((w) => `${w.wd}:${w.path}`).join(', ') || 'no watches'}`;
    case 'pipe':
      return `pipe [${f.pipe}] ${(f.flags & 3) === 0 ? 'read' : 'write'} end${f.buffer ? `  ${f.buffer.data?.length ?? 0} bytes buffered (capacity ${f.buffer.size})` : ''}`;
    case 'fifo':
      return `fifo ${f.file.path}  ${openFlags(f.flags)}${f.buffer ? `  ${f.buffer.data?.length ?? 0} bytes buffered` : ''}`;
    case 'unix':
      return `unix ${f.type} ${f.state}${f.state === 'listen' ? ` (backlog ${f.backlog})` : ` peer [${f.peer}]`}${f.queue ? `  ${f.queue.data.length} bytes queued` : ''}`;
    case 'inet':
      return `${f.protocol}${f.family === 6 ? '6' : ''} ${f.state} ${f.family === 6 ? `[${f.address}]` : f.address}:${f.port}${f.backlog !== undefined ? ` (backlog ${f.backlog})` : ''}`;
    case 'tcp':
      return `tcp${f.family === 6 ? '6' : ''} ${f.state} ${f.local.address.includes(':') ? `[${f.local.address}]` : f.local.address}:${f.local.port} -> ${f.remote.address.includes(':') ? `[${f.remote.address}]` : f.remote.address}:${f.remote.port}  ${f.mode === 'repair' ? `repaired${f.repair ? `, ${f.repair.recvLen} bytes to read, ${f.repair.sendLen} to send` : ''}` : 'comes back closed (reset by the peer)'}`;
    case 'memfd':
      return `memfd:${f.name}  ${f.size} bytes  seals 0x${f.seals.toString(16)}  pos ${f.pos}`;
    case 'deleted':
      return `deleted file ${f.path}  ${f.size} bytes  ${openFlags(f.flags)}  pos ${f.pos}`;
    case 'shared': {
      const there = procs.find((p) => p.pid === f.pid)?.files[f.file];
      const what = there === undefined || there.kind === 'shared' ? '(missing)' : describeFile(there, procs);
      return `shared with process ${f.pid}: ${what}${f.locks ? `  ${f.locks.length} POSIX lock${f.locks.length > 1 ? 's' : ''} of its own` : ''}`;
    }
  }
}

function vmaName(vma: VmaImage): string {
  if (vma.file) return vma.pgoff ? `${vma.file.path} @0x${vma.pgoff.toString(16)}` : vma.file.path;
  const at = vma.pgoff ? ` @0x${vma.pgoff.toString(16)}` : '';
  if (vma.kind === 'memfd') return `memfd:${vma.object?.name ?? '?'}${at}  (object ${vma.object?.ino})`;
  if (vma.kind === 'deleted') return `${vma.object?.path ?? ''} (deleted)${at}${vma.object ? `  (object ${vma.object.ino})` : '  (restored as anonymous memory)'}`;
  if (vma.object) return `${vma.label ?? ''}${at}  (shared object ${vma.object.ino})`.trim();
  return vma.label ?? '';
}

/** Pads each column to its widest cell; the last column is left ragged. */
function table(rows: string[][], rightAligned: ReadonlySet<number>, indent: string): string[] {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows.map(
    (row) =>
      indent +
      row
        .map((cell, i) =>
          i === row.length - 1 ? cell : rightAligned.has(i) ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!),
        )
        .join('  ')
        .trimEnd(),
  );
}

function describeProcess(p: ProcessImage, procs: readonly ProcessImage[]): string[] {
  const lines: string[] = [];
  const pages = storedPages(p);
  lines.push(`process ${p.pid} (${p.comm})  ppid ${p.ppid}  pgid ${p.pgid}  sid ${p.sid}`);
  lines.push(`  exe   ${p.exe.path}`);
  lines.push(`  cwd   ${p.cwd}`);
  lines.push(`  creds uid ${p.creds.uid.join('/')}  gid ${p.creds.gid.join('/')}  umask ${p.umask.toString(8).padStart(4, '0')}`);
  lines.push(`  threads (${p.threads.length}):`);
  lines.push(...table(p.threads.map((t) => [`tid ${t.tid}`, `rip ${t.regs.rip}`, `rsp ${t.regs.rsp}`, `blocked ${maskSignals(t.sigmask)}`]), new Set(), '    '));
  lines.push(`  memory: ${p.vmas.length} mappings, ${pages} stored pages (${pages * PAGE_SIZE} bytes, ${humanBytes(pages * PAGE_SIZE)})`);
  const rows = [['start-end', 'prot', 'kind', 'pages', 'stored', 'mapping']];
  for (const vma of p.vmas) {
    rows.push([
      `${hexAddr(vma.start)}-${hexAddr(vma.end)}`,
      vma.prot + (vma.shared ? 's' : 'p'),
      vma.kind,
      String((vma.end - vma.start) / PAGE_SIZE),
      String(storedPagesOf(vma)),
      vmaName(vma),
    ]);
  }
  lines.push(...table(rows, new Set([3, 4]), '    '));
  lines.push(`  files (${p.fds.length} fds):`);
  lines.push(
    ...table(
      [...p.fds].sort((a, b) => a.fd - b.fd).map((fd) => [String(fd.fd), '->', describeFile(p.files[fd.file], procs) + (fd.cloexec ? '  cloexec' : '')]),
      new Set([0]),
      '    ',
    ),
  );
  lines.push(`  signals:`);
  if (p.sigactions.length === 0) lines.push('    handlers: all default');
  for (const sa of p.sigactions) {
    const h = BigInt(sa.handler);
    const what = h === 0n ? 'default' : h === 1n ? 'ignored' : `handler ${sa.handler}`;
    lines.push(`    ${signalName(sa.sig)}: ${what}  flags ${bitNames(BigInt(sa.flags), SA_FLAGS)}  mask ${maskSignals(sa.mask)}`);
  }
  for (const t of p.threads) lines.push(`    blocked in tid ${t.tid}: ${maskSignals(t.sigmask)}${t.pending.length ? `, ${t.pending.length} pending` : ''}`);
  if (p.sharedPending.length) lines.push(`    ${p.sharedPending.length} pending for the process`);
  lines.push(`  pages file: ${p.pagesFile}`);
  return lines;
}

/** The text of `crest show -D DIR`: the image's identity, each process, and its data files. */
export function describeImage(m: Manifest, dir: string): string {
  const s = summarizeImage(m);
  const lines: string[] = [];
  lines.push(`checkpoint image ${dir}`);
  lines.push(`  format version ${m.formatVersion}, written by crest ${m.crestVersion} at ${m.createdAt}`);
  lines.push(`  source: host ${m.source.hostname}, kernel ${m.source.kernel}, ${m.source.arch}, page size ${m.source.pageSize}`);
  lines.push(`  job: ${m.job.name ?? '(unnamed)'}, PID mode ${m.job.pidMode} (uid ${m.job.uid}, gid ${m.job.gid})`);
  lines.push(
    `  ${s.processCount} process${s.processCount === 1 ? '' : 'es'}, ${s.threadCount} thread${s.threadCount === 1 ? '' : 's'}, ` +
      `${s.storedPages} stored pages, ${s.files.length} data file${s.files.length === 1 ? '' : 's'} (${humanBytes(s.totalBytes)})`,
  );
  const comp = compressionOf(m);
  if (comp) lines.push(`  pages compressed: ${describeCompression(comp)}`);
  if (m.parent) {
    lines.push(`  incremental on ${m.parent.dir} (taken ${m.parent.createdAt}, manifest checksum ${m.parent.checksum}): ${s.inheritedPages} pages inherited from it or its parents`);
    for (const p of m.processes) {
      const t = p.tracking;
      if (!t) continue;
      const how =
        t.method === 'uffd-wp'
          ? `kernel write tracking (uffd-wp): ${t.trackedPages} pages vouched unchanged without a read, ${t.readPages} read and compared by hash`
          : `page hashes: all ${t.readPages} pages read${t.why ? ` (no write tracking: ${t.why})` : ''}`;
      lines.push(`  pid ${p.pid}: changes found by ${how}`);
    }
  } else {
    lines.push('  full image (no parent)');
  }
  for (const p of m.processes) {
    lines.push('');
    lines.push(...describeProcess(p, m.processes));
  }
  lines.push('');
  lines.push('data files:');
  lines.push(...table(s.files.map((f) => [f.name, `${f.size} bytes`, humanBytes(f.size), `crc32 ${f.crc32}`]), new Set([1, 2]), '  '));
  return lines.join('\n') + '\n';
}
