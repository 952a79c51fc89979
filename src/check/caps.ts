// Capability numbers crest cares about, and the decoder of file capabilities
// (the `security.capability` xattr: struct vfs_cap_data / vfs_ns_cap_data).
import { CrestError } from '../sys/errors.js';

export const CAP_SYS_PTRACE = 19;
export const CAP_SYS_ADMIN = 21;
export const CAP_CHECKPOINT_RESTORE = 40;

/** The capabilities `crest check` reports, by name. */
export const CHECKED_CAPS: ReadonlyArray<readonly [name: string, bit: number]> = [
  ['cap_checkpoint_restore', CAP_CHECKPOINT_RESTORE],
  ['cap_sys_admin', CAP_SYS_ADMIN],
  ['cap_sys_ptrace', CAP_SYS_PTRACE],
];

/** True when capability `bit` is set in the 64-bit mask. */
export function hasCap(mask: bigint, bit: number): boolean {
  return ((mask >> BigInt(bit)) & 1n) === 1n;
}

/** A 64-bit mask as 0x-prefixed, 16-digit lower-case hex (JSON-safe). */
export function hex64(v: bigint): string {
  return `0x${v.toString(16).padStart(16, '0')}`;
}

const VFS_CAP_REVISION_MASK = 0xff000000;
const VFS_CAP_FLAGS_EFFECTIVE = 0x000001;
const VFS_CAP_REVISION_1 = 0x01000000;
const VFS_CAP_REVISION_2 = 0x02000000;
const VFS_CAP_REVISION_3 = 0x03000000;

/** Decoded file capabilities. */
export interface FileCaps {
  /** 1, 2 or 3 (3 = namespaced, carries the owner root uid). */
  revision: 1 | 2 | 3;
  /** The effective flag: permitted capabilities become effective at exec. */
  effective: boolean;
  permitted: bigint;
  inheritable: bigint;
  /** Revision 3 only: the user namespace root uid the capabilities are valid for. */
  rootid?: number;
}

/**
 * Decodes a `security.capability` value: little-endian u32 magic_etc (revision
 * in the high byte, effective flag in bit 0), then {permitted, inheritable}
 * u32 pairs (one pair in revision 1, low and high words in 2 and 3), then for
 * revision 3 the rootid. Throws CrestError CAPS_PARSE on anything else.
 */
export function decodeFileCaps(buf: Buffer): FileCaps {
  const bad = (why: string): CrestError =>
    new CrestError('CAPS_PARSE', `security.capability of ${buf.length} bytes: ${why}`);
  if (buf.length < 4) throw bad('too short');
  const magic = buf.readUInt32LE(0);
  const rev = (magic & VFS_CAP_REVISION_MASK) >>> 0;
  const effective = (magic & VFS_CAP_FLAGS_EFFECTIVE) !== 0;
  if (rev === VFS_CAP_REVISION_1) {
    if (buf.length !== 12) throw bad('revision 1 needs 12 bytes');
    return { revision: 1, effective, permitted: BigInt(buf.readUInt32LE(4)), inheritable: BigInt(buf.readUInt32LE(8)) };
  }
  if (rev !== VFS_CAP_REVISION_2 && rev !== VFS_CAP_REVISION_3) throw bad(`unknown revision 0x${rev.toString(16)}`);
  const want = rev === VFS_CAP_REVISION_2 ? 20 : 24;
  if (buf.length !== want) throw bad(`revision ${rev >>> 24} needs ${want} bytes`);
  const word = (i: number): bigint => BigInt(buf.readUInt32LE(4 + i * 4));
  const out: FileCaps = {
    revision: rev === VFS_CAP_REVISION_2 ? 2 : 3,
    effective,
    permitted: word(0) | (word(2) << 32n),
    inheritable: word(1) | (word(3) << 32n),
  };
  if (rev === VFS_CAP_REVISION_3) out.rootid = buf.readUInt32LE(20);
  return out;
}

/** Encodes file capabilities (revision 2 or 3) the way setcap writes them; for tests. */
export function encodeFileCaps(c: FileCaps): Buffer {
  const buf = Buffer.alloc(c.revision === 3 ? 24 : 20);
  buf.writeUInt32LE(((c.revision === 3 ? VFS_CAP_REVISION_3 : VFS_CAP_REVISION_2) | (c.effective ? 1 : 0)) >>> 0, 0);
  const lo = (v: bigint): number => Number(v & 0xffffffffn);
  const hi = (v: bigint): number => Number((v >> 32n) & 0xffffffffn);
  buf.writeUInt32LE(lo(c.permitted), 4);
  buf.writeUInt32LE(lo(c.inheritable), 8);
  buf.writeUInt32LE(hi(c.permitted), 12);
  buf.writeUInt32LE(hi(c.inheritable), 16);
  if (c.revision === 3) buf.writeUInt32LE(c.rootid ?? 0, 20);
  return buf;
}

/** Names of the checked capabilities present in `mask`, e.g. "cap_sys_admin, cap_sys_ptrace" ('none' when empty). */
export function capNames(mask: bigint): string {
  const names = CHECKED_CAPS.filter(([, bit]) => hasCap(mask, bit)).map(([n]) => n);
  return names.length ? names.join(', ') : 'none';
}
