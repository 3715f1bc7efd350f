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
import { BackendError, type BackendContext, type BackendJob, type BackendResult, type ComputeBackend, type ReleaseTarget } from './backend';

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
    const seen: { gpuSeconds: number | null; resultPath: string | null; error: string | null } = { gpuSeconds: null, resultPath: null, error: null };
    ctx.progress({ stage: 'launching', backendIds: { ...backendIds } });

    const onEvent = (event: RuntimeEvent): void => {
      if (typeof event.app_id === 'string') backendIds.app = event.app_id;
      if (typeof event.call_id === 'string') backendIds.call = event.call_id;
      if (typeof event.gpu_seconds === 'number') seen.gpuSeconds = event.gpu_seconds;
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
      ],
      env: this.options.env,
      signal: ctx.signal,
      onEvent,
    });

    if (exit.cancelled) {
      if (ctx.timedOut()) {
        // The attempt's time limit is what the approval can pay for: the call must not run on past it, unpaid.
        const why = await this.cancelRemote(job);
        throw new BackendError('failure', `the attempt's time limit ran out (the protocol's timeout or the budget left); the Modal call was stopped${why}`, seen.gpuSeconds, backendIds);
      }
      if (!ctx.cancelRequested()) {
        // The worker is stopping: detach and leave the paid call running; the retry's launcher reattaches to it
        // from the launch record.
        throw new BackendError('failure', 'detached from the Modal call (worker stopping); a retry reattaches', seen.gpuSeconds, backendIds);
      }
      const why = await this.cancelRemote(job);
      throw new BackendError('cancelled', `the Modal run was cancelled${why}`, seen.gpuSeconds, backendIds);
    }
    if (exit.code === LauncherExitCode.ok) {
      return { resultPath: seen.resultPath ?? path.join(job.outDir, 'result.json'), measuredSeconds: seen.gpuSeconds ?? exit.seconds, backendIds };
    }
    const why = seen.error ?? (exit.stderrTail.trim().split('\n').pop() || `exit ${exit.code ?? exit.signal}`);
    // Nothing was launched, so nothing is charged.
    if (exit.code === LauncherExitCode.missingCredentials) throw new BackendError('missing_credentials', why, 0, backendIds);
    if (exit.code === LauncherExitCode.invalidSpec) throw new BackendError('invalid_input', why, seen.gpuSeconds, backendIds);
    throw new BackendError('failure', `Modal launcher exited ${exit.code ?? exit.signal}: ${why}`, seen.gpuSeconds, backendIds);
  }

  /**
   * Cancels every live call recorded for this (phase, model): the Dict entry, the launch record, the running
   * container's claim (`modal_launch cancel`). Throws when the launcher could not tell, so the caller retries.
   */
  async release(target: ReleaseTarget): Promise<string[]> {
    const cancelled: string[] = [];
    const exit = await runRuntime({
      python: this.options.python,
      runtimeSrc: this.options.runtimeSrc,
      module: LAUNCHER_MODULE,
      args: ['cancel', '--phase', target.phaseId, '--model', target.modelKey, '--out', target.outDir],
      env: this.options.env,
      onEvent: (event) => {
        if (event.event === 'cancelled' && Array.isArray(event.call_ids)) cancelled.push(...event.call_ids.map(String));
      },
    });
    if (exit.code !== LauncherExitCode.ok) throw new Error(`cancelling the Modal calls of ${target.modelKey} failed: ${exit.error?.message ?? `exit ${exit.code ?? exit.signal}`}`);
    return cancelled;
  }

  /** Cancels the remote call(s) recorded for this (phase, model); returns a note for the error message. */
  private async cancelRemote(job: BackendJob): Promise<string> {
    try {
      const cancelled = await this.release(job);
      return cancelled.length > 0 ? ` (remote call ${cancelled.join(', ')} cancelled)` : ' (no live remote call)';
    } catch (err) {
      return ` (${(err as Error).message}; the phase cancels it again when it leaves RUNNING)`;
    }
  }
}

/** The worker's Modal backend; credentials are checked per run, so a worker without them still starts. */
export function modalBackendFromEnv(paths: { python: string; runtimeSrc: string }, pollSeconds?: number, env: NodeJS.ProcessEnv = process.env): ModalBackend {
  return new ModalBackend({ ...paths, env, pollSeconds });
}
