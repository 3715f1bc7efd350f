/**
 * The per-model GPU activity: checks the prompt lock, writes the runtime spec, runs it on the protocol's
 * backend, heartbeats progress, and turns backend errors into failures the workflow can classify.
 */
import { Context } from '@temporalio/activity';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { parsePromptLines, sha256 } from '../protocols/load';
import { ErrorTypes, type LockedFile, type RunProgress } from '../workflows/definitions';
import type { ArtifactStore } from '../common/artifact-store';
import { publishRun, runKey, storeFailure } from './artifacts';
import { BackendError, type ComputeBackend } from './backends/backend';
import { buildRunSpec } from './runtime-spec';
import type { ModelSpec } from '../protocols/schema';
import type { ModelRunResult, RunModelInput } from './types';

export interface RunModelDeps {
  workDir: string;
  modelCacheDir: string;
  backends: Partial<Record<'local' | 'modal', ComputeBackend>>;
  /** Where the run's outputs go for scoring and the freeze, which may run on another worker. */
  store: ArtifactStore;
  logger: Logger;
  heartbeatEverySeconds?: number;
}

/** Reads a locked file and refuses it if its content changed since the phase started. */
export function readLocked(field: string, file: LockedFile): string {
  let text: string;
  try {
    text = readFileSync(file.path, 'utf8');
  } catch (err) {
    throw ApplicationFailure.create({
      type: ErrorTypes.lockViolation,
      message: `${field}: ${file.path} is unreadable after the phase started (${(err as NodeJS.ErrnoException).code ?? String(err)})`,
      nonRetryable: true,
    });
  }
  if (sha256(text) !== file.sha256) {
    throw ApplicationFailure.create({
      type: ErrorTypes.lockViolation,
      message: `${field}: ${file.path} changed after the phase started (sha256 no longer matches the protocol lock)`,
      nonRetryable: true,
    });
  }
  return text;
}

export function writeJsonAtomic(file: string, value: unknown): void {
  mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, `${JSON.stringify(value, null, 2)}\n`);
  renameSync(tmp, file);
}

/** What a model's runtime spec is made from: the phase's protocol and its locked prompt files. */
export type SpecSource = Pick<RunModelInput, 'phaseId' | 'protocol' | 'prompts'>;

/**
 * Checks the prompt lock and writes the runtime spec of one model into `outDir/name`: the one place a run spec
 * is built from a phase (the run and the preflight use the same). Returns the spec's path.
 */
export function writeRunSpec(source: SpecSource, model: ModelSpec, outDir: string, cacheDir: string, name = 'spec.json'): string {
  const prompts = {
    harmful: parsePromptLines(readLocked('prompts.harmful', source.prompts.harmful)),
    harmless: parsePromptLines(readLocked('prompts.harmless', source.prompts.harmless)),
    eval: parsePromptLines(readLocked('prompts.eval', source.prompts.eval)),
  };
  const specPath = path.join(outDir, name);
  writeJsonAtomic(specPath, buildRunSpec({ phaseId: source.phaseId, protocol: source.protocol, model, prompts, cacheDir }));
  return specPath;
}

/** One folder per (phase, model), shared by every attempt: the runtime's checkpoints make a retry resume. */
export function modelOutDir(workDir: string, phaseId: string, modelKey: string): string {
  return path.join(workDir, phaseId, modelKey);
}

export async function runModel(deps: RunModelDeps, input: RunModelInput): Promise<ModelRunResult> {
  const ctx = Context.current();
  const model = input.protocol.models.find((m) => m.key === input.modelKey);
  if (model === undefined) {
    throw ApplicationFailure.create({ type: ErrorTypes.invalidInput, message: `model "${input.modelKey}" is not in the protocol`, nonRetryable: true });
  }
  const log = deps.logger.child({ phaseId: input.phaseId, model: model.key, attempt: input.attempt });
  const outDir = modelOutDir(deps.workDir, input.phaseId, model.key);
  const specPath = writeRunSpec(input, model, outDir, deps.modelCacheDir);

  const backend = deps.backends[input.protocol.backend];
  if (backend === undefined) {
    throw ApplicationFailure.create({
      type: ErrorTypes.missingCredentials,
      message: `the ${input.protocol.backend} backend is not configured on this worker`,
      nonRetryable: true,
    });
  }

  const progress: RunProgress = { stage: 'launching', unitsDone: 0, unitsTotal: runtimeUnits(input.protocol.methods.length, input.protocol.repeats), lastUnit: null, backendIds: {} };
  const beat = (): void => ctx.heartbeat(progress);
  // Heartbeat on a timer as well as on events: a long unit sends no event for minutes, and cancellation only
  // reaches an activity through a heartbeat.
  const timer = setInterval(beat, (deps.heartbeatEverySeconds ?? 5) * 1000);
  beat();
  log.info({ backend: backend.name, outDir }, 'model run started');
  // The attempt is charged from here: time spent queued for a worker is not GPU time.
  const startedAtMs = Date.now();
  try {
    const result = await backend.run(
      {
        phaseId: input.phaseId,
        modelKey: model.key,
        attempt: input.attempt,
        gpu: model.gpu,
        timeoutMinutes: attemptTimeoutMinutes(model.timeout_minutes, ctx.info.startToCloseTimeoutMs),
        specPath,
        outDir,
        container: input.container,
      },
      {
        signal: ctx.cancellationSignal,
        cancelRequested: () => ctx.cancellationDetails?.cancelRequested === true,
        timedOut: () => ctx.cancellationDetails?.timedOut === true,
        progress: (p) => {
          Object.assign(progress, p);
          beat();
        },
      },
    );
    log.info({ seconds: result.measuredSeconds }, 'model run finished');
    // Published under this attempt's own key: a worker that died mid-upload cannot leave a later attempt's set mixed.
    let resultPath: string;
    try {
      resultPath = await publishRun(deps.store, runKey(input.phaseId, model.key, input.attempt), result.resultPath);
    } catch (err) {
      // The run happened: whatever goes wrong after it (the store, an output that is not a valid result), its
      // seconds and its remote calls' windows go with the failure, so that the ledger charges them.
      const details = [{ measuredSeconds: result.measuredSeconds, backendIds: result.backendIds, startedAtMs, windows: result.windows }];
      const failure = storeFailure(err, details);
      throw failure !== err ? failure : ApplicationFailure.create({ type: ErrorTypes.runtimeFailure, message: (err as Error).message, details });
    }
    return { ...result, resultPath, startedAtMs };
  } catch (err) {
    if (!(err instanceof BackendError)) throw err;
    const details = [{ measuredSeconds: err.measuredSeconds, backendIds: err.backendIds, startedAtMs, windows: err.windows }];
    log.warn({ kind: err.kind, seconds: err.measuredSeconds }, `model run ended: ${err.message}`);
    if (err.kind === 'cancelled') throw new CancelledFailure(err.message, details);
    const type = { invalid_input: ErrorTypes.invalidInput, missing_credentials: ErrorTypes.missingCredentials, failure: ErrorTypes.runtimeFailure }[err.kind];
    throw ApplicationFailure.create({ type, message: err.message, details, nonRetryable: err.kind !== 'failure' });
  } finally {
    clearInterval(timer);
  }
}

/** The runtime's units per model (runtime/SPEC.md): baseline, reference, methods x repeats, one native check each. */
export function runtimeUnits(methods: number, repeats: number): number {
  return 2 + methods * (repeats + 1);
}

/**
 * The remote time limit of an attempt: the workflow set this activity's start-to-close timeout to what the
 * approval left can pay for (or the protocol's timeout, if less), and a remote call gets no more than that, so
 * Modal itself stops it there even if nothing else does.
 */
export function attemptTimeoutMinutes(protocolMinutes: number, startToCloseMs: number | undefined): number {
  if (startToCloseMs === undefined || !(startToCloseMs > 0)) return protocolMinutes;
  return Math.min(protocolMinutes, startToCloseMs / 60_000);
}
