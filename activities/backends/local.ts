/** The local backend: the runtime as a child process on this machine (the embedded default). */
import path from 'node:path';
import { runRuntime, RuntimeExitCode, type RuntimeEvent } from '../runtime-process';
import { BackendError, type BackendContext, type BackendJob, type BackendResult, type ComputeBackend, type Released, type ReleaseTarget } from './backend';

export interface LocalBackendOptions {
  python: string;
  runtimeSrc: string;
  env?: NodeJS.ProcessEnv;
}

export class LocalBackend implements ComputeBackend {
  readonly name = 'local' as const;

  constructor(private readonly options: LocalBackendOptions) {}

  /**
   * A local run is the activity's own child process: it is stopped with the activity, and with its worker (the
   * runtime exits when its parent dies), so nothing outlives an attempt here.
   */
  release(_target: ReleaseTarget): Promise<Released> {
    return Promise.resolve({ ids: [], windows: [] });
  }

  async run(job: BackendJob, ctx: BackendContext): Promise<BackendResult> {
    const backendIds = { backend: 'local', host: process.env.HOSTNAME ?? 'localhost' };
    const exit = await runRuntime({
      python: this.options.python,
      runtimeSrc: this.options.runtimeSrc,
      args: ['run', '--spec', job.specPath, '--out', job.outDir],
      env: this.options.env,
      signal: ctx.signal,
      onEvent: (event) => reportProgress(event, ctx),
    });
    if (exit.cancelled) throw new BackendError('cancelled', 'the runtime was stopped by a cancellation', exit.seconds, backendIds);
    if (exit.code === RuntimeExitCode.ok) {
      return { resultPath: path.join(job.outDir, 'result.json'), measuredSeconds: exit.seconds, backendIds };
    }
    const why = exit.error?.message ?? (exit.stderrTail.trim().split('\n').pop() || `exit ${exit.code ?? exit.signal}`);
    if (exit.code === RuntimeExitCode.invalidSpec) throw new BackendError('invalid_input', why, exit.seconds, backendIds);
    throw new BackendError('failure', `runtime exited ${exit.code ?? exit.signal}: ${why}`, exit.seconds, backendIds);
  }
}

function reportProgress(event: RuntimeEvent, ctx: BackendContext): void {
  const counts = (): { unitsDone?: number; unitsTotal?: number } => ({
    ...(typeof event.done === 'number' ? { unitsDone: event.done } : {}),
    ...(typeof event.total === 'number' ? { unitsTotal: event.total } : {}),
  });
  switch (event.event) {
    case 'model_loaded':
      ctx.progress({ stage: 'running' });
      break;
    case 'unit_started':
    case 'unit_finished':
    case 'unit_skipped':
      ctx.progress({ stage: 'running', lastUnit: typeof event.unit === 'string' ? event.unit : null, ...counts() });
      break;
    case 'run_finished':
      ctx.progress({ stage: 'finishing', ...counts() });
      break;
  }
}
