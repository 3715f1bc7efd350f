/**
 * The runtime's JSON outputs (runtime/SPEC.md), parsed at the boundary with zod. Only the fields phasegate
 * reads are declared; the rest passes through untouched into the frozen artifacts.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import type { ModelScore } from '../workflows/definitions';

const nullableNumber = z.number().nullable();

export const runtimeResultSchema = z.looseObject({
  result_version: z.number(),
  spec_hash: z.string(),
  model_key: z.string(),
  model: z.looseObject({ id: z.string(), resolved_path: z.string() }),
  environment: z.record(z.string(), z.unknown()),
  units: z.array(
    z.looseObject({
      method: z.string(),
      repeat: z.number().int(),
      ok: z.boolean(),
      direction_file: z.string().nullable().optional(),
    }),
  ),
});
export type RuntimeResult = z.infer<typeof runtimeResultSchema>;

const rate = z.object({ mean: nullableNumber, std: nullableNumber });

export const runtimeScoreSchema = z.looseObject({
  score_version: z.literal(1),
  models: z.record(
    z.string(),
    z.looseObject({
      methods: z.record(
        z.string(),
        z.looseObject({ n_ok: z.number().int(), coherent: rate, garbled: rate, normal: rate, within_method_cosine_min: nullableNumber }),
      ),
      pairs: z.array(z.looseObject({ a: z.string(), b: z.string(), cosine: nullableNumber, l2: nullableNumber })),
      outputs_identical: z.boolean(),
      parity_pass: z.boolean(),
      methods_passing: z.array(z.string()),
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
          { nOk: s.n_ok, coherent: s.coherent, garbled: s.garbled, normal: s.normal, withinMethodCosineMin: s.within_method_cosine_min },
        ]),
      ),
      pairs: m.pairs.map((p) => ({ a: p.a, b: p.b, cosine: p.cosine, l2: p.l2 })),
      outputsIdentical: m.outputs_identical,
      parityPass: m.parity_pass,
      methodsPassing: m.methods_passing,
    }));
}
