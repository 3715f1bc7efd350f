/**
 * Children that must not outlive their parent (the runtime, the dev server) are started through `setpriv
 * --pdeathsig TERM`: if this process dies, even by SIGKILL, the kernel sends them SIGTERM. Where setpriv is
 * missing (not Linux, or a minimal image) they start plainly, and the caller is told so it can warn.
 */
import { existsSync } from 'node:fs';

const SETPRIV = '/usr/bin/setpriv';

export interface GuardedCommand {
  file: string;
  args: string[];
  /** false when the parent-death signal could not be set up here. */
  guarded: boolean;
}

export function dieWithParent(file: string, args: string[]): GuardedCommand {
  if (process.platform === 'linux' && existsSync(SETPRIV)) {
    return { file: SETPRIV, args: ['--pdeathsig', 'TERM', '--', file, ...args], guarded: true };
  }
  return { file, args, guarded: false };
}

/**
 * The environment for a child that needs no secrets (the Temporal dev server): only what a process needs to run,
 * never a Modal, Hugging Face or Temporal credential.
 */
export function plainEnv(source: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const keep = ['PATH', 'HOME', 'TMPDIR', 'LANG', 'LC_ALL', 'TZ', 'USER'];
  return Object.fromEntries(keep.filter((k) => source[k] !== undefined).map((k) => [k, source[k]]));
}
