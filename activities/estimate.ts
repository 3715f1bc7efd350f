/**
 * The cost estimate shown at the budget gate.
 *
 * Per model: expected GPU seconds x the pricing table's per-second price. The expected seconds start as the
 * protocol's prior (`expected_gpu_seconds`) and are calibrated by earlier frozen phases: every frozen artifact of
 * the same model id on the same GPU type gives measured seconds (all attempts the backend measured; a crashed
 * attempt's observed wall time, an upper bound charged to be safe, would inflate the rate) per unit of work
 * (generation units x eval prompts x new tokens); the largest such rate, scaled to this phase's work and padded by
 * a 25% margin, replaces the prior.
 */
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Estimate, ModelEstimate } from '../workflows/definitions';
import { roundUsd } from '../workflows/phase-logic';
import type { ModelSpec, Protocol } from '../protocols/schema';
import type { EstimateInput } from './types';

export const CALIBRATION_MARGIN = 1.25;

/** What a frozen model artifact tells the estimator. */
export interface CalibrationPoint {
  phaseId: string;
  modelId: string;
  gpu: string;
  work: number;
  seconds: number;
}

export function workOf(protocol: Protocol): number {
  return (protocol.methods.length * protocol.repeats + 1) * protocol.eval_prompt_count * protocol.sampling.max_new_tokens;
}

export function estimateModel(model: ModelSpec, protocol: Protocol, usdPerSecond: number, points: CalibrationPoint[]): ModelEstimate {
  const matching = points.filter((p) => p.modelId === model.id && p.gpu === model.gpu && p.work > 0 && p.seconds > 0);
  let gpuSeconds = model.expected_gpu_seconds;
  let basis: ModelEstimate['basis'] = 'protocol';
  let basisDetail = `protocol prior expected_gpu_seconds=${model.expected_gpu_seconds}`;
  if (matching.length > 0) {
    const worst = matching.reduce((a, b) => (b.seconds / b.work > a.seconds / a.work ? b : a));
    gpuSeconds = (worst.seconds / worst.work) * workOf(protocol) * CALIBRATION_MARGIN;
    basis = 'calibrated';
    basisDetail = `slowest of ${matching.length} frozen run(s) (${worst.phaseId}: ${worst.seconds.toFixed(1)} measured s for ${worst.work} work units) x ${CALIBRATION_MARGIN} margin`;
  }
  gpuSeconds = Math.round(gpuSeconds * 10) / 10;
  return { modelKey: model.key, gpu: model.gpu, gpuSeconds, usdPerSecond, usd: roundUsd(gpuSeconds * usdPerSecond), basis, basisDetail };
}

export function estimatePhase(protocol: Protocol, usdPerSecond: Record<string, number>, points: CalibrationPoint[]): Estimate {
  const models = protocol.models.map((m) => estimateModel(m, protocol, usdPerSecond[m.gpu] ?? 0, points));
  return { models, totalUsd: roundUsd(models.reduce((s, m) => s + m.usd, 0)) };
}

/** Reads calibration points from the frozen model artifacts under the artifacts folder; unreadable ones are skipped. */
export function readCalibration(artifactsDir: string, excludePhaseId: string): CalibrationPoint[] {
  const points: CalibrationPoint[] = [];
  let phases: string[] = [];
  try {
    phases = readdirSync(artifactsDir);
  } catch {
    return points;
  }
  for (const phaseId of phases) {
    if (phaseId === excludePhaseId) continue;
    const modelsDir = path.join(artifactsDir, phaseId, 'models');
    let files: string[] = [];
    try {
      files = readdirSync(modelsDir).filter((f) => f.endsWith('.json'));
    } catch {
      continue;
    }
    for (const file of files) {
      try {
        const artifact = JSON.parse(readFileSync(path.join(modelsDir, file), 'utf8')) as {
          model?: { id?: string; gpu?: string };
          workload?: { work?: number };
          ledger?: { seconds?: number; secondsBasis?: string }[];
        };
        // Measured seconds, and remote calls' billable windows (each call-second once); never a crashed attempt's
        // observed wall time, which may be mostly waiting for a heartbeat timeout.
        const seconds = (artifact.ledger ?? []).filter((e) => e.secondsBasis === 'measured' || e.secondsBasis === 'container').reduce((s, e) => s + (e.seconds ?? 0), 0);
        if (artifact.model?.id && artifact.model.gpu && artifact.workload?.work) {
          points.push({ phaseId, modelId: artifact.model.id, gpu: artifact.model.gpu, work: artifact.workload.work, seconds });
        }
      } catch {
        // A damaged artifact is `verify`'s business; it just does not calibrate.
      }
    }
  }
  return points;
}

export function estimateActivity(artifactsDir: string, input: EstimateInput): Estimate {
  return estimatePhase(input.protocol, input.pricing.usdPerSecond, readCalibration(artifactsDir, input.phaseId));
}
