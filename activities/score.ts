/** Scoring: the runtime computes the parity tables from the per-model results; a parity failure is a result. */
import { ApplicationFailure } from '@temporalio/common';
import path from 'node:path';
import { ErrorTypes, type ScoreSummary } from '../workflows/definitions';
import { writeJsonAtomic } from './run-model';
import { runRuntime, RuntimeExitCode } from './runtime-process';
import { parseRuntimeScore, toModelScores } from './runtime-json';
import type { ScoreInput } from './types';

export interface ScoreDeps {
  workDir: string;
  python: string;
  runtimeSrc: string;
}

export async function scorePhase(deps: ScoreDeps, input: ScoreInput, signal?: AbortSignal): Promise<ScoreSummary> {
  const dir = path.join(deps.workDir, input.phaseId);
  const specPath = path.join(dir, 'score-spec.json');
  const scorePath = path.join(dir, 'score.json');
  writeJsonAtomic(specPath, { results: input.results, parity: input.protocol.parity });
  const exit = await runRuntime({ python: deps.python, runtimeSrc: deps.runtimeSrc, args: ['score', '--spec', specPath, '--out', scorePath], signal });
  if (exit.code !== RuntimeExitCode.ok) {
    const why = exit.error?.message ?? exit.stderrTail.trim().split('\n').pop() ?? `exit ${exit.code ?? exit.signal}`;
    throw ApplicationFailure.create({
      type: exit.code === RuntimeExitCode.invalidSpec ? ErrorTypes.invalidInput : ErrorTypes.runtimeFailure,
      message: `scoring failed: ${why}`,
      nonRetryable: exit.code === RuntimeExitCode.invalidSpec,
    });
  }
  const models = toModelScores(parseRuntimeScore(scorePath));
  return { models, parityPass: models.length > 0 && models.every((m) => m.parityPass), scorePath };
}
