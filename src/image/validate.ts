// The checks an image's manifest must pass beyond its JSON shape, shared by
// the reader (which refuses an image that fails them) and the writer (which
// refuses to commit one: a crest bug must not produce an image crest refuses).
import * as v from 'valibot';
import { ManifestSchema, MANIFEST_NAME, type Manifest, type ProcessImage } from './schema.js';

/** Page size of every image (source.pageSize is fixed to it by the schema). */
export const PAGE_SIZE = 4096;
/** The temp manifest of the commit protocol: its presence alone means an interrupted dump. */
export const MANIFEST_TMP_NAME = `${MANIFEST_NAME}.tmp`;
/** How data files are named (same rule as the schema's `files` keys). */
const DATA_NAME = /^[A-Za-z0-9._-]+$/;
const RESERVED = new Set(['.', '..', MANIFEST_NAME, MANIFEST_TMP_NAME]);

/** True when `name` may be a data file of an image (a plain name, not the manifest's). */
export function isDataFileName(name: string): boolean {
  return DATA_NAME.test(name) && !RESERVED.has(name);
}

/** Names an interrupted dump leaves behind (data files end in .img; the temp manifest). */
export function isLeftoverName(name: string): boolean {
  return name === MANIFEST_TMP_NAME || (name.endsWith('.img') && isDataFileName(name));
}

/** Kinds of mapping the kernel recreates: never stored, so they carry no runs. */
const UNSTORED_KINDS = new Set(['vdso', 'vvar', 'vvar_vclock']);

/** `a.b[3]["x y"]` from a list of keys. */
export function formatPath(keys: readonly unknown[]): string {
  let out = '';
  for (const key of keys) {
    if (typeof key === 'number') out += `[${key}]`;
    else if (typeof key === 'string' && /^[A-Za-z_$][\w$]*$/.test(key)) out += (out ? '.' : '') + key;
    else out += `[${JSON.stringify(String(key))}]`;
  }
  return out || '(top level)';
}

/** Schema validation: the typed manifest, or "path: message" lines (at most `limit`). */
export function checkSchema(
  value: unknown,
  limit = 5,
): { ok: true; manifest: Manifest } | { ok: false; problems: string[]; total: number } {
  const result = v.safeParse(ManifestSchema, value);
  if (result.success) return { ok: true, manifest: result.output };
  const problems = result.issues
    .slice(0, limit)
    .map((issue) => `${formatPath((issue.path ?? []).map((p) => p.key))}: ${issue.message}`);
  return { ok: false, problems, total: result.issues.length };
}

/**
 * What is wrong with a schema-valid manifest, as "path: message" lines (at most
 * `limit`; empty when nothing): file names, address ordering and alignment,
 * page runs against the pages file size, unique pids, tids, fds and file ids.
 */
export function checkSemantics(m: Manifest, limit = 5): string[] {
  const problems: string[] = [];
  const add = (path: string, msg: string): boolean => {
    problems.push(`${path}: ${msg}`);
    return problems.length >= limit;
  };
  for (const name of Object.keys(m.files)) {
    if (!isDataFileName(name)) {
      if (add(`files[${JSON.stringify(name)}]`, 'reserved or invalid data file name')) return problems;
    }
  }
  const pids = new Map<number, number>();
  const tids = new Map<number, string>();
  const pagesFiles = new Map<string, number>();
  for (let pi = 0; pi < m.processes.length; pi++) {
    const proc = m.processes[pi] as ProcessImage;
    const pp = `processes[${pi}]`;
    const seenPid = pids.get(proc.pid);
    if (seenPid !== undefined) {
      if (add(`${pp}.pid`, `pid ${proc.pid} already used by processes[${seenPid}]`)) return problems;
    } else pids.set(proc.pid, pi);
    for (let ti = 0; ti < proc.threads.length; ti++) {
      const tid = proc.threads[ti]!.tid;
      const seen = tids.get(tid);
      if (seen !== undefined) {
        if (add(`${pp}.threads[${ti}].tid`, `tid ${tid} already used by ${seen}`)) return problems;
      } else tids.set(tid, `${pp}.threads[${ti}]`);
    }

    // Memory: ordered, aligned, disjoint mappings; runs inside them; pages file size.
    let storedPages = 0;
    let prevEnd = -1;
    for (let vi = 0; vi < proc.vmas.length; vi++) {
      const vma = proc.vmas[vi]!;
      const vp = `${pp}.vmas[${vi}]`;
      if (vma.start % PAGE_SIZE !== 0 || vma.end % PAGE_SIZE !== 0) {
        if (add(vp, `${hexAddr(vma.start)}-${hexAddr(vma.end)} is not page-aligned (${PAGE_SIZE})`)) return problems;
        continue;
      }
      if (vma.start >= vma.end) {
        if (add(vp, `start ${hexAddr(vma.start)} is not below end ${hexAddr(vma.end)}`)) return problems;
        continue;
      }
      if (vma.start < prevEnd) {
        const why = vma.start < proc.vmas[vi - 1]!.start ? 'is not sorted by start after' : 'overlaps';
        if (add(`${vp}.start`, `${hexAddr(vma.start)}-${hexAddr(vma.end)} ${why} vmas[${vi - 1}] (ends at ${hexAddr(prevEnd)})`)) return problems;
      }
      prevEnd = Math.max(prevEnd, vma.end);
      if (vma.kind === 'file' && vma.file === undefined) {
        if (add(`${vp}.file`, 'a file mapping must record its file')) return problems;
      }
      if ((vma.kind === 'memfd' || (vma.kind === 'deleted' && vma.shared)) && vma.object === undefined) {
        if (add(`${vp}.object`, `a ${vma.shared ? 'shared ' : ''}${vma.kind} mapping must record its object`)) return problems;
      }
      if (vma.object && (vma.kind === 'memfd' ? vma.object.name === undefined : vma.kind === 'deleted' ? vma.object.path === undefined : vma.kind !== 'shmem-anon')) {
        if (add(`${vp}.object`, `the object of a ${vma.kind} mapping lacks what makes it again (memfd: name, deleted: path; only those and shmem-anon have one)`)) return problems;
      }
      if (UNSTORED_KINDS.has(vma.kind) && vma.runs.length > 0) {
        if (add(`${vp}.runs`, `a ${vma.kind} mapping is never stored, but has ${vma.runs.length} runs`)) return problems;
        continue;
      }
      const pages = (vma.end - vma.start) / PAGE_SIZE;
      let nextFree = 0;
      for (let ri = 0; ri < vma.runs.length; ri++) {
        const [first, count] = vma.runs[ri]!;
        if (first < nextFree) {
          if (add(`${vp}.runs[${ri}]`, `run [${first},${count}] is not ascending or overlaps the previous run (which ends at page ${nextFree})`)) return problems;
        } else if (first + count > pages) {
          if (add(`${vp}.runs[${ri}]`, `run [${first},${count}] goes past the mapping's ${pages} pages`)) return problems;
        }
        nextFree = Math.max(nextFree, first + count);
        storedPages += count;
      }
    }
    // Version 2: inherited pages (in the parent image), and the page hashes.
    let hashedPages = storedPages;
    for (let vi = 0; vi < proc.vmas.length; vi++) {
      const vma = proc.vmas[vi]!;
      const inh = vma.inherited;
      if (inh === undefined) continue;
      const vp = `${pp}.vmas[${vi}].inherited`;
      if (m.formatVersion < 2) {
        if (add(vp, 'inherited pages need format version 2')) return problems;
        continue;
      }
      if (m.parent === undefined && inh.length > 0) {
        if (add(vp, 'inherited pages, but the image has no parent')) return problems;
        continue;
      }
      if (UNSTORED_KINDS.has(vma.kind) && inh.length > 0) {
        if (add(vp, `a ${vma.kind} mapping is never stored, but has inherited pages`)) return problems;
        continue;
      }
      const pages = (vma.end - vma.start) / PAGE_SIZE;
      const own = vma.runs;
      let oi = 0;
      let nextFree = 0;
      for (let ri = 0; ri < inh.length; ri++) {
        const [first, count] = inh[ri]!;
        if (first < nextFree || first + count > pages) {
          if (add(`${vp}[${ri}]`, `run [${first},${count}] is not ascending, overlaps the previous one, or goes past the mapping's ${pages} pages`)) return problems;
        }
        nextFree = Math.max(nextFree, first + count);
        // Disjoint from the stored runs (both lists are ascending).
        while (oi < own.length && own[oi]![0] + own[oi]![1] <= first) oi++;
        if (oi < own.length && own[oi]![0] < first + count) {
          if (add(`${vp}[${ri}]`, `run [${first},${count}] overlaps stored run [${own[oi]![0]},${own[oi]![1]}]`)) return problems;
        }
        hashedPages += count;
      }
    }
    if (proc.hashesFile !== undefined) {
      const h = m.files[proc.hashesFile];
      if (m.formatVersion < 2) {
        if (add(`${pp}.hashesFile`, 'page hashes need format version 2')) return problems;
      } else if (h === undefined) {
        if (add(`${pp}.hashesFile`, `"${proc.hashesFile}" is not listed in files`)) return problems;
      } else if (h.size !== hashedPages * 8) {
        if (add(`${pp}.hashesFile`, `"${proc.hashesFile}" records ${h.size} bytes, but the image has ${hashedPages} pages (8 bytes each)`)) return problems;
      }
    }
    if (m.parent !== undefined && m.formatVersion < 2) {
      if (add('parent', 'a parent image needs format version 2')) return problems;
    }

    const entry = m.files[proc.pagesFile];
    if (entry === undefined) {
      if (add(`${pp}.pagesFile`, `"${proc.pagesFile}" is not listed in files`)) return problems;
    } else if (proc.compression) {
      const c = proc.compression;
      const pages = c.blocks.reduce((a, [n]) => a + n, 0);
      const bytes = c.blocks.reduce((a, [n, b]) => a + (b === 0 ? n * PAGE_SIZE : Math.ceil(b / PAGE_SIZE) * PAGE_SIZE), 0);
      if (m.formatVersion < 2) {
        if (add(`${pp}.compression`, 'compressed pages need format version 2')) return problems;
      } else if (pages !== storedPages) {
        if (add(`${pp}.compression.blocks`, `the blocks hold ${pages} pages, but the runs store ${storedPages}`)) return problems;
      } else if (entry.size !== bytes) {
        if (add(`${pp}.pagesFile`, `"${proc.pagesFile}" records ${entry.size} bytes, but its blocks (frames padded to 4096) add up to ${bytes}`)) return problems;
      }
    } else if (entry.size !== storedPages * PAGE_SIZE) {
      if (add(`${pp}.pagesFile`, `"${proc.pagesFile}" records ${entry.size} bytes, but the runs store ${storedPages} pages (${storedPages * PAGE_SIZE} bytes)`)) return problems;
    }
    const owner = pagesFiles.get(proc.pagesFile);
    if (owner !== undefined) {
      if (add(`${pp}.pagesFile`, `"${proc.pagesFile}" is already the pages file of processes[${owner}]`)) return problems;
    } else pagesFiles.set(proc.pagesFile, pi);

    // Files: unique description ids per process, unique fds pointing at them.
    const ids = new Set<number>();
    for (let fi = 0; fi < proc.files.length; fi++) {
      const id = proc.files[fi]!.id;
      if (ids.has(id)) {
        if (add(`${pp}.files[${fi}].id`, `id ${id} is used twice`)) return problems;
      }
      ids.add(id);
      const why = sharedProblem(m, pi, proc.files[fi]!);
      if (why !== null && add(`${pp}.files[${fi}]`, why)) return problems;
    }
    const fds = new Set<number>();
    for (let di = 0; di < proc.fds.length; di++) {
      const fd = proc.fds[di]!;
      if (fds.has(fd.fd)) {
        if (add(`${pp}.fds[${di}].fd`, `fd ${fd.fd} appears twice`)) return problems;
      }
      fds.add(fd.fd);
      if (fd.file >= proc.files.length) {
        if (add(`${pp}.fds[${di}].file`, `index ${fd.file} is outside files (${proc.files.length} entries)`)) return problems;
      }
    }
  }
  for (let zi = 0; zi < (m.zombies ?? []).length; zi++) {
    const z = m.zombies![zi]!;
    if (pids.has(z.pid) || m.zombies!.slice(0, zi).some((o) => o.pid === z.pid)) {
      if (add(`zombies[${zi}].pid`, `pid ${z.pid} is already used`)) return problems;
    }
    if (!pids.has(z.ppid)) {
      if (add(`zombies[${zi}].ppid`, `parent ${z.ppid} is not a process of the image`)) return problems;
    }
  }
  return problems;
}

/**
 * What is wrong with a `shared` entry of processes[pi]: it must name an
 * earlier process (which restores the description before this one takes
 * it) and an entry there that is a description of its own.
 */
function sharedProblem(m: Manifest, pi: number, f: ProcessImage['files'][number]): string | null {
  if (f.kind !== 'shared') return null;
  const oi = m.processes.findIndex((p) => p.pid === f.pid);
  if (oi < 0 || oi >= pi) return `it refers to pid ${f.pid}, which is not an earlier process of the image`;
  const target = m.processes[oi]!.files[f.file];
  if (target === undefined) return `it refers to files[${f.file}] of pid ${f.pid}, which has ${m.processes[oi]!.files.length} entries`;
  if (target.kind === 'shared' || target.kind === 'stdio') return `it refers to files[${f.file}] of pid ${f.pid}, a ${target.kind} entry (not a description of that process's own)`;
  return null;
}

function hexAddr(n: number): string {
  return `0x${n.toString(16)}`;
}
