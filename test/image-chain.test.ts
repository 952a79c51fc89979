// Incremental images (format version 2) on synthetic images: the new fields'
// consistency rules, reading a chain of parents, where each page of the leaf
// comes from, and the refusals of a chain with a missing, damaged or
// replaced parent - all before any process would be created.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ImageWriter, type ManifestDraft } from '../src/image/writer.js';
import { readImage } from '../src/image/reader.js';
import { pagePieces, readImageChain } from '../src/image/chain.js';
import { canonicalJson, manifestChecksum } from '../src/image/canonical.js';
import { FORMAT_VERSION, IMAGE_MAGIC, REG_NAMES, type Manifest, type ProcessImage } from '../src/image/schema.js';
import { CrestError } from '../src/sys/errors.js';

const PAGE = 4096;
const BASE = 0x10000000;
const made: string[] = [];
after(() => {
  for (const d of made) fs.rmSync(d, { recursive: true, force: true });
});
function tmp(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'crest-chain-'));
  made.push(d);
  return d;
}

function proc(runs: [number, number][], inherited?: [number, number][], hashes = true): ProcessImage {
  const regs = Object.fromEntries(REG_NAMES.map((n) => [n, '0x0'])) as ProcessImage['threads'][number]['regs'];
  const id = { path: '/usr/bin/x', dev: 1, ino: 2, size: 3, mtimeMs: 4 };
  return {
    pid: 2, ppid: 1, pgid: 2, sid: 1, comm: 'x', exe: id, cwd: '/', umask: 0o22, personality: 0, nice: 0,
    creds: { uid: [1, 1, 1, 1], gid: [1, 1, 1, 1], groups: [], capInh: '0x0', capPrm: '0x0', capEff: '0x0', capBnd: '0x0', capAmb: '0x0', noNewPrivs: false },
    rlimits: [],
    itimers: { real: { intervalUs: 0, valueUs: 0 }, virtual: { intervalUs: 0, valueUs: 0 }, prof: { intervalUs: 0, valueUs: 0 } },
    mm: { startCode: 0, endCode: 0, startData: 0, endData: 0, startBrk: 0, brk: 0, startStack: 0, argStart: 0, argEnd: 0, envStart: 0, envEnd: 0, auxv: '' },
    vmas: [{ start: BASE, end: BASE + 8 * PAGE, prot: 'rw-', shared: false, kind: 'anon', pgoff: 0, vmFlags: ['rd', 'wr'], runs, ...(inherited ? { inherited } : {}) }],
    pagesFile: 'pages-2.img',
    ...(hashes ? { hashesFile: 'hashes-2.img' } : {}),
    files: [], fds: [], sigactions: [], sharedPending: [],
    threads: [{ tid: 2, regs, xstate: '', xfeatures: '0x0', sigmask: '0x0', pending: [], sigaltstack: { sp: '0x0', flags: 2, size: 0 }, rseq: null, robustList: { head: '0x0', len: 0 }, clearChildTid: '0x0' }],
  };
}

/** Writes an image: its stored pages filled with `fill` + page index, and 8 bytes of hash per page. */
function image(dir: string, runs: [number, number][], inherited: [number, number][] | undefined, fill: number, parent?: { dir: string; m: Manifest }, createdAt = '2026-01-01T00:00:00.000Z'): Manifest {
  const p = proc(runs, inherited);
  const d: ManifestDraft = {
    magic: IMAGE_MAGIC,
    formatVersion: FORMAT_VERSION,
    crestVersion: 't',
    createdAt,
    source: { kernel: 'k', arch: 'x86_64', pageSize: 4096, hostname: 'h', vdso: [] },
    job: { name: 'j', pidMode: 'userns', uid: 1, gid: 1 },
    ...(parent ? { parent: { dir: path.relative(dir, parent.dir), checksum: parent.m.checksum, createdAt: parent.m.createdAt } } : {}),
    processes: [p],
  };
  const w = ImageWriter.create(dir, { force: false });
  const f = w.openData('pages-2.img');
  for (const [first, count] of runs) for (let i = 0; i < count; i++) f.write(Buffer.alloc(PAGE, fill + first + i));
  f.close();
  const pagesN = [...runs, ...(inherited ?? [])].reduce((n, r) => n + r[1], 0);
  const h = w.openData('hashes-2.img');
  h.write(Buffer.alloc(8 * pagesN));
  h.close();
  return w.commit(d);
}

function rejects(fn: () => unknown, code: string, re?: RegExp): void {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof CrestError, String(e));
    assert.equal(e.code, code, e.message);
    if (re) assert.match(e.message, re);
    return;
  }
  assert.fail(`expected ${code}`);
}

/** P: all 8 pages; C: pages 2 and 5 stored, the rest inherited; G: page 0 stored, 1-7 inherited. */
function threeLevels(): { root: string; p: string; c: string; g: string } {
  const root = tmp();
  const [p, c, g] = ['ckpt-0001', 'ckpt-0002', 'ckpt-0003'].map((n) => path.join(root, n)) as [string, string, string];
  const mp = image(p, [[0, 8]], undefined, 0x10);
  const mc = image(c, [[2, 1], [5, 1]], [[0, 2], [3, 2], [6, 2]], 0x20, { dir: p, m: mp });
  image(g, [[0, 1]], [[1, 7]], 0x30, { dir: c, m: mc });
  return { root, p, c, g };
}

test('a chain of three: every page of the leaf found in the image that stores it', () => {
  const { p, c, g } = threeLevels();
  const chain = readImageChain(g);
  assert.deepEqual(chain.map((l) => l.dir), [g, c, p]);
  const v = chain[0]!.manifest.processes[0]!.vmas[0]!;
  const pieces = pagePieces(chain, 2, v).map((x) => [(x.addr - BASE) / PAGE, x.pages, x.link, x.offset / PAGE]);
  // [page, count, link (0 leaf, 1 C, 2 P), page offset in that link's pages file]
  assert.deepEqual(pieces, [
    [0, 1, 0, 0],
    [1, 1, 2, 1],
    [2, 1, 1, 0],
    [3, 2, 2, 3],
    [5, 1, 1, 1],
    [6, 2, 2, 6],
  ]);
  // And the bytes those offsets hold are the ones the pages were stored with.
  const fillOf = (link: number, off: number): number => fs.readFileSync(path.join(chain[link]!.dir, 'pages-2.img'))[off * PAGE]!;
  assert.deepEqual(pieces.map(([, , link, off]) => fillOf(link!, off!)), [0x30, 0x11, 0x22, 0x13, 0x25, 0x16]);
});

test('a chain with a missing, damaged or replaced parent is refused, naming both images', () => {
  let t = threeLevels();
  fs.renameSync(t.c, `${t.c}.gone`);
  rejects(() => readImageChain(t.g), 'IMAGE_PARENT_MISSING', /ckpt-0003 is incremental on .*ckpt-0002, which is missing or incomplete/);

  t = threeLevels();
  const pf = path.join(t.p, 'pages-2.img');
  const b = fs.readFileSync(pf);
  b[5 * PAGE + 7] = b[5 * PAGE + 7]! ^ 1;
  fs.writeFileSync(pf, b);
  rejects(() => readImageChain(t.g), 'IMAGE_PARENT_DAMAGED', /ckpt-0002 is incremental on .*ckpt-0001, which is damaged: .*fails its checksum/);

  t = threeLevels();
  fs.rmSync(t.c, { recursive: true });
  const mp = readImage(t.p);
  image(t.c, [[2, 1], [5, 1]], [[0, 2], [3, 2], [6, 2]], 0x40, { dir: t.p, m: mp }, '2026-02-02T00:00:00.000Z');
  rejects(() => readImageChain(t.g), 'IMAGE_PARENT_MISMATCH', /not the image it was taken on/);

  // A parent that lacks a page the child says it inherited.
  const root = tmp();
  const p = path.join(root, 'a');
  const c = path.join(root, 'b');
  const m = image(p, [[0, 4]], undefined, 1);
  image(c, [[0, 1]], [[1, 5]], 2, { dir: p, m });
  rejects(() => readImageChain(c), 'IMAGE_PARENT_MISMATCH', /page 0x10004000 of process 2 is inherited from parent .*, which does not have it/);
});

test('format version 2 rules: inherited pages need a parent and version 2, stay disjoint from runs; hashes cover every page', () => {
  const { g } = threeLevels();
  const edit = (f: (m: Record<string, any>) => void): void => {
    const p = path.join(g, 'manifest.json');
    const orig = fs.readFileSync(p, 'utf8');
    const m = JSON.parse(orig) as Record<string, any>;
    f(m);
    m.checksum = manifestChecksum(m);
    fs.writeFileSync(p, canonicalJson(m));
    try {
      readImage(g);
      assert.fail('accepted');
    } catch (e) {
      if (!(e instanceof CrestError)) throw e;
      assert.equal(e.code, 'IMAGE_INVALID', e.message);
    } finally {
      fs.writeFileSync(p, orig);
    }
  };
  edit((m) => (m.formatVersion = 1));
  edit((m) => delete m.parent);
  edit((m) => (m.processes[0].vmas[0].inherited = [[0, 2]]));
  edit((m) => (m.processes[0].vmas[0].inherited = [[1, 8]]));
  edit((m) => (m.processes[0].vmas[0].inherited = [[2, 1], [1, 1]]));
  edit((m) => (m.processes[0].vmas[0].inherited = [[1, 6]]));
  edit((m) => (m.processes[0].hashesFile = 'nope.img'));
  edit((m) => (m.processes[0].compression = { codec: 'zstd', blocks: [[2, 0]] }));
  edit((m) => (m.processes[0].compression = { codec: 'zstd', blocks: [[1, 5000]] }));
  edit((m) => (m.processes[0].compression = { codec: 'zstd', blocks: [[1, 0], [1, 10]] }));
  assert.equal(readImage(g).formatVersion, 2);

  // A version 1 image (no version 2 fields) still reads.
  const d1 = tmp();
  const w = ImageWriter.create(d1, { force: false });
  const f = w.openData('pages-2.img');
  f.write(Buffer.alloc(PAGE));
  f.close();
  const p1 = proc([[0, 1]], undefined, false);
  w.commit({ magic: IMAGE_MAGIC, formatVersion: 1, crestVersion: 'old', createdAt: '2025-01-01T00:00:00.000Z', source: { kernel: 'k', arch: 'x86_64', pageSize: 4096, hostname: 'h', vdso: [] }, job: { name: null, pidMode: 'userns', uid: 1, gid: 1 }, processes: [p1] });
  assert.equal(readImage(d1).formatVersion, 1);
});
