/** Scoring: the runtime computes the parity tables from the per-model results; a parity failure is a result. */
import { ApplicationFailure } from '@temporalio/common';
import path from 'node:path';
import { ErrorTypes, type ScoreSummary } from '../workflows/definitions';
import { writeJsonAtomic } from './run-model';
import { runRuntime, RuntimeExitCode } from './runtime-process';
import { parseRuntimeScore, RuntimeOutputError, toModelScores } from './runtime-json';
import { childRef, type ArtifactStore } from '../common/artifact-store';
import { fetchStored, scoreKey, scratchDir, storeFailure } from './artifacts';
import type { ScoreInput } from './types';

export interface ScoreDeps {
  workDir: string;
  python: string;
  runtimeSrc: string;
  store: ArtifactStore;
}

export async function scorePhase(deps: ScoreDeps, input: ScoreInput, signal?: AbortSignal, heartbeat?: () => void): Promise<ScoreSummary> {
  const dir = path.join(deps.workDir, input.phaseId);
  const specPath = path.join(dir, 'score-spec.json');
  const scorePath = path.join(dir, 'score.json');
  // The runs may have been made on other workers: each result (and its directions) is fetched here first.
  const results: Record<string, string> = {};
  try {
    for (const [modelKey, ref] of Object.entries(input.results)) results[modelKey] = await fetchStored(deps.store, ref, scratchDir(deps.workDir, input.phaseId, 'runs', modelKey), `the result of ${modelKey}`);
  } catch (err) {
    throw storeFailure(err);
  }
  writeJsonAtomic(specPath, { results, parity: input.protocol.parity });
  // Heartbeats let a cancellation reach this activity (and stop the scoring process).
  const exit = await runRuntime({ python: deps.python, runtimeSrc: deps.runtimeSrc, args: ['score', '--spec', specPath, '--out', scorePath], signal, heartbeat });
  if (exit.code !== RuntimeExitCode.ok) {
    const why = exit.error?.message ?? (exit.stderrTail.trim().split('\n').pop() || `exit ${exit.code ?? exit.signal}`);
    throw ApplicationFailure.create({
      type: exit.code === RuntimeExitCode.invalidSpec ? ErrorTypes.invalidInput : ErrorTypes.runtimeFailure,
      message: `scoring failed: ${why}`,
      nonRetryable: exit.code === RuntimeExitCode.invalidSpec,
    });
  }
  let models;
  try {
    models = toModelScores(parseRuntimeScore(scorePath));
  } catch (err) {
    // The runtime wrote a score that does not match its contract: the same input would do so again.
    if (err instanceof RuntimeOutputError) throw ApplicationFailure.create({ type: ErrorTypes.invalidInput, message: err.message, nonRetryable: true });
    throw err;
  }
  let storedScore: string;
  try {
    storedScore = childRef(await deps.store.putFiles(scoreKey(input.phaseId), dir, ['score.json']), 'score.json');
  } catch (err) {
    throw storeFailure(err);
  }
  return { models, parityPass: models.length > 0 && models.every((m) => m.parityPass), scorePath: storedScore };
}
