/**
 * The protocol file: one zod schema, the TypeScript type inferred from it. A protocol is the phase's lock: its
 * canonical JSON (with the content hashes of its prompt files and pricing table) is hashed into the phase id.
 */
import { z } from 'zod';

const identifier = z
  .string()
  .regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'must be lowercase letters, digits and dashes (at most 63), starting alphanumeric');
const person = z.string().trim().min(1, 'must name a person');
const positive = z.number().finite().positive();

export const methodSchema = z.enum(['nnsight', 'hooks', 'pyvene']);
export type Method = z.infer<typeof methodSchema>;

export const gpuSchema = z.enum(['cpu', 'T4', 'L4', 'A10G', 'L40S', 'A100-40GB', 'A100-80GB', 'H100', 'H200', 'B200']);
export type Gpu = z.infer<typeof gpuSchema>;

export const modelSchema = z.strictObject({
  /** Short key used in artifact names and tables, e.g. "qwen-7b". */
  key: identifier,
  /** A Hugging Face id, a local path, or `tiny:<arch>` (a seeded random model for demos and tests). */
  id: z.string().min(1),
  revision: z.string().min(1).nullable().default(null),
  gpu: gpuSchema,
  dtype: z.enum(['float32', 'bfloat16', 'float16']).default('bfloat16'),
  attn_implementation: z.enum(['eager', 'sdpa']).nullable().default(null),
  /** The prior for the cost estimate, used until earlier frozen runs of this model calibrate it. */
  expected_gpu_seconds: positive,
  timeout_minutes: positive.default(60),
  tiny_seed: z.number().int().min(0).default(0),
});
export type ModelSpec = z.infer<typeof modelSchema>;

/**
 * After this many hours without a decision the phase records a reminder and keeps waiting. At least a quarter
 * of an hour, so reminders cannot flood the phase's history.
 */
const deadlineHours = positive.min(0.25, 'must be at least 0.25 hours').nullable().default(null);

export const protocolSchema = z
  .strictObject({
    protocol_version: z.literal(1),
    phase: identifier,
    title: z.string().min(1),
    scope: z.string().min(1),
    /** Phases (by name) that must be FROZEN before this one may start: the seed's next-phase hand-off. */
    requires_frozen: z.array(identifier).default([]),
    backend: z.enum(['local', 'modal']),
    models: z.array(modelSchema).min(1, 'must list at least one model'),
    methods: z.array(methodSchema).min(1).refine((m) => new Set(m).size === m.length, 'must not repeat a method'),
    site: z.strictObject({
      stream: z.literal('residual'),
      layer: z.number().int().min(0),
      // Prompts are left-padded, so only offsets from the end name the same token in every row.
      position: z.number().int().max(-1, 'must be negative (counted back from the last prompt token)').default(-1),
    }),
    direction: z.strictObject({
      kind: z.literal('mean_difference'),
      contrast: z.literal('harmful_minus_harmless'),
      normalize: z.literal('l2'),
    }),
    steering: z.strictObject({ alpha: z.number().finite() }),
    sampling: z.strictObject({
      decode: z.literal('greedy'),
      max_new_tokens: z.number().int().min(1).max(4096),
      batch_size: z.number().int().min(1).default(32),
    }),
    repeats: z.number().int().min(1).max(100),
    seed: z.number().int().min(0).default(1234),
    deterministic: z.boolean().default(true),
    /** Prompt files, one prompt per line, paths relative to the protocol file. */
    prompts: z.strictObject({ harmful: z.string().min(1), harmless: z.string().min(1), eval: z.string().min(1) }),
    /** The number of evaluation prompts the eval file must hold: a guard against a truncated file. */
    eval_prompt_count: z.number().int().min(1),
    classification: z.strictObject({
      normal_rule: z.literal('exact_match').default('exact_match'),
      garbled_max_repeated_ngram_fraction: z.number().min(0).max(1),
      garbled_ngram: z.number().int().min(1).max(16),
      garbled_min_unique_token_fraction: z.number().min(0).max(1),
      garbled_max_nonprintable_fraction: z.number().min(0).max(1),
    }),
    parity: z.strictObject({ min_cosine: z.number().min(-1).max(1), max_l2: z.number().min(0) }),
    budget: z.strictObject({
      cap_usd: positive,
      approvers: z.array(person).min(1, 'must list at least one approver'),
      deadline_hours: deadlineHours,
    }),
    review: z.strictObject({
      reviewers: z.array(person).min(1, 'must list at least one reviewer'),
      deadline_hours: deadlineHours,
    }),
    retry: z
      .strictObject({
        max_attempts: z.number().int().min(1).max(10).default(3),
        initial_interval_seconds: z.number().min(0).default(10),
        backoff_coefficient: z.number().min(1).default(2),
      })
      .default({ max_attempts: 3, initial_interval_seconds: 10, backoff_coefficient: 2 }),
    /** The pricing table, relative to the protocol file. */
    pricing: z.string().min(1),
    limitations: z.array(z.string().min(1)).default([]),
    next_phase: z.array(z.string().min(1)).default([]),
  })
  .superRefine((p, ctx) => {
    const keys = p.models.map((m) => m.key);
    keys.forEach((key, i) => {
      if (keys.indexOf(key) !== i) {
        ctx.addIssue({ code: 'custom', path: ['models', i, 'key'], message: `duplicate model key "${key}"` });
      }
    });
    if (p.backend === 'local') {
      p.models.forEach((m, i) => {
        if (m.gpu !== 'cpu') {
          ctx.addIssue({
            code: 'custom',
            path: ['models', i, 'gpu'],
            message: `the local backend runs on this machine's CPU: gpu must be "cpu", not "${m.gpu}"`,
          });
        }
      });
    }
  });

export type Protocol = z.infer<typeof protocolSchema>;

export const pricingSchema = z.strictObject({
  source: z.string().min(1),
  read_on: z.string().regex(/^\d{4}-\d{2}-\d{2}$/, 'must be a date YYYY-MM-DD'),
  note: z.string().default(''),
  usd_per_second: z.record(gpuSchema, z.number().finite().min(0)),
});
export type PricingTable = z.infer<typeof pricingSchema>;
