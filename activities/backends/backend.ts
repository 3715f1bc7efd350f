/**
 * A compute backend runs one per-model runtime job somewhere (this machine, Modal) and reports progress.
 * The activity owns the Temporal side (heartbeats, cancellation, failures); a backend owns the process or the
 * remote call.
 */
import type { RunProgress } from '../../workflows/definitions';

export interface BackendJob {
  phaseId: string;
  modelKey: string;
  attempt: number;
  gpu: string;
  timeoutMinutes: number;
  /** The runtime spec file, and the folder it checkpoints into and writes result.json to. */
  specPath: string;
  outDir: string;
}

export interface BackendContext {
  signal: AbortSignal;
  progress(p: Partial<RunProgress>): void;
}

export interface BackendResult {
  resultPath: string;
  measuredSeconds: number;
  backendIds: Record<string, string>;
}

/** Thrown by a backend; `kind` decides whether the workflow retries. */
export class BackendError extends Error {
  override readonly name = 'BackendError';
  constructor(
    readonly kind: 'invalid_input' | 'missing_credentials' | 'failure' | 'cancelled',
    message: string,
    readonly measuredSeconds: number | null,
    readonly backendIds: Record<string, string> = {},
  ) {
    super(message);
  }
}

export interface ComputeBackend {
  readonly name: 'local' | 'modal';
  run(job: BackendJob, ctx: BackendContext): Promise<BackendResult>;
}
