/**
 * The artifact store as the activities use it (common/artifact-store.ts): the key layout in the store, a run's
 * outputs published, scoring's and the freeze's inputs fetched, and store errors turned into failures the
 * workflow classifies.
 *
 *   runs/<phaseId>/<modelKey>/attempt-<n>/   result.json (stored last) and every file its records name
 *   runs/<phaseId>/score/score.json          the parity tables
 *   frozen/<phaseId>/                        the canonical artifacts, MANIFEST.sha256 stored last
 *   records/<phaseId>.json                   the phase record (common/phase-records.ts)
 */
import { ApplicationFailure } from '@temporalio/common';
import path from 'node:path';
import { ArtifactStoreError, childRef, fetchFile, type ArtifactStore } from '../common/artifact-store';
import { ErrorTypes } from '../workflows/definitions';
import { parseRuntimeResult, resultFiles } from './runtime-json';

export const runKey = (phaseId: string, modelKey: string, attempt: number): string => `runs/${phaseId}/${modelKey}/attempt-${attempt}`;
export const scoreKey = (phaseId: string): string => `runs/${phaseId}/score`;
export const frozenKey = (phaseId: string): string => `frozen/${phaseId}`;

/** Where a phase's downloads land on this worker: beside its runs, under a name no model key can take. */
export const scratchDir = (workDir: string, phaseId: string, ...parts: string[]): string => path.join(workDir, phaseId, '.store', ...parts);

/** Publishes a finished run (result.json after every file its records name); returns the ref of its result.json. */
export async function publishRun(store: ArtifactStore, key: string, resultPath: string): Promise<string> {
  const name = path.basename(resultPath);
  return childRef(await store.putFiles(key, path.dirname(resultPath), [...resultFiles(parseRuntimeResult(resultPath)), name]), name);
}

/** A local copy of a stored file (with its folder); a missing one is final, not retried. */
export async function fetchStored(store: ArtifactStore, ref: string, scratch: string, what: string): Promise<string> {
  const file = await fetchFile(store, ref, scratch);
  if (file === null) {
    throw ApplicationFailure.create({ type: ErrorTypes.invalidInput, message: `${what}: ${ref} is not in the artifact store (${store.location})`, nonRetryable: true });
  }
  return file;
}

/**
 * A store error as the workflow should see it: a refusal (access denied, no such bucket) is final and says what
 * to fix; anything else is retried like any failure. `details` keep an attempt's measured seconds on its ledger line.
 */
export function storeFailure(err: unknown, details: unknown[] = []): unknown {
  if (!(err instanceof ArtifactStoreError)) return err;
  return ApplicationFailure.create({
    type: err.kind === 'refused' ? ErrorTypes.artifactStoreRefused : ErrorTypes.runtimeFailure,
    message: err.message,
    details,
    nonRetryable: err.kind === 'refused',
  });
}
