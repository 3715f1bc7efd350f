/**
 * The worker's activity implementations, built from their dependencies (paths, backends, logger) so tests and
 * the worker wire them the same way.
 */
import { Context } from '@temporalio/activity';
import type { NotifyConfig } from '../common/config';
import type { Logger } from 'pino';
import type { ArtifactStore } from '../common/artifact-store';
import type { PhaseRecords } from '../common/phase-records';
import type { ComputeBackend } from './backends/backend';
import { estimateActivity } from './estimate';
import { freezePhase } from './freeze';
import { recordPhase, verifyResume } from './record';
import { preflightModels } from './preflight';
import { releaseCompute } from './release';
import { runModel } from './run-model';
import { scorePhase } from './score';
import { sendNotification } from './notify';
import type { PhaseActivities } from './types';

export type { PhaseActivities } from './types';

export interface ActivityDeps {
  artifactsDir: string;
  workDir: string;
  /** Where activities leave files for each other and frozen artifacts go (this host's disk, or a shared bucket). */
  store: ArtifactStore;
  records: PhaseRecords;
  modelCacheDir: string;
  repoRoot: string;
  python: string;
  runtimeSrc: string;
  backends: Partial<Record<'local' | 'modal', ComputeBackend>>;
  logger: Logger;
  /** Webhooks told of gates, holds, freezes and failures; none when absent. */
  notify?: NotifyConfig;
}

const NO_WEBHOOKS: NotifyConfig = { slackUrls: [], jsonUrls: [], secret: null, consoleUrl: 'http://127.0.0.1:8787/console' };

export function createActivities(deps: ActivityDeps): PhaseActivities {
  return {
    estimatePhase: (input) => Promise.resolve(estimateActivity(deps.artifactsDir, input)),
    runModel: (input) => runModel(deps, input),
    scorePhase: (input) => {
      const ctx = Context.current();
      return scorePhase(deps, input, ctx.cancellationSignal, () => ctx.heartbeat());
    },
    freezePhase: (input) => {
      // Heartbeats say the freeze is alive: a worker that dies mid-freeze is noticed within the heartbeat timeout.
      const ctx = Context.current();
      return freezePhase(deps, input, () => ctx.heartbeat());
    },
    recordPhase: (input) => recordPhase(deps, input),
    verifyResume: (input) => verifyResume(Context.current().client, input),
    releaseCompute: (input) => releaseCompute(deps, input),
    preflightModels: (input) => {
      const ctx = Context.current();
      return preflightModels(deps, input, () => ctx.heartbeat());
    },
    sendNotification: (input) => {
      const ctx = Context.current();
      const earlier: unknown = ctx.info.heartbeatDetails;
      const delivered = Array.isArray(earlier) ? earlier.filter((d): d is string => typeof d === 'string') : [];
      return sendNotification(deps.notify ?? NO_WEBHOOKS, input, { delivered, record: (d) => ctx.heartbeat(d) });
    },
  };
}
