/**
 * A compute backend runs one per-model runtime job somewhere (this machine, Modal) and reports progress.
 * The activity owns the Temporal side (heartbeats, cancellation, failures); a backend owns the process or the
 * remote call.
 */
import type { CallWindow, RunProgress } from '../../workflows/definitions';

export interface BackendJob {
  phaseId: string;
  modelKey: string;
  attempt: number;
  gpu: string;
  timeoutMinutes: number;
  /** The runtime spec file, and the folder it checkpoints into and writes result.json to. */
  specPath: string;
  outDir: string;
  /** A remote container's CPU and memory limits, as the pricing table priced them (Modal only). */
  container?: { cpuCores: number; memoryGib: number };
}

export interface BackendContext {
  /** Aborted when the attempt must stop: a requested cancellation, a timeout, or the worker shutting down. */
  signal: AbortSignal;
  /**
   * Whether the abort was a cancellation a user asked for (the phase was cancelled). A worker that shuts down or
   * an attempt that timed out must not cancel a remote call that a retry can still reattach to.
   */
  cancelRequested(): boolean;
  /**
   * Whether the abort was the attempt's own time limit: the protocol's timeout, or the seconds the approved
   * budget left could pay for. A remote call must not run on, unpaid, past it.
   */
  timedOut(): boolean;
  progress(p: Partial<RunProgress>): void;
}

export interface BackendResult {
  resultPath: string;
  measuredSeconds: number;
  backendIds: Record<string, string>;
  /** Remote calls' billable windows (Modal): what the ledger charges, each call-second once. */
  windows?: CallWindow[];
}

/** Thrown by a backend; `kind` decides whether the workflow retries. */
export class BackendError extends Error {
  override readonly name = 'BackendError';
  constructor(
    readonly kind: 'invalid_input' | 'missing_credentials' | 'failure' | 'cancelled',
    message: string,
    readonly measuredSeconds: number | null,
    readonly backendIds: Record<string, string> = {},
    readonly windows: CallWindow[] = [],
  ) {
    super(message);
  }
}

/** Where a model's runs of a phase are recorded: enough to find any remote call they left behind. */
export interface ReleaseTarget {
  phaseId: string;
  modelKey: string;
  outDir: string;
}

/** What a release stopped: ids, and (remote calls) their billable windows up to the stop. */
export interface Released {
  ids: string[];
  windows: CallWindow[];
}

export interface ComputeBackend {
  readonly name: 'local' | 'modal';
  run(job: BackendJob, ctx: BackendContext): Promise<BackendResult>;
  /**
   * Stops whatever still runs, and costs money, for this model of the phase, whoever started it; returns the ids of
   * what was stopped. Throws when that cannot be established (the caller retries): "nothing live" must be known.
   */
  release(target: ReleaseTarget): Promise<Released>;
}
