/**
 * The Modal backend: the per-model run as a GPU function call on Modal, through the runtime's launcher
 * (`python -m phasegate_runtime.modal_launch`, see its docstring for the launch record and deduplication).
 *
 * The launcher process is this attempt's handle on the remote call, not the call itself:
 * - cancellation stops the launcher and then runs `modal_launch cancel`, which cancels the remote call;
 * - a worker that dies takes only the launcher with it (parent-death SIGTERM), the paid call runs on, and the
 *   retry's launcher reattaches to it from the launch record or the Modal Dict instead of spawning another.
 */
import path from 'node:path';
import { runRuntime, type RuntimeEvent } from '../runtime-process';
import type { CallWindow } from '../../workflows/definitions';
import { BackendError, type BackendContext, type BackendJob, type BackendResult, type ComputeBackend, type Released, type ReleaseTarget } from './backend';

/** Exit codes of `modal_launch` (its docstring). */
export const LauncherExitCode = { ok: 0, failure: 1, invalidSpec: 2, missingCredentials: 3 } as const;

const LAUNCHER_MODULE = 'phasegate_runtime.modal_launch';

export interface ModalBackendOptions {
  python: string;
  runtimeSrc: string;
  env?: NodeJS.ProcessEnv;
  /** Seconds the launcher waits on the call per poll (each poll emits a `running` event). */
  pollSeconds?: number;
}

export class ModalBackend implements ComputeBackend {
  readonly name = 'modal' as const;

  constructor(private readonly options: ModalBackendOptions) {}

  async run(job: BackendJob, ctx: BackendContext): Promise<BackendResult> {
    const backendIds: Record<string, string> = { backend: 'modal' };
    // What the launcher's events said: its GPU seconds come from inside the container.
    const seen: { gpuSeconds: number | null; resultPath: string | null; error: string | null; windows: CallWindow[] } = { gpuSeconds: null, resultPath: null, error: null, windows: [] };
    ctx.progress({ stage: 'launching', backendIds: { ...backendIds } });

    const onEvent = (event: RuntimeEvent): void => {
      if (typeof event.app_id === 'string') backendIds.app = event.app_id;
      if (typeof event.call_id === 'string') backendIds.call = event.call_id;
      if (typeof event.gpu_seconds === 'number') seen.gpuSeconds = event.gpu_seconds;
      if (Array.isArray(event.windows)) seen.windows = windowsOf(event.windows);
      switch (event.event) {
        case 'launched':
        case 'running':
          ctx.progress({ stage: 'running', backendIds: { ...backendIds } });
          break;
        case 'finished':
          seen.resultPath = typeof event.result === 'string' ? event.result : null;
          ctx.progress({ stage: 'finishing', backendIds: { ...backendIds } });
          break;
        case 'error':
          seen.error = String(event.message);
          break;
      }
    };

    const exit = await runRuntime({
      python: this.options.python,
      runtimeSrc: this.options.runtimeSrc,
      module: LAUNCHER_MODULE,
      args: [
        'launch',
        ...['--phase', job.phaseId, '--model', job.modelKey, '--attempt', String(job.attempt)],
        ...['--gpu', job.gpu, '--timeout-minutes', String(job.timeoutMinutes)],
        ...['--spec', job.specPath, '--out', job.outDir, '--poll-seconds', String(this.options.pollSeconds ?? 30)],
        ...(job.container === undefined ? [] : ['--cpu-limit', String(job.container.cpuCores), '--memory-limit-mib', String(Math.floor(job.container.memoryGib * 1024))]),
      ],
      env: this.options.env,
      signal: ctx.signal,
      onEvent,
    });

    if (exit.cancelled) {
      if (ctx.timedOut()) {
        // The attempt's time limit is what the approval can pay for: the call must not run on past it, unpaid.
        const { note, windows } = await this.cancelRemote(job);
        throw new BackendError('failure', `the attempt's time limit ran out (the protocol's timeout or the budget left); the Modal call was stopped${note}`, seen.gpuSeconds, backendIds, [...seen.windows, ...windows]);
      }
      if (!ctx.cancelRequested()) {
        // The worker is stopping: detach and leave the paid call running; the retry's launcher reattaches to it
        // from the launch record.
        throw new BackendError('failure', 'detached from the Modal call (worker stopping); a retry reattaches', seen.gpuSeconds, backendIds, seen.windows);
      }
      const { note, windows } = await this.cancelRemote(job);
      throw new BackendError('cancelled', `the Modal run was cancelled${note}`, seen.gpuSeconds, backendIds, [...seen.windows, ...windows]);
    }
    if (exit.code === LauncherExitCode.ok) {
      return { resultPath: seen.resultPath ?? path.join(job.outDir, 'result.json'), measuredSeconds: seen.gpuSeconds ?? exit.seconds, backendIds, windows: seen.windows };
    }
    const why = seen.error ?? (exit.stderrTail.trim().split('\n').pop() || `exit ${exit.code ?? exit.signal}`);
    // Nothing was launched, so nothing is charged.
    if (exit.code === LauncherExitCode.missingCredentials) throw new BackendError('missing_credentials', why, 0, backendIds);
    if (exit.code === LauncherExitCode.invalidSpec) throw new BackendError('invalid_input', why, seen.gpuSeconds, backendIds, seen.windows);
    throw new BackendError('failure', `Modal launcher exited ${exit.code ?? exit.signal}: ${why}`, seen.gpuSeconds, backendIds, seen.windows);
  }

  /**
   * Cancels every live call recorded for this (phase, model): the Dict entry, the launch record, the running
   * container's claim (`modal_launch cancel`). Throws when the launcher could not tell, so the caller retries.
   */
  async release(target: ReleaseTarget): Promise<Released> {
    const cancelled: string[] = [];
    const windows: CallWindow[] = [];
    const exit = await runRuntime({
      python: this.options.python,
      runtimeSrc: this.options.runtimeSrc,
      module: LAUNCHER_MODULE,
      args: ['cancel', '--phase', target.phaseId, '--model', target.modelKey, '--out', target.outDir],
      env: this.options.env,
      onEvent: (event) => {
        if (event.event !== 'cancelled') return;
        if (Array.isArray(event.call_ids)) cancelled.push(...event.call_ids.map(String));
        if (Array.isArray(event.windows)) windows.push(...windowsOf(event.windows));
      },
    });
    if (exit.code !== LauncherExitCode.ok) throw new Error(`cancelling the Modal calls of ${target.modelKey} failed: ${exit.error?.message ?? `exit ${exit.code ?? exit.signal}`}`);
    return { ids: cancelled, windows };
  }

  /**
   * `phasegate modal check`: one short call on this GPU type (driver, CUDA, torch, the GPU it got; `modal_launch
   * check`). Resolves with the launcher's summary line; throws a BackendError saying what failed.
   */
  async check(gpu: string): Promise<string> {
    let found: Record<string, unknown> | null = null;
    let error: string | null = null;
    const exit = await runRuntime({
      python: this.options.python,
      runtimeSrc: this.options.runtimeSrc,
      module: LAUNCHER_MODULE,
      args: ['check', '--gpu', gpu],
      env: this.options.env,
      onEvent: (event) => {
        if (event.event === 'check') found = event;
        if (event.event === 'error') error = String(event.message);
      },
    });
    const summary = found as Record<string, unknown> | null;
    if (exit.code === LauncherExitCode.ok && summary !== null) {
      return `modal check ${gpu}: ok (${['gpu', 'driver', 'cuda', 'torch'].map((k) => `${k} ${String(summary[k])}`).join(', ')}; ${String(summary.seconds)} s)`;
    }
    const why = error ?? (summary === null ? `the launcher exited ${exit.code ?? exit.signal}` : String(summary.message));
    throw new BackendError(exit.code === LauncherExitCode.missingCredentials ? 'missing_credentials' : 'failure', `modal check ${gpu}: ${why}`, null);
  }

  /** Cancels the remote call(s) recorded for this (phase, model); returns a note for the error message. */
  private async cancelRemote(job: BackendJob): Promise<{ note: string; windows: CallWindow[] }> {
    try {
      const { ids, windows } = await this.release(job);
      return { note: ids.length > 0 ? ` (remote call ${ids.join(', ')} cancelled)` : ' (no live remote call)', windows };
    } catch (err) {
      return { note: ` (${(err as Error).message}; the phase cancels it again when it leaves RUNNING)`, windows: [] };
    }
  }
}

/** The launcher's `windows` (modal_launch.CallBook.window), checked field by field: a malformed one is dropped. */
function windowsOf(raw: unknown[]): CallWindow[] {
  return raw.flatMap((w): CallWindow[] => {
    if (w === null || typeof w !== 'object') return [];
    const { call_id: callId, from_ms: fromMs, to_ms: toMs, resource } = w as Record<string, unknown>;
    if (typeof callId !== 'string' || typeof fromMs !== 'number' || typeof toMs !== 'number' || !(toMs >= fromMs)) return [];
    return [{ callId, fromMs, toMs, resource: resource === 'cpu' ? 'cpu' : 'gpu' }];
  });
}

/** The worker's Modal backend; credentials are checked per run, so a worker without them still starts. */
export function modalBackendFromEnv(paths: { python: string; runtimeSrc: string }, pollSeconds?: number, env: NodeJS.ProcessEnv = process.env): ModalBackend {
  return new ModalBackend({ ...paths, env, pollSeconds });
}
