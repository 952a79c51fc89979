// The image layer: writer commit protocol, reader refusals (one per error
// code), canonical round trips and the disk-full mapping.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { crc32 } from 'node:zlib';
import { CrestError } from '../src/sys/errors.js';
import { canonicalJson, crc32Hex, manifestChecksum, CanonicalError } from '../src/image/canonical.js';
import { ImageWriter, imageWriteError, type ManifestDraft } from '../src/image/writer.js';
import { readImage, forEachRun, pageOffset } from '../src/image/reader.js';
import { describeImage, summarizeImage } from '../src/image/show.js';
import { FORMAT_VERSION, IMAGE_MAGIC, REG_NAMES, type Manifest, type ProcessImage } from '../src/image/schema.js';

const PAGE = 4096;

const made: string[] = [];
function tmpDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'crest-image-'));
  made.push(dir);
  return dir;
}
after(() => {
  for (const dir of made) fs.rmSync(dir, { recursive: true, force: true });
});

const identity = (p: string) => ({ path: p, dev: 2049, ino: 1234, size: 16384, mtimeMs: 1712345678901.25 });
const zero = '0x0';

/** A small valid process: 4 VMAs (code, heap, stack, vdso) with 2+1+1 runs = 6 pages. */
function draft(pid = 2): ManifestDraft {
  const regs = Object.fromEntries(REG_NAMES.map((n) => [n, zero])) as ProcessImage['threads'][number]['regs'];
  regs.rip = '0x401000';
  const proc: ProcessImage = {
    pid,
    ppid: 1,
    pgid: pid,
    sid: 1,
    comm: 'target',
    exe: identity('/usr/bin/target'),
    cwd: '/home/u',
    umask: 0o22,
    personality: 0,
    nice: 0,
    creds: {
      uid: [1000, 1000, 1000, 1000],
      gid: [1000, 1000, 1000, 1000],
      groups: [1000],
      capInh: zero,
      capPrm: zero,
      capEff: zero,
      capBnd: '0x1ffffffffff',
      capAmb: zero,
      noNewPrivs: false,
    },
    rlimits: [[7, '0x400', '0x100000']],
    itimers: {
      real: { intervalUs: 0, valueUs: 0 },
      virtual: { intervalUs: 0, valueUs: 0 },
      prof: { intervalUs: 0, valueUs: 0 },
    },
    mm: {
      startCode: 0x400000, endCode: 0x402000, startData: 0x403000, endData: 0x404000,
      startBrk: 0x405000, brk: 0x407000, startStack: 0x7ffc0000f000,
      argStart: 0x7ffc0000f100, argEnd: 0x7ffc0000f200, envStart: 0x7ffc0000f200, envEnd: 0x7ffc0000f300,
      auxv: 'AAAA',
    },
    vmas: [
      { start: 0x400000, end: 0x404000, prot: 'r-x', shared: false, kind: 'file', pgoff: 0, file: identity('/usr/bin/target'), vmFlags: ['rd', 'ex'], runs: [[0, 1], [2, 1]] },
      { start: 0x405000, end: 0x407000, prot: 'rw-', shared: false, kind: 'anon', pgoff: 0, label: '[heap]', vmFlags: ['rd', 'wr'], runs: [[0, 2]] },
      { start: 0x7ffc00000000, end: 0x7ffc00010000, prot: 'rw-', shared: false, kind: 'anon', pgoff: 0, label: '[stack]', vmFlags: ['rd', 'wr', 'gd'], runs: [[14, 2]] },
      { start: 0x7ffc00020000, end: 0x7ffc00022000, prot: 'r-x', shared: false, kind: 'vdso', pgoff: 0, label: '[vdso]', vmFlags: ['rd', 'ex'], runs: [] },
    ],
    pagesFile: `pages-${pid}.img`,
    files: [
      { kind: 'stdio', id: 0, stream: 1, was: '/dev/pts/3' },
      { kind: 'file', id: 1, file: identity('/tmp/log'), flags: 0o2001, pos: 120 },
      { kind: 'chardev', id: 2, path: '/dev/null', rdev: 259, flags: 0, pos: 0 },
    ],
    fds: [
      { fd: 0, file: 2, cloexec: false },
      { fd: 1, file: 0, cloexec: false },
      { fd: 2, file: 0, cloexec: false },
      { fd: 3, file: 1, cloexec: true },
    ],
    sigactions: [{ sig: 10, handler: '0x401234', flags: '0x4000000', restorer: '0x401300', mask: zero }],
    sharedPending: [],
    threads: [
      {
        tid: pid,
        regs,
        xstate: 'AAAA',
        xfeatures: '0x7',
        sigmask: '0x4002',
        pending: [],
        sigaltstack: { sp: zero, flags: 2, size: 0 },
        rseq: null,
        robustList: { head: zero, len: 24 },
        clearChildTid: zero,
      },
    ],
  };
  return {
    magic: IMAGE_MAGIC,
    formatVersion: FORMAT_VERSION,
    crestVersion: '0.1.0',
    createdAt: '2024-04-05T10:11:12.131Z',
    source: { kernel: '6.8.0', arch: 'x86_64', pageSize: 4096, hostname: 'box', vdso: [{ kind: 'vdso', size: 8192 }] },
    job: { name: 'demo', pidMode: 'userns', uid: 1000, gid: 1000 },
    processes: [proc],
  };
}

/** Page i of the synthetic image: filled with byte i+1, so each page is recognisable. */
function pages(n: number): Buffer {
  const b = Buffer.alloc(n * PAGE);
  for (let i = 0; i < n; i++) b.fill(i + 1, i * PAGE, (i + 1) * PAGE);
  return b;
}

/** Writes the synthetic image into dir (6 pages, written in two pieces). */
function writeImage(dir: string, opts = { force: false }, d = draft()): Manifest {
  const w = ImageWriter.create(dir, opts);
  try {
    const f = w.openData(d.processes[0]!.pagesFile);
    const data = pages(6);
    f.write(data, 0, 3 * PAGE);
    f.write(data, 3 * PAGE);
    f.close();
    return w.commit(d);
  } catch (e) {
    w.abort();
    throw e;
  }
}

function rejects(fn: () => unknown, expected: string, pattern?: RegExp): CrestError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof CrestError, `expected CrestError, got ${String(e)}`);
    assert.equal(e.code, expected, e.message);
    if (pattern) assert.match(e.message, pattern);
    return e;
  }
  assert.fail(`expected ${expected}`);
}

/** Rewrites the manifest with `edit` applied and, when `resign`, a correct checksum. */
function editManifest(dir: string, edit: (m: Record<string, any>) => void, resign: boolean): void {
  const p = path.join(dir, 'manifest.json');
  const m = JSON.parse(fs.readFileSync(p, 'utf8')) as Record<string, any>;
  edit(m);
  if (resign) m.checksum = manifestChecksum(m);
  fs.writeFileSync(p, canonicalJson(m));
}

test('write then read gives the same manifest and the pages in run order', () => {
  const dir = tmpDir();
  const written = writeImage(dir);
  assert.deepEqual(fs.readdirSync(dir).sort(), ['manifest.json', 'pages-2.img']);
  const read = readImage(dir);
  assert.deepEqual(read, written);
  assert.equal(read.files['pages-2.img']!.size, 6 * PAGE);
  assert.equal(read.files['pages-2.img']!.crc32, crc32Hex(crc32(pages(6))));
  assert.match(read.checksum, /^[0-9a-f]{8}$/);
  assert.equal(fs.statSync(path.join(dir, 'pages-2.img')).mode & 0o777, 0o600);

  const runs: number[][] = [];
  forEachRun(read.processes[0]!, (vma, first, count, off) => runs.push([vma.start, first, count, off]));
  assert.deepEqual(runs, [
    [0x400000, 0, 1, 0],
    [0x400000, 2, 1, PAGE],
    [0x405000, 0, 2, 2 * PAGE],
    [0x7ffc00000000, 14, 2, 4 * PAGE],
  ]);
  const proc = read.processes[0]!;
  assert.equal(pageOffset(proc, 0x402010), PAGE);
  assert.equal(pageOffset(proc, 0x401000), null);
  assert.equal(pageOffset(proc, 0x7ffc0000f000), 5 * PAGE);
  assert.equal(pageOffset(proc, 0x10), null);
  // The stored bytes are where forEachRun says: page at 0x7ffc0000f000 is the 6th written.
  const fd = fs.openSync(path.join(dir, 'pages-2.img'), 'r');
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, pageOffset(proc, 0x7ffc0000f000)!);
  fs.closeSync(fd);
  assert.equal(b[0], 6);
});

test('decoding and re-encoding an image gives identical bytes', () => {
  const dir = tmpDir();
  const written = writeImage(dir);
  const bytes = fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8');
  assert.equal(canonicalJson(JSON.parse(bytes)), bytes);
  assert.equal(canonicalJson(readImage(dir)), bytes);
  assert.equal(canonicalJson(written), bytes);
  assert.ok(bytes.endsWith('\n'));
});

test('canonical JSON: sorted keys, leaf arrays inline, strict about values', () => {
  assert.equal(canonicalJson({ b: 1, a: [1, 'x', null, true], c: { z: [], y: {} }, u: undefined }),
    '{\n "a": [1,"x",null,true],\n "b": 1,\n "c": {\n  "y": {},\n  "z": []\n }\n}\n');
  assert.equal(canonicalJson([[0, 1], [2, [3, 'x']]]), '[[0,1],[2,[3,"x"]]]\n');
  assert.equal(canonicalJson([{ b: 1, a: [[1]] }, [{}]]), '[\n {\n  "a": [[1]],\n  "b": 1\n },\n [\n  {}\n ]\n]\n');
  assert.equal(canonicalJson({ s: 'é\ud800"\n', n: 1.5, big: 2 ** 60, neg: -0 }),
    `{\n "big": ${JSON.stringify(2 ** 60)},\n "n": 1.5,\n "neg": 0,\n "s": ${JSON.stringify('é\ud800"\n')}\n}\n`);
  for (const bad of [{ a: { b: [1, NaN] } }, { a: Infinity }, { a: 1n }, { d: new Date(0) }, { a: [undefined] }]) {
    assert.throws(() => canonicalJson(bad), CanonicalError);
  }
  assert.throws(() => canonicalJson({ a: { b: [1, NaN] } }), /a\.b\[1\]: NaN is not a finite number/);
  // Stable under a decode/encode cycle, whatever the input order.
  const messy = { z: [{ y: 1, x: [2, 3] }], a: 'é' };
  const once = canonicalJson(messy);
  assert.equal(canonicalJson(JSON.parse(once)), once);
});

test('an existing image is refused without force, replaced with it', () => {
  const dir = tmpDir();
  writeImage(dir);
  rejects(() => ImageWriter.create(dir, { force: false }), 'IMAGE_EXISTS', /already holds a checkpoint image; pass --force/);
  fs.writeFileSync(path.join(dir, 'notes.txt'), 'mine');
  const d = draft(7);
  writeImage(dir, { force: true }, d);
  // The old image's data file is gone, unrelated files stay.
  assert.deepEqual(fs.readdirSync(dir).sort(), ['manifest.json', 'notes.txt', 'pages-7.img']);
  assert.equal(readImage(dir).processes[0]!.pid, 7);
});

test('with force, the old image stops being complete before new data lands', () => {
  const dir = tmpDir();
  writeImage(dir);
  const w = ImageWriter.create(dir, { force: true });
  // Right after create, before any new data: no manifest, old data removed.
  assert.deepEqual(fs.readdirSync(dir), []);
  const f = w.openData('pages-2.img');
  f.write(pages(1));
  // A crash here (no abort) leaves an incomplete image, never the old one.
  rejects(() => readImage(dir), 'IMAGE_INCOMPLETE', /never completed/);
  w.abort();
  assert.deepEqual(fs.readdirSync(dir), []);
  rejects(() => readImage(dir), 'IMAGE_NOT_AN_IMAGE');
});

test('abort removes what the writer created and is idempotent; commit is final', () => {
  const dir = path.join(tmpDir(), 'new', 'img');
  const w = ImageWriter.create(dir, { force: false });
  const a = w.openData('pages-2.img');
  a.write(pages(2));
  a.close();
  w.openData('pages-3.img').write(pages(1));
  assert.throws(() => w.commit(draft()), /still open/);
  w.abort();
  w.abort();
  assert.deepEqual(fs.readdirSync(dir), []);
  assert.throws(() => w.openData('x.img'), /already aborted/);

  const dir2 = tmpDir();
  const w2 = ImageWriter.create(dir2, { force: false });
  const f = w2.openData('pages-2.img');
  f.write(pages(6));
  f.close();
  w2.commit(draft());
  w2.abort(); // no-op after commit
  readImage(dir2);
});

test('the writer refuses bad names and manifests the reader would refuse', () => {
  const dir = tmpDir();
  const w = ImageWriter.create(dir, { force: false });
  for (const bad of ['manifest.json', 'manifest.json.tmp', '..', 'a/b', '', 'x y']) {
    assert.throws(() => w.openData(bad), /invalid data file name/);
  }
  const f = w.openData('pages-2.img');
  f.write(pages(5)); // one page short of what the runs say
  f.close();
  rejects(() => w.commit(draft()), 'IMAGE_INVALID', /a bug in crest.*pagesFile.*6 pages/);
  w.abort();
  assert.deepEqual(fs.readdirSync(dir), []);
});

test('a non-empty unrelated directory is refused; leftovers of an aborted dump are not', () => {
  const dir = tmpDir();
  fs.writeFileSync(path.join(dir, 'thesis.tex'), 'x');
  rejects(() => ImageWriter.create(dir, { force: false }), 'IMAGE_DIR_NOT_EMPTY', /thesis\.tex.*--force/);
  rejects(() => readImage(dir), 'IMAGE_NOT_AN_IMAGE');
  writeImage(dir, { force: true });
  assert.ok(fs.existsSync(path.join(dir, 'thesis.tex')));
  readImage(dir);

  const aborted = tmpDir();
  fs.writeFileSync(path.join(aborted, 'pages-2.img'), 'partial');
  fs.writeFileSync(path.join(aborted, 'manifest.json.tmp'), '{"magic":');
  rejects(() => readImage(aborted), 'IMAGE_INCOMPLETE');
  writeImage(aborted);
  assert.deepEqual(fs.readdirSync(aborted).sort(), ['manifest.json', 'pages-2.img']);
  readImage(aborted);

  const file = path.join(tmpDir(), 'plain');
  fs.writeFileSync(file, '');
  rejects(() => ImageWriter.create(file, { force: true }), 'IMAGE_DIR_INVALID');
  rejects(() => ImageWriter.create(path.join(file, 'sub'), { force: true }), 'IMAGE_DIR_INVALID');
  rejects(() => readImage(file), 'IMAGE_DIR_INVALID');
});

test('a crash between the temp manifest and the rename leaves an incomplete image', () => {
  const dir = tmpDir();
  writeImage(dir);
  fs.renameSync(path.join(dir, 'manifest.json'), path.join(dir, 'manifest.json.tmp'));
  rejects(() => readImage(dir), 'IMAGE_INCOMPLETE', /interrupted or the disk filled/);
  const only = tmpDir();
  fs.writeFileSync(path.join(only, 'pages-2.img'), pages(1));
  rejects(() => readImage(only), 'IMAGE_INCOMPLETE');
});

test('data file damage: truncation, a flipped byte, a missing file', () => {
  const dir = tmpDir();
  writeImage(dir);
  const p = path.join(dir, 'pages-2.img');
  const orig = fs.readFileSync(p);

  const flipped = Buffer.from(orig);
  flipped[3 * PAGE + 17] = flipped[3 * PAGE + 17]! ^ 0x40;
  fs.writeFileSync(p, flipped);
  rejects(() => readImage(dir), 'IMAGE_CHECKSUM', /pages-2\.img fails its checksum/);
  readImage(dir, { verifyData: false }); // sizes only

  fs.truncateSync(p, 5 * PAGE);
  rejects(() => readImage(dir, { verifyData: false }), 'IMAGE_TRUNCATED', /20480 bytes, but the manifest records 24576/);
  fs.unlinkSync(p);
  rejects(() => readImage(dir), 'IMAGE_TRUNCATED', /missing/);
  fs.writeFileSync(p, orig);
  readImage(dir);
});

test('manifest damage: hand edits, schema violations, semantics, versions, junk', () => {
  const dir = tmpDir();
  writeImage(dir);
  const mp = path.join(dir, 'manifest.json');
  const good = fs.readFileSync(mp);
  const reset = () => fs.writeFileSync(mp, good);

  // Schema-valid hand edit without re-signing.
  editManifest(dir, (m) => { m.processes[0].comm = 'evil'; }, false);
  rejects(() => readImage(dir), 'IMAGE_CHECKSUM', /modified or damaged/);
  reset();
  // Whitespace changes do not matter: the checksum covers the canonical form.
  fs.writeFileSync(mp, JSON.stringify(JSON.parse(good.toString())));
  readImage(dir);
  reset();

  // Re-signed but schema-invalid: the path is named.
  editManifest(dir, (m) => { m.processes[0].vmas[3].start = 'x'; }, true);
  rejects(() => readImage(dir), 'IMAGE_INVALID', /processes\[0\]\.vmas\[3\]\.start: Invalid type/);
  editManifest(dir, (m) => { m.processes[0].extra = 1; }, true);
  rejects(() => readImage(dir), 'IMAGE_INVALID', /processes\[0\]\.extra/);
  reset();
  editManifest(dir, (m) => { delete m.checksum; }, false);
  rejects(() => readImage(dir), 'IMAGE_INVALID', /checksum/);
  reset();

  // Re-signed, schema-valid, semantically wrong.
  const semantic: [string, (m: Record<string, any>) => void, RegExp][] = [
    ['overlap', (m) => { m.processes[0].vmas[1].start = 0x403000; }, /vmas\[1\]\.start: .*overlaps vmas\[0\]/],
    ['unsorted', (m) => { m.processes[0].vmas.reverse(); }, /not sorted/],
    ['unaligned', (m) => { m.processes[0].vmas[1].end += 1; }, /vmas\[1\]: .*not page-aligned/],
    ['run outside', (m) => { m.processes[0].vmas[1].runs = [[1, 2]]; }, /runs\[0\]: .*past the mapping's 2 pages/],
    ['runs overlap', (m) => { m.processes[0].vmas[0].runs = [[0, 2], [1, 1]]; }, /runs\[1\]: .*overlaps/],
    ['vdso runs', (m) => { m.processes[0].vmas[3].runs = [[0, 1]]; }, /vmas\[3\]\.runs: a vdso mapping/],
    ['file without file', (m) => { delete m.processes[0].vmas[0].file; }, /vmas\[0\]\.file/],
    ['size', (m) => { m.processes[0].vmas[1].runs = [[0, 1]]; }, /pagesFile: .*records 24576 bytes, but the runs store 5 pages/],
    ['unlisted', (m) => { m.processes[0].pagesFile = 'pages-9.img'; }, /not listed in files/],
    ['dup fd', (m) => { m.processes[0].fds[1].fd = 0; }, /fds\[1\]\.fd: fd 0 appears twice/],
    ['fd file index', (m) => { m.processes[0].fds[0].file = 3; }, /fds\[0\]\.file: index 3 is outside files/],
    ['dup id', (m) => { m.processes[0].files[1].id = 0; }, /files\[1\]\.id/],
    ['dup pid', (m) => { const p = structuredClone(m.processes[0]); p.threads[0].tid = 5; m.processes.push(p); }, /pid 2 already used/],
    ['dup tid', (m) => { m.processes[0].threads.push(structuredClone(m.processes[0].threads[0])); }, /tid 2 already used/],
    ['reserved name', (m) => { m.files['manifest.json'] = { size: 0, crc32: '00000000' }; }, /reserved/],
    ['shared with itself', (m) => { m.processes[0].files.push({ kind: 'shared', id: 9, pid: 2, file: 0 }); }, /files\[\d+\]: it refers to pid 2, which is not an earlier process/],
    [
      'shared entry of a shared entry',
      (m) => {
        const child = structuredClone(m.processes[0]);
        child.pid = 3;
        child.ppid = 2;
        child.threads[0].tid = 3;
        child.pagesFile = 'pages-3.img';
        child.vmas = [];
        child.files = [{ kind: 'shared', id: 0, pid: 2, file: 0 }];
        child.fds = [{ fd: 0, file: 0, cloexec: false }];
        m.files['pages-3.img'] = { size: 0, crc32: '00000000' };
        m.processes.push(child);
      },
      /processes\[1\]\.files\[0\]: it refers to files\[0\] of pid 2, a \w+ entry/,
    ],
  ];
  for (const [what, edit, pattern] of semantic) {
    editManifest(dir, edit, true);
    const e = rejects(() => readImage(dir), 'IMAGE_INVALID');
    assert.match(e.message, pattern, what);
    reset();
  }

  editManifest(dir, (m) => { m.formatVersion = 99; }, false);
  rejects(() => readImage(dir), 'IMAGE_TOO_NEW', /version 99 is newer than this crest understands \(2\); upgrade crest/);
  editManifest(dir, (m) => { m.formatVersion = 0; }, false);
  rejects(() => readImage(dir), 'IMAGE_UNSUPPORTED_VERSION');
  editManifest(dir, (m) => { m.formatVersion = '1'; }, false);
  rejects(() => readImage(dir), 'IMAGE_UNSUPPORTED_VERSION');
  editManifest(dir, (m) => { m.magic = 'other'; }, true);
  rejects(() => readImage(dir), 'IMAGE_NOT_AN_IMAGE');
  fs.writeFileSync(mp, '[1,2]');
  rejects(() => readImage(dir), 'IMAGE_NOT_AN_IMAGE');
  fs.writeFileSync(mp, good.subarray(0, 100));
  rejects(() => readImage(dir), 'IMAGE_CORRUPT', /not valid JSON/);
  fs.writeFileSync(mp, Buffer.from([0x7b, 0xff, 0x7d]));
  rejects(() => readImage(dir), 'IMAGE_CORRUPT', /UTF-8/);
  fs.writeFileSync(mp, good.toString().replace('"pid": 2', '"pid": 1e400'));
  rejects(() => readImage(dir), 'IMAGE_INVALID', /processes\[0\]\.pid: Infinity is not a finite number/);
  reset();
  readImage(dir);
});

test('the manifest size is capped before reading', () => {
  const dir = tmpDir();
  const fd = fs.openSync(path.join(dir, 'manifest.json'), 'w');
  fs.ftruncateSync(fd, 256 * 1024 * 1024 + 1); // sparse: costs no disk
  fs.closeSync(fd);
  rejects(() => readImage(dir), 'IMAGE_INVALID', /more than the 268435456/);
});

test('reader: missing directory and random directories', () => {
  rejects(() => readImage(path.join(tmpDir(), 'nope')), 'IMAGE_NOT_FOUND', /does not exist/);
  const dir = tmpDir();
  fs.mkdirSync(path.join(dir, 'sub'));
  fs.writeFileSync(path.join(dir, 'a.txt'), 'hello');
  rejects(() => readImage(dir), 'IMAGE_NOT_AN_IMAGE', /no manifest\.json/);
  rejects(() => readImage(tmpDir()), 'IMAGE_NOT_AN_IMAGE');
});

test('write errors map to IMAGE_WRITE, naming the file and a full disk', () => {
  const enospc = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
  const e = imageWriteError(enospc, '/img/pages-2.img', 'write');
  assert.equal(e.code, 'IMAGE_WRITE');
  assert.match(e.message, /pages-2\.img/);
  assert.match(e.message, /disk full/);
  assert.match(e.message, /ENOSPC/);
  assert.equal(e.cause, enospc);
  const edquot = imageWriteError(Object.assign(new Error('EDQUOT: disk quota exceeded'), { code: 'EDQUOT' }), 'f', 'write');
  assert.match(edquot.message, /disk full.*EDQUOT/);
  const eio = imageWriteError(Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' }), '/img/x.img', 'sync');
  assert.match(eio.message, /^cannot sync \/img\/x\.img: EIO: i\/o error/);
  assert.doesNotMatch(eio.message, /disk full/);
});

test('a full disk during a dump: IMAGE_WRITE, then abort leaves no image', { skip: process.getuid?.() !== 0 ? 'needs root to mount a tmpfs' : false }, (t) => {
  const mnt = tmpDir();
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mnt], { stdio: 'ignore' });
  } catch {
    t.skip('cannot mount a tmpfs here');
    return;
  }
  try {
    const dir = path.join(mnt, 'img');
    const w = ImageWriter.create(dir, { force: false });
    const f = w.openData('pages-2.img');
    const e = rejects(() => { for (let i = 0; i < 64; i++) f.write(pages(4)); }, 'IMAGE_WRITE', /pages-2\.img.*disk full/);
    assert.equal((e.cause as NodeJS.ErrnoException).code, 'ENOSPC');
    assert.throws(() => f.write(pages(1)), /disk full/); // the file stays failed
    w.abort();
    assert.deepEqual(fs.readdirSync(dir), []);
    rejects(() => readImage(dir), 'IMAGE_NOT_AN_IMAGE');
  } finally {
    execFileSync('umount', [mnt]);
  }
});

test('canonical serialisation of a 200k-run manifest is fast', () => {
  const d = draft();
  const proc = d.processes[0]!;
  const runs: [number, number][] = [];
  for (let i = 0; i < 200_000; i++) runs.push([i * 2, 1]);
  proc.vmas[2] = { ...proc.vmas[2]!, start: 0x7f0000000000, end: 0x7f0000000000 + 400_000 * PAGE, runs };
  const m = { ...d, files: { 'pages-2.img': { size: 0, crc32: '00000000' } }, checksum: '00000000' };
  canonicalJson(m); // warm up
  const t0 = performance.now();
  const text = canonicalJson(m);
  const ms = performance.now() - t0;
  assert.ok(text.length > 2_000_000, `${text.length} bytes`);
  assert.ok(ms < 500, `took ${ms.toFixed(1)} ms`);
  assert.equal(canonicalJson(JSON.parse(text)), text);
});

test('show: the summary names the process, its memory, files and signals', () => {
  const dir = tmpDir();
  const m = writeImage(dir);
  const text = describeImage(m, dir);
  for (const want of [/format version 2/, /crest 0\.1\.0/, /6\.8\.0/, /box/, /demo/, /userns/, /process 2 \(target\)/,
    /\/usr\/bin\/target/, /\/home\/u/, /0x401000/, /\[heap\]/, /\[stack\]/, /\/tmp\/log/, /\/dev\/null/, /SIGUSR1/,
    /SIGINT SIGTERM/, /pages-2\.img/, /24576/]) {
    assert.match(text, want);
  }
  const s = summarizeImage(m);
  assert.equal(s.formatVersion, 2);
  assert.equal(s.processes.length, 1);
  assert.equal(s.processes[0]!.pid, 2);
  assert.equal(s.processes[0]!.storedPages, 6);
  assert.equal(s.totalBytes, 6 * PAGE);
  assert.deepEqual(JSON.parse(JSON.stringify(s)), s);
});

