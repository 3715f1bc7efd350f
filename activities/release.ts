/**
 * Releasing a phase's compute: whenever a phase leaves RUNNING (a budget hold, a rejection, a cancel, a failure,
 * every model done), nothing of it may still run and cost money. Each backend stops what it finds recorded for each
 * model (on Modal: every live call named by the Dict entry, the launch record or a running container's claim), so a
 * call that a dead worker or a detached attempt left behind is stopped too.
 */
import { ApplicationFailure } from '@temporalio/common';
import { ErrorTypes } from '../workflows/definitions';
import type { ComputeBackend } from './backends/backend';
import { modelOutDir } from './run-model';
import type { ReleaseInput, ReleaseResult } from './types';

export interface ReleaseDeps {
  workDir: string;
  backends: Partial<Record<'local' | 'modal', ComputeBackend>>;
}

export async function releaseCompute(deps: ReleaseDeps, input: ReleaseInput): Promise<ReleaseResult> {
  const backend = deps.backends[input.protocol.backend];
  if (backend === undefined) {
    // Retried (not final): a worker with the backend configured must take this over, or calls may run on.
    throw ApplicationFailure.create({ type: ErrorTypes.missingCredentials, message: `the ${input.protocol.backend} backend is not configured on this worker, so its calls cannot be stopped here` });
  }
  const stopped: ReleaseResult['stopped'] = [];
  for (const model of input.protocol.models) {
    // Where every attempt of this (phase, model) ran: where the launch record lives.
    const { ids, windows } = await backend.release({ phaseId: input.phaseId, modelKey: model.key, outDir: modelOutDir(deps.workDir, input.phaseId, model.key) });
    if (ids.length > 0) stopped.push({ modelKey: model.key, ids, windows });
  }
  return { stopped };
}
