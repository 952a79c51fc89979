// Canonical JSON: the one byte sequence a manifest is written as, so that the
// manifest checksum can be recomputed by any reader and decoding then
// re-encoding an image gives back the same bytes.
//
// Rules (docs/image-format.md repeats them for independent readers):
// - objects: keys sorted by UTF-16 code units (JavaScript's default sort),
//   keys whose value is undefined left out, one key per line as `"key": value`;
// - arrays: an array that holds no object at any depth (scalars and such
//   arrays only, or empty) on one line with no spaces: `[[0,4],[9,1]]`,
//   `["rd","wr"]`, `[]`; any other array one element per line;
// - nesting indented by one space per level; `{}` and `[]` when empty;
// - strings and numbers exactly as JSON.stringify writes them (shortest
//   round-trip form for numbers, \uXXXX for lone surrogates);
// - NaN, Infinity, bigint, functions, symbols, undefined array elements and
//   anything that is not a plain object or array are refused;
// - the text ends with one newline and is stored as UTF-8.
import { crc32 } from 'node:zlib';

/** Thrown for a value that has no canonical form; carries the path to it. */
export class CanonicalError extends Error {
  readonly path: string;
  constructor(path: string, message: string) {
    super(`${path || '(top level)'}: ${message}`);
    this.name = 'CanonicalError';
    this.path = path;
  }
}

// One indentation string per depth, built once: manifests nest about 8 deep.
const indents: string[] = [''];
function indent(depth: number): string {
  while (indents.length <= depth) indents.push(' '.repeat(indents.length));
  return indents[depth] as string;
}

// Encoding runs without tracking paths (a manifest holds hundreds of
// thousands of run tuples); when it fails, a second walk finds where.
class Refused extends Error {}

function scalar(value: unknown): string | undefined {
  switch (typeof value) {
    case 'string':
      return JSON.stringify(value);
    case 'number':
      if (!Number.isFinite(value)) throw new Refused(`${value} is not a finite number`);
      // Integers (addresses, sizes, page indexes: nearly every number) skip JSON.stringify.
      return Number.isInteger(value) && Math.abs(value) < 1e21 ? String(value) : JSON.stringify(value);
    case 'boolean':
      return value ? 'true' : 'false';
    case 'object':
      return value === null ? 'null' : undefined;
    default:
      throw new Refused(`a ${typeof value} has no JSON form`);
  }
}

function isPlainObject(value: object): boolean {
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function checkContainer(obj: object): void {
  if (!Array.isArray(obj) && !isPlainObject(obj)) {
    throw new Refused(`a ${obj.constructor?.name ?? 'non-plain'} object has no canonical form`);
  }
}

/**
 * True when `arr` holds no objects at any depth (only scalars and such
 * arrays); checks every scalar on the way (throws Refused).
 */
function isFlat(arr: readonly unknown[]): boolean {
  for (let i = 0; i < arr.length; i++) {
    const el = arr[i];
    switch (typeof el) {
      case 'number':
        if (!Number.isFinite(el)) throw new Refused(`${el} is not a finite number`);
        break;
      case 'string':
      case 'boolean':
        break;
      case 'object':
        if (el === null) break;
        if (!Array.isArray(el) || !isFlat(el)) return false;
        break;
      case 'undefined':
        throw new Refused('undefined array element');
      default:
        throw new Refused(`a ${typeof el} has no JSON form`);
    }
  }
  return true;
}

function encode(value: unknown, depth: number): string {
  const s = scalar(value);
  if (s !== undefined) return s;
  const obj = value as object;
  if (Array.isArray(obj)) {
    // Arrays without objects (page runs, uid tuples, vmFlags, rlimits) go on
    // one line; JSON.stringify writes them exactly as the rules say, natively,
    // which keeps hundreds of thousands of runs cheap.
    if (isFlat(obj)) return JSON.stringify(obj);
    const inner = indent(depth + 1);
    let out = '[\n';
    for (let i = 0; i < obj.length; i++) {
      out += (i === 0 ? '' : ',\n') + inner + encode(obj[i], depth + 1);
    }
    return out + '\n' + indent(depth) + ']';
  }
  checkContainer(obj);
  const rec = obj as Record<string, unknown>;
  const keys = Object.keys(rec).sort();
  const inner = indent(depth + 1);
  let out = '';
  for (const key of keys) {
    const el = rec[key];
    if (el === undefined) continue;
    out += (out === '' ? '' : ',\n') + inner + JSON.stringify(key) + ': ' + encode(el, depth + 1);
  }
  return out === '' ? '{}' : '{\n' + out + '\n' + indent(depth) + '}';
}

function childPath(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  return /^[A-Za-z_$][\w$]*$/.test(key) ? `${path}${path ? '.' : ''}${key}` : `${path}[${JSON.stringify(key)}]`;
}

/** Where encode() gave up, and why: the slow walk, only run after a failure. */
function findRefused(value: unknown, path: string): CanonicalError | undefined {
  try {
    if (scalar(value) !== undefined) return undefined;
    checkContainer(value as object);
  } catch (e) {
    return new CanonicalError(path, (e as Error).message);
  }
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const el: unknown = value[i];
      if (el === undefined) return new CanonicalError(childPath(path, i), 'undefined array element');
      const bad = findRefused(el, childPath(path, i));
      if (bad) return bad;
    }
    return undefined;
  }
  for (const [key, el] of Object.entries(value as Record<string, unknown>)) {
    if (el === undefined) continue;
    const bad = findRefused(el, childPath(path, key));
    if (bad) return bad;
  }
  return undefined;
}

/** The canonical text of a JSON-like value (see the rules above); throws CanonicalError. */
export function canonicalJson(value: unknown): string {
  try {
    return encode(value, 0) + '\n';
  } catch (e) {
    if (!(e instanceof Refused)) throw e; // RangeError from absurd nesting and the like
    throw findRefused(value, '') ?? new CanonicalError('', e.message);
  }
}

/** The placeholder the manifest checksum is computed over. */
export const CHECKSUM_PLACEHOLDER = '00000000';

/** A CRC-32 (zlib polynomial) as the image stores it: 8 lower-case hex digits. */
export function crc32Hex(value: number): string {
  return (value >>> 0).toString(16).padStart(8, '0');
}

/**
 * The checksum a manifest must carry: CRC-32 of the UTF-8 bytes of the
 * canonical text of `manifest` with its `checksum` set to "00000000".
 * Works on any parsed JSON object (the reader uses it before schema validation).
 */
export function manifestChecksum(manifest: Record<string, unknown>): string {
  const text = canonicalJson({ ...manifest, checksum: CHECKSUM_PLACEHOLDER });
  return crc32Hex(crc32(Buffer.from(text, 'utf8')));
}
