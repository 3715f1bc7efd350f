/**
 * The runtime's JSON outputs (runtime/SPEC.md), parsed at the boundary with zod. Only the fields phasegate
 * reads are declared; the rest passes through untouched into the frozen artifacts.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import type { ModelScore } from '../workflows/definitions';

const nullableNumber = z.number().nullable();

/**
 * A file a run's records name: a direction array in its run folder's `directions/`, never a path that climbs out
 * (a result from a remote container names files the worker then uploads and freezes).
 */
const runFile = z.string().regex(/^directions\/[A-Za-z0-9_][A-Za-z0-9_.-]*\.npy$/, 'must name a .npy file in the run\'s directions/ folder');

/** What every record of a run lists: the files it wrote or used (path relative to the run folder -> sha256). */
const fileRecord = { files: z.record(runFile, z.string()).optional(), direction_file: runFile.nullable().optional() };

export const runtimeResultSchema = z.looseObject({
  result_version: z.number(),
  spec_hash: z.string(),
  model_key: z.string(),
  model: z.looseObject({ id: z.string(), resolved_path: z.string() }),
  environment: z.record(z.string(), z.unknown()),
  baseline: z.looseObject(fileRecord),
  reference: z.looseObject(fileRecord),
  units: z.array(z.looseObject({ method: z.string(), repeat: z.number().int(), ok: z.boolean(), ...fileRecord })),
  native: z.array(z.looseObject({ method: z.string(), ...fileRecord })),
});
export type RuntimeResult = z.infer<typeof runtimeResultSchema>;

/**
 * Every file a run's records name (the baseline, the reference, the fast units and the native cross-check), each
 * once, relative to the run folder: what scoring reads beside result.json, so what a run publishes and a freeze
 * keeps.
 */
export function resultFiles(result: RuntimeResult): string[] {
  const records = [result.baseline, result.reference, ...result.units, ...result.native];
  const named = records.flatMap((r) => [...Object.keys(r.files ?? {}), ...(r.direction_file ? [r.direction_file] : [])]);
  return [...new Set(named)].sort();
}

const rate = z.object({ mean: nullableNumber, std: nullableNumber });
const nullableString = z.string().nullable();

export const runtimeScoreSchema = z.looseObject({
  score_version: z.literal(2),
  models: z.record(
    z.string(),
    z.looseObject({
      methods: z.record(
        z.string(),
        z.looseObject({ n_ok: z.number().int(), coherent: rate, garbled: rate, normal: rate, within_method_cosine_min: nullableNumber, changed_fraction: rate }),
      ),
      pairs: z.array(z.looseObject({ a: z.string(), b: z.string(), cosine: nullableNumber, l2: nullableNumber, texts_identical: z.boolean() })),
      outputs_identical: z.boolean(),
      parity_pass: z.boolean(),
      methods_passing: z.array(z.string()),
      reference: z.looseObject({
        ok: z.boolean(),
        error: nullableString,
        methods: z.record(z.string(), z.looseObject({ cosine: nullableNumber, l2: nullableNumber, within_thresholds: z.boolean() })),
      }),
      steering: z.looseObject({
        site_exact: z.boolean(),
        max_abs_error: nullableNumber,
        forward_passes: z.number().int(),
        positions: z.number().int(),
        unsteered_max_abs_error: nullableNumber,
        changed_fraction_min: nullableNumber,
        min_changed_fraction: z.number(),
        visible: z.boolean(),
      }),
      native: z.looseObject({
        all_identical: z.boolean(),
        methods: z.record(
          z.string(),
          z.looseObject({ ok: z.boolean(), error: nullableString, tokens_identical: z.boolean(), read_cosine: nullableNumber, wall_s: nullableNumber }),
        ),
      }),
      integrity: z.looseObject({ ok: z.boolean(), problems: z.array(z.string()) }),
      numerics: z.looseObject({ decoder: z.string(), fused_kernels: z.boolean(), fused_mode: z.enum(['off', 'exact', 'all']).optional(), cuda_graphs: z.boolean(), grouped_eager: z.boolean() }),
      failures: z.array(z.string()),
    }),
  ),
});
export type RuntimeScore = z.infer<typeof runtimeScoreSchema>;

export class RuntimeOutputError extends Error {
  override readonly name = 'RuntimeOutputError';
}

function parseFile<T>(file: string, schema: z.ZodType<T>, what: string): T {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new RuntimeOutputError(`${what} ${file}: ${(err as Error).message}`);
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
    throw new RuntimeOutputError(`${what} ${file} does not match runtime/SPEC.md: ${issues}`);
  }
  return parsed.data;
}

export const parseRuntimeResult = (file: string): RuntimeResult => parseFile(file, runtimeResultSchema, 'runtime result');
export const parseRuntimeScore = (file: string): RuntimeScore => parseFile(file, runtimeScoreSchema, 'runtime score');

/** The runtime's snake_case score as the workflow's ModelScore list, in model-key order. */
export function toModelScores(score: RuntimeScore): ModelScore[] {
  return Object.entries(score.models)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([modelKey, m]) => ({
      modelKey,
      methods: Object.fromEntries(
        Object.entries(m.methods).map(([name, s]) => [
          name,
          { nOk: s.n_ok, coherent: s.coherent, garbled: s.garbled, normal: s.normal, withinMethodCosineMin: s.within_method_cosine_min, changedFraction: s.changed_fraction },
        ]),
      ),
      pairs: m.pairs.map((p) => ({ a: p.a, b: p.b, cosine: p.cosine, l2: p.l2, textsIdentical: p.texts_identical })),
      outputsIdentical: m.outputs_identical,
      parityPass: m.parity_pass,
      methodsPassing: m.methods_passing,
      failures: m.failures,
      reference: {
        ok: m.reference.ok,
        error: m.reference.error,
        methods: Object.fromEntries(Object.entries(m.reference.methods).map(([name, r]) => [name, { cosine: r.cosine, l2: r.l2, withinThresholds: r.within_thresholds }])),
      },
      steering: {
        siteExact: m.steering.site_exact,
        maxAbsError: m.steering.max_abs_error,
        forwardPasses: m.steering.forward_passes,
        positions: m.steering.positions,
        unsteeredMaxAbsError: m.steering.unsteered_max_abs_error,
        changedFractionMin: m.steering.changed_fraction_min,
        minChangedFraction: m.steering.min_changed_fraction,
        visible: m.steering.visible,
      },
      native: {
        allIdentical: m.native.all_identical,
        methods: Object.fromEntries(
          Object.entries(m.native.methods).map(([name, n]) => [name, { ok: n.ok, error: n.error, tokensIdentical: n.tokens_identical, readCosine: n.read_cosine, wallS: n.wall_s }]),
        ),
      },
      integrity: { ok: m.integrity.ok, problems: m.integrity.problems },
      numerics: {
        decoder: m.numerics.decoder,
        fusedKernels: m.numerics.fused_kernels,
        ...(m.numerics.fused_mode === undefined ? {} : { fusedMode: m.numerics.fused_mode }),
        cudaGraphs: m.numerics.cuda_graphs,
        groupedEager: m.numerics.grouped_eager,
      },
    }));
}
