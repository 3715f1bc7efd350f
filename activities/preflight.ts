/**
 * The preflight before any dispatch: each model's run spec checked by the runtime against the model's config and
 * tokenizer, on this worker's CPU (`phasegate-runtime preflight`, runtime/src/phasegate_runtime/preflight.py). What
 * the run would refuse after loading the model on a paid GPU (a layer past the model's depth, a prompt the site
 * position reaches past, an unknown `tiny:` model, a hub id the hub rejects, identical contrast sets) is refused
 * here, final, before a second is paid. A hub model this worker cannot reach is reported as not checked.
 */
import { ApplicationFailure } from '@temporalio/common';
import { ErrorTypes, type PreflightRecord } from '../workflows/definitions';
import { modelOutDir, writeRunSpec } from './run-model';
import { runRuntime, RuntimeExitCode } from './runtime-process';
import type { PreflightInput } from './types';

export interface PreflightDeps {
  workDir: string;
  modelCacheDir: string;
  python: string;
  runtimeSrc: string;
}

/**
 * One runtime process for all the phase's models (its imports are seconds of CPU), one event per model in order;
 * `heartbeat`, called every few seconds while it checks, tells Temporal the worker is alive.
 */
export async function preflightModels(deps: PreflightDeps, input: PreflightInput, heartbeat?: () => void): Promise<PreflightRecord> {
  const models = input.protocol.models;
  const specs = models.map((model) => writeRunSpec(input, model, modelOutDir(deps.workDir, input.phaseId, model.key), deps.modelCacheDir, 'preflight-spec.json'));
  const verdicts = new Map<string, { checked: boolean; note: string | null }>();
  const exit = await runRuntime({
    python: deps.python,
    runtimeSrc: deps.runtimeSrc,
    args: ['preflight', ...specs.flatMap((spec) => ['--spec', spec])],
    heartbeat,
    onEvent: (event) => {
      if (event.event !== 'preflight' || typeof event.model_key !== 'string') return;
      verdicts.set(event.model_key, { checked: event.checked === true, note: typeof event.note === 'string' ? event.note : null });
    },
  });
  // The runtime stops at the first model it cannot pass: the first without a verdict. An error in its own
  // arguments (a caller's bug) is about no model.
  const aboutNoModel = exit.error?.path === 'arguments';
  const stoppedAt = (aboutNoModel ? undefined : models.find((model) => !verdicts.has(model.key))?.key) ?? 'the preflight';
  if (exit.code === RuntimeExitCode.invalidSpec && aboutNoModel) {
    throw ApplicationFailure.create({ type: ErrorTypes.runtimeFailure, message: `the preflight's runtime command was refused: ${exit.error?.message ?? 'invalid arguments'}` });
  }
  if (exit.code === RuntimeExitCode.invalidSpec) {
    throw ApplicationFailure.create({ type: ErrorTypes.invalidInput, message: `${stoppedAt}: ${exit.error?.message ?? 'invalid spec'} (found before any GPU run)`, nonRetryable: true });
  }
  if (exit.code !== RuntimeExitCode.ok) {
    throw ApplicationFailure.create({ type: ErrorTypes.runtimeFailure, message: `preflight of ${stoppedAt} failed: ${exit.error?.message ?? exit.stderrTail.trim().split('\n').pop() ?? `exit ${exit.code}`}` });
  }
  const record: PreflightRecord = { checked: [], notChecked: [] };
  for (const model of models) {
    const verdict = verdicts.get(model.key);
    if (verdict === undefined) throw ApplicationFailure.create({ type: ErrorTypes.runtimeFailure, message: `preflight of ${model.key}: the runtime exited 0 without a verdict` });
    if (verdict.checked) record.checked.push(model.key);
    else record.notChecked.push({ modelKey: model.key, why: verdict.note ?? 'not checked' });
  }
  return record;
}
