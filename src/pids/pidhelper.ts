// crest-pidhelper (helper/crest-pidhelper.c): where it is, whether it carries
// CAP_CHECKPOINT_RESTORE, and starting it. The same binary serves the cap
// mode (`husk`: clone3 set_tid, needs the capability) and the cycle mode
// (`cycle`: drops every capability first, then uses up IDs).
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../paths.js';
import { CAP_CHECKPOINT_RESTORE, decodeFileCaps, hasCap } from '../check/caps.js';
import { readStatus } from '../proc/index.js';
import { native } from '../sys/native.js';

/** The PID helper built by `npm ci` (CREST_PIDHELPER overrides, for tests and installations elsewhere). */
export function pidHelperPath(): string {
  return process.env.CREST_PIDHELPER ?? join(PACKAGE_ROOT, 'helper', 'crest-pidhelper');
}

/**
 * What an administrator runs to enable the cap mode. The helper refuses to
 * run with the capability unless root owns it and only root can write it,
 * so a copy a user built is handed to root first.
 */
export function setcapCommand(path = pidHelperPath()): string {
  const setcap = `sudo setcap cap_checkpoint_restore+ep ${path}`;
  try {
    const st = statSync(path);
    if (st.uid === 0 && (st.mode & 0o022) === 0) return setcap;
  } catch {
    /* not built yet: say everything */
  }
  return `sudo chown root:root ${path} && sudo chmod 0755 ${path} && ${setcap}`;
}

/** Whether the PID helper will hold CAP_CHECKPOINT_RESTORE when we run it, and why (not). */
export interface PidHelperCapability {
  path: string;
  built: boolean;
  capable: boolean;
  why: string;
}

/**
 * Decides from the file (its capability attribute, owner, mode) and from
 * this process (root passes the capability on at exec). The helper itself
 * refuses a capable binary that root does not own: we say so here first.
 */
export function pidHelperCapability(path = pidHelperPath()): PidHelperCapability {
  if (!existsSync(path)) return { path, built: false, capable: false, why: `crest-pidhelper is not built (${path}); \`npm ci\` builds it` };
  const self = readStatus('self');
  if (self.uid[1] === 0 && hasCap(self.capEff, CAP_CHECKPOINT_RESTORE) && !self.noNewPrivs) {
    return { path, built: true, capable: true, why: 'you are root: crest-pidhelper runs with your capabilities' };
  }
  let raw: Buffer | null;
  try {
    raw = native().getxattr(path, 'security.capability');
  } catch (e) {
    return { path, built: true, capable: false, why: `cannot read its file capabilities: ${(e as Error).message}` };
  }
  if (raw === null) return { path, built: true, capable: false, why: 'crest-pidhelper carries no file capabilities' };
  let fc;
  try {
    fc = decodeFileCaps(raw);
  } catch (e) {
    return { path, built: true, capable: false, why: (e as Error).message };
  }
  if (!hasCap(fc.permitted, CAP_CHECKPOINT_RESTORE)) return { path, built: true, capable: false, why: "crest-pidhelper's file capabilities lack cap_checkpoint_restore" };
  if (!fc.effective) return { path, built: true, capable: false, why: "crest-pidhelper's file capabilities lack the effective flag (+ep)" };
  if (fc.rootid !== undefined) return { path, built: true, capable: false, why: `crest-pidhelper's file capabilities are namespaced (rootid ${fc.rootid})` };
  const st = statSync(path);
  if (st.uid !== 0 || (st.mode & 0o022) !== 0) {
    return { path, built: true, capable: false, why: 'crest-pidhelper carries the capability but is not owned by root with mode 0755, so it refuses to run' };
  }
  if (self.noNewPrivs) return { path, built: true, capable: false, why: 'this process has no_new_privs, so exec ignores file capabilities' };
  return { path, built: true, capable: true, why: 'crest-pidhelper carries cap_checkpoint_restore (+ep)' };
}

/** `crest-pidhelper probe`: capability yes|no, set_tid ok|ERRNO, pidns ok|ERRNO. */
export function probePidHelper(path = pidHelperPath(), timeoutMs = 10_000): Record<string, string> {
  const out = execFileSync(path, ['probe'], { encoding: 'utf8', timeout: timeoutMs, stdio: ['ignore', 'pipe', 'pipe'] });
  const res: Record<string, string> = {};
  for (const line of out.split('\n')) {
    const m = /^(\w+) (\S+)$/.exec(line.trim());
    if (m) res[m[1]!] = m[2]!;
  }
  return res;
}
