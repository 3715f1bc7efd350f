/**
 * Runs the Python steering runtime as a child process and reads its newline-delimited JSON events.
 *
 * Two guarantees matter for cost and correctness:
 * - cancellation (an AbortSignal) sends SIGTERM, then SIGKILL after a grace period, and waits for the exit;
 * - if the worker itself dies, the kernel sends the runtime SIGTERM (parent-death signal, common/child-process.ts),
 *   so a retry on a restarted worker never races an orphaned run over the same checkpoint folder.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { dieWithParent } from '../common/child-process';

export interface RuntimeEvent {
  event: string;
  [key: string]: unknown;
}

export interface RuntimeCommand {
  python: string;
  runtimeSrc: string;
  args: string[];
  /** The Python module run with `-m`: the runtime itself, or a sibling entry point such as its Modal launcher. */
  module?: string;
  env?: NodeJS.ProcessEnv;
  signal?: AbortSignal;
  onEvent?: (event: RuntimeEvent) => void;
  /**
   * Called every few seconds while the process runs: an activity's heartbeat, so that a worker that dies mid-run
   * is noticed within the heartbeat timeout and a cancellation reaches the activity.
   */
  heartbeat?: () => void;
  /** Seconds between SIGTERM and SIGKILL on cancellation. */
  killGraceSeconds?: number;
}

export interface RuntimeExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  seconds: number;
  cancelled: boolean;
  /** The runtime's last `error` event, if it sent one: its kind, message and, for an invalid spec, the field it names. */
  error: { kind: string; message: string; path: string | null } | null;
  stderrTail: string;
}

/** Exit codes of the runtime (runtime/SPEC.md). */
export const RuntimeExitCode = { ok: 0, failure: 1, invalidSpec: 2 } as const;

const HEARTBEAT_EVERY_MS = 5000;

export function runRuntime(cmd: RuntimeCommand): Promise<RuntimeExit> {
  const argv = ['-m', cmd.module ?? 'phasegate_runtime', ...cmd.args];
  const { file, args, guarded } = dieWithParent(cmd.python, argv);
  // The runtime needs the environment (CUDA, HF_HOME, HF_TOKEN, proxies) but never the worker's Temporal key, and
  // only the Modal launcher needs the Modal tokens.
  const env: NodeJS.ProcessEnv = { ...process.env, ...cmd.env, PYTHONPATH: cmd.runtimeSrc, PYTHONUNBUFFERED: '1' };
  delete env.TEMPORAL_API_KEY;
  // The artifact store is the worker's business: the runtime reads and writes its own folder only.
  for (const key of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN']) delete env[key];
  if (!(cmd.module ?? '').includes('modal')) {
    delete env.MODAL_TOKEN_ID;
    delete env.MODAL_TOKEN_SECRET;
  }
  if (!guarded) warnUnguardedOnce();
  const started = process.hrtime.bigint();
  const child = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const beat = cmd.heartbeat === undefined ? undefined : setInterval(cmd.heartbeat, HEARTBEAT_EVERY_MS);

  let stderrTail = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => {
    stderrTail = (stderrTail + chunk).slice(-4000);
  });

  let error: RuntimeExit['error'] = null;
  const lines = createInterface({ input: child.stdout });
  lines.on('line', (line) => {
    const event = parseEvent(line);
    if (event === null) return;
    if (event.event === 'error') error = { kind: String(event.kind), message: String(event.message), path: typeof event.path === 'string' ? event.path : null };
    cmd.onEvent?.(event);
  });

  let cancelled = false;
  let killTimer: NodeJS.Timeout | undefined;
  const onAbort = (): void => {
    cancelled = true;
    child.kill('SIGTERM');
    killTimer = setTimeout(() => child.kill('SIGKILL'), (cmd.killGraceSeconds ?? 10) * 1000);
  };
  if (cmd.signal?.aborted) onAbort();
  else cmd.signal?.addEventListener('abort', onAbort, { once: true });

  return new Promise((resolve, reject) => {
    child.on('error', (err) => {
      clearInterval(beat);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearInterval(beat);
      if (killTimer !== undefined) clearTimeout(killTimer);
      cmd.signal?.removeEventListener('abort', onAbort);
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      resolve({ code, signal, seconds, cancelled, error, stderrTail });
    });
  });
}

let warned = false;
function warnUnguardedOnce(): void {
  if (warned) return;
  warned = true;
  process.emitWarning('setpriv is not available: a runtime process will outlive a killed worker (no parent-death signal)');
}

function parseEvent(line: string): RuntimeEvent | null {
  if (!line.startsWith('{')) return null;
  try {
    const value: unknown = JSON.parse(line);
    if (value !== null && typeof value === 'object' && typeof (value as RuntimeEvent).event === 'string') {
      return value as RuntimeEvent;
    }
  } catch {
    // Not an event: the runtime's libraries occasionally print to stdout; those lines are not ours.
  }
  return null;
}
