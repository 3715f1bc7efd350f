/**
 * Builds the phasegate worker: the phase workflow and its short activities (estimate, records, scoring, freeze,
 * clean-up) on the phase task queue; the model runs on a queue of their own (`modelRunQueue`) and the preflights on
 * another (`preflightQueue`), each with its own concurrency limit, so that neither long GPU launchers nor a batch of
 * new phases' preflights take the slots that an estimate or a paid phase's scoring needs. Used by the embedded
 * server, the standalone worker process and the tests.
 */
import { NativeConnection, Worker, type State, type WorkerOptions } from '@temporalio/worker';
import path from 'node:path';
import type { Logger } from 'pino';
import { createActivities } from '../activities';
import type { ComputeBackend } from '../activities/backends/backend';
import { LocalBackend } from '../activities/backends/local';
import { modalBackendFromEnv } from '../activities/backends/modal';
import { LocalArtifactStore, type ArtifactStore } from '../common/artifact-store';
import { repoRoot, type NotifyConfig, type Paths } from '../common/config';
import { phaseRecords } from '../common/phase-records';
import { modelRunQueue, preflightQueue } from '../workflows/definitions';

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
  /** Model runs this worker runs at once (each is a runtime process or a Modal launcher). */
  modelRuns?: number;
  /** Preflights this worker runs at once (each is a runtime process on this host's CPU). */
  preflights?: number;
  notify?: NotifyConfig;
}

/** The phase worker, its model-run worker and its preflight worker, run and stopped as one. */
export class PhaseWorker {
  constructor(
    readonly phases: Worker,
    readonly modelRuns: Worker,
    readonly preflights: Worker,
  ) {}

  getState(): State {
    return this.phases.getState();
  }

  shutdown(): void {
    for (const w of [this.modelRuns, this.preflights, this.phases]) if (w.getState() === 'RUNNING') w.shutdown();
  }

  async run(): Promise<void> {
    // Any one failing stops the others: a worker half up would take tasks it cannot finish.
    const all = [this.phases.run(), this.modelRuns.run(), this.preflights.run()];
    await Promise.all(all.map((p) => p.catch((err: unknown) => { this.shutdown(); throw err; })));
  }

  async runUntil<R>(fnOrPromise: Promise<R> | (() => Promise<R>)): Promise<R> {
    return this.phases.runUntil(this.modelRuns.runUntil(this.preflights.runUntil(fnOrPromise)));
  }
}

export const workflowsPath = path.join(repoRoot, 'workflows', 'index.ts');

/** Model runs at once per worker unless configured (PHASEGATE_MODEL_RUNS): on Modal each is a launcher process. */
export const DEFAULT_MODEL_RUNS = 2;
/** Preflights at once per worker unless configured (PHASEGATE_PREFLIGHTS). */
export const DEFAULT_PREFLIGHTS = 2;

/**
 * On shutdown a running attempt is stopped (its runtime gets SIGTERM and checkpoints what it finished); this is
 * the time it gets to do so before the worker gives up waiting. A container's stop grace period must be longer
 * (docker-compose.yml), or the worker is killed before its attempts are charged.
 */
export const WORKER_SHUTDOWN_GRACE_SECONDS = 20;

export async function createPhaseWorker(o: PhaseWorkerOptions): Promise<PhaseWorker> {
  const runtime = { python: o.paths.python, runtimeSrc: o.paths.runtimeSrc };
  // Modal credentials are checked per run, so a worker without them still serves local phases, and a Modal phase
  // fails at once (not retried) with a message saying how to set them.
  const backends = o.backends ?? { local: new LocalBackend(runtime), modal: modalBackendFromEnv(runtime, o.modalPollSeconds) };
  const store = o.store ?? new LocalArtifactStore(o.paths.stateDir);
  const activities = createActivities({
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
      ...(o.notify ? { notify: o.notify } : {}),
    });
  const common = {
    connection: o.connection,
    namespace: o.namespace,
    // Cancellation reaches an activity only in the reply to a heartbeat the SDK actually sends; its default
    // throttle (up to 60 s) would let a cancelled GPU run go on, and be paid for, for a minute.
    maxHeartbeatThrottleInterval: '3 seconds',
    defaultHeartbeatThrottleInterval: '3 seconds',
    shutdownGraceTime: `${WORKER_SHUTDOWN_GRACE_SECONDS} seconds`,
  } satisfies Partial<WorkerOptions>;
  const phases = await Worker.create({
    ...common,
    taskQueue: o.taskQueue,
    ...(o.workflowBundle ? { workflowBundle: o.workflowBundle } : { workflowsPath }),
    // runModel stays registered here too: attempts scheduled before model runs had their own queue (recorded
    // histories) still find it on the phase queue.
    activities,
    // Estimates, preflights, scoring, freezes, records and clean-ups of every phase on this worker.
    maxConcurrentActivityTaskExecutions: 4,
  });
  const modelRuns = await Worker.create({
    ...common,
    taskQueue: modelRunQueue(o.taskQueue),
    activities: { runModel: activities.runModel.bind(activities) },
    maxConcurrentActivityTaskExecutions: o.modelRuns ?? DEFAULT_MODEL_RUNS,
  });
  const preflights = await Worker.create({
    ...common,
    taskQueue: preflightQueue(o.taskQueue),
    activities: { preflightModels: activities.preflightModels.bind(activities) },
    maxConcurrentActivityTaskExecutions: o.preflights ?? DEFAULT_PREFLIGHTS,
  });
  return new PhaseWorker(phases, modelRuns, preflights);
}
