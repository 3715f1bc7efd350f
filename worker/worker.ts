/**
 * Builds the phasegate worker: the phase workflow and its activities on one task queue, with the compute backends
 * this machine has. Used by the embedded server, the standalone worker process and the tests.
 */
import { NativeConnection, Worker, type WorkerOptions } from '@temporalio/worker';
import path from 'node:path';
import type { Logger } from 'pino';
import { createActivities } from '../activities';
import type { ComputeBackend } from '../activities/backends/backend';
import { LocalBackend } from '../activities/backends/local';
import { modalBackendFromEnv } from '../activities/backends/modal';
import { LocalArtifactStore, type ArtifactStore } from '../common/artifact-store';
import { repoRoot, type Paths } from '../common/config';
import { phaseRecords } from '../common/phase-records';

export interface PhaseWorkerOptions {
  connection: NativeConnection;
  namespace: string;
  taskQueue: string;
  paths: Paths;
  logger: Logger;
  /** Prebuilt workflow bundle (tests build it once per file); otherwise built from workflows/ at start. */
  workflowBundle?: WorkerOptions['workflowBundle'];
  backends?: Partial<Record<'local' | 'modal', ComputeBackend>>;
  /** The artifact store (common/artifact-store.ts); default: this host's disk, as with the embedded server. */
  store?: ArtifactStore;
  modalPollSeconds?: number;
}

export const workflowsPath = path.join(repoRoot, 'workflows', 'index.ts');

/**
 * On shutdown a running attempt is stopped (its runtime gets SIGTERM and checkpoints what it finished); this is
 * the time it gets to do so before the worker gives up waiting. A container's stop grace period must be longer
 * (docker-compose.yml), or the worker is killed before its attempts are charged.
 */
export const WORKER_SHUTDOWN_GRACE_SECONDS = 20;

export async function createPhaseWorker(o: PhaseWorkerOptions): Promise<Worker> {
  const runtime = { python: o.paths.python, runtimeSrc: o.paths.runtimeSrc };
  // Modal credentials are checked per run, so a worker without them still serves local phases, and a Modal phase
  // fails at once (not retried) with a message saying how to set them.
  const backends = o.backends ?? { local: new LocalBackend(runtime), modal: modalBackendFromEnv(runtime, o.modalPollSeconds) };
  const store = o.store ?? new LocalArtifactStore(o.paths.stateDir);
  return Worker.create({
    connection: o.connection,
    namespace: o.namespace,
    taskQueue: o.taskQueue,
    ...(o.workflowBundle ? { workflowBundle: o.workflowBundle } : { workflowsPath }),
    activities: createActivities({
      artifactsDir: o.paths.artifactsDir,
      workDir: o.paths.workDir,
      store,
      records: phaseRecords(store, o.paths.recordsDir),
      modelCacheDir: path.join(o.paths.stateDir, 'models'),
      repoRoot,
      python: o.paths.python,
      runtimeSrc: o.paths.runtimeSrc,
      backends,
      logger: o.logger,
    }),
    // A few activities at once (another phase's scoring or freeze beside a model run); model runs themselves
    // are sequential within a phase. On a small machine concurrent phases share its cores.
    maxConcurrentActivityTaskExecutions: 4,
    // Cancellation reaches an activity only in the reply to a heartbeat the SDK actually sends; its default
    // throttle (up to 60 s) would let a cancelled GPU run go on, and be paid for, for a minute.
    maxHeartbeatThrottleInterval: '3 seconds',
    defaultHeartbeatThrottleInterval: '3 seconds',
    shutdownGraceTime: `${WORKER_SHUTDOWN_GRACE_SECONDS} seconds`,
  });
}
