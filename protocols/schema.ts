/**
 * The protocol file: one zod schema, the TypeScript type inferred from it. A protocol is the phase's lock: its
 * canonical JSON (with the content hashes of its prompt files and pricing table) is hashed into the phase id.
 */
import { z } from 'zod';
import { PERSON_NAME, PERSON_NAME_RULE } from '../domain/decisions';

const identifier = z
  .string()
  .regex(/^[a-z0-9][a-z0-9-]{0,62}$/, 'must be lowercase letters, digits and dashes (at most 63), starting alphanumeric');
const person = z.string().regex(PERSON_NAME, `must be a person's name: ${PERSON_NAME_RULE}`);
/** A public key as `phasegate keys new` prints it. */
const publicKey = z.string().regex(/^ed25519:[A-Za-z0-9+/]{43}=$/, 'must be an Ed25519 public key as `phasegate keys new` prints it (ed25519:<base64>)');
/** Every string in a protocol is bounded: a protocol travels in workflow history, which has a size limit. */
const text = (max: number) => z.string().min(1).max(max, `must be at most ${max} characters`);
/** A file named by the protocol: relative to the protocol's folder, and inside it. */
const relativeFile = text(1024);
const positive = (max: number) => z.number().finite().positive().max(max, `must be at most ${max}`);

export const methodSchema = z.enum(['nnsight', 'hooks', 'pyvene']);
export type Method = z.infer<typeof methodSchema>;

export const gpuSchema = z.enum(['cpu', 'T4', 'L4', 'A10G', 'L40S', 'A100-40GB', 'A100-80GB', 'H100', 'H200', 'B200']);
export type Gpu = z.infer<typeof gpuSchema>;

export const modelSchema = z.strictObject({
  /** Short key used in artifact names and tables, e.g. "qwen-7b". */
  key: identifier,
  /** A Hugging Face id, a local path, or `tiny:<arch>` (a seeded random model for demos and tests). */
  id: text(200),
  revision: text(100).nullable().default(null),
  gpu: gpuSchema,
  dtype: z.enum(['float32', 'bfloat16', 'float16']).default('bfloat16'),
  attn_implementation: z.enum(['eager', 'sdpa']).nullable().default(null),
  /** The prior for the cost estimate, used until earlier frozen runs of this model calibrate it. */
  expected_gpu_seconds: positive(1_000_000),
  /** At least a minute, at most a day: an attempt's time limit. */
  timeout_minutes: z.number().finite().min(1, 'must be at least 1').max(1440, 'must be at most 1440 (a day)').default(60),
  tiny_seed: z.number().int().min(0).max(2 ** 31 - 1).default(0),
});
export type ModelSpec = z.infer<typeof modelSchema>;

/**
 * Every switch that changes numerics is a protocol field, part of the protocol hash and of the run spec hash;
 * environment variables can only refuse a run whose spec disagrees, never change it.
 */
export const numericsSchema = z.strictObject({
  /** fast: phasegate's static-cache greedy decoder; hf: transformers' own generate. */
  decoder: z.enum(['fast', 'hf'], { error: 'must be "fast" (phasegate\'s static-cache greedy decoder) or "hf" (transformers\' generate)' }).default('fast'),
  /**
   * Compiled fused kernels in decode steps. exact: only the pieces that compile bit-exact (gated MLPs, rotary, each
   * norm's pointwise part after ATen's own reduction), CUDA only; auto: every piece, CUDA only; on: every piece, CPU
   * too. exact by default: on an H200 its pieces equal eager bit for bit and both shapes decode the same tokens as
   * with fusion off (a Qwen2.5-7B pass 0.96 s against 1.10 s off); every piece would part a Qwen2.5-7B decode from
   * transformers' generate on 20 of 30 prompts (bench/fusion_exactness.py), failing the native cross-check.
   */
  fused_kernels: z.enum(['off', 'exact', 'auto', 'on'], { error: 'must be "off", "exact" (bit-exact pieces, CUDA only), "auto" (every piece, CUDA only) or "on"' }).default('exact'),
  /** Decode steps captured as CUDA graphs (CUDA only). */
  cuda_graphs: z.boolean({ error: 'must be true or false' }).default(true),
  /** Eager attention over grouped key/value heads without repeating them. */
  grouped_eager: z.boolean({ error: 'must be true or false' }).default(true),
});
export type Numerics = z.infer<typeof numericsSchema>;

/**
 * After this many hours without a decision the phase records a reminder and keeps waiting. At least a quarter
 * of an hour, so reminders cannot flood the phase's history.
 */
const deadlineHours = z.number().finite().min(0.25, 'must be at least 0.25 hours').max(8760, 'must be at most 8760 hours (a year)').nullable().default(null);

export const protocolSchema = z
  .strictObject({
    protocol_version: z.literal(1),
    phase: identifier,
    title: text(200),
    scope: text(4000),
    /** Phases (by name) that must be FROZEN before this one may start: the seed's next-phase hand-off. */
    requires_frozen: z.array(identifier).max(20).default([]),
    backend: z.enum(['local', 'modal']),
    models: z.array(modelSchema).min(1, 'must list at least one model').max(20, 'must list at most 20 models'),
    // Parity compares methods: one method alone proves nothing.
    methods: z.array(methodSchema).min(2, 'must list at least two methods (parity compares them)').refine((m) => new Set(m).size === m.length, 'must not repeat a method'),
    site: z.strictObject({
      stream: z.literal('residual'),
      layer: z.number().int().min(0).max(1000),
      // Prompts are left-padded, so only offsets from the end name the same token in every row.
      position: z.number().int().min(-4096).max(-1, 'must be negative (counted back from the last prompt token)').default(-1),
    }),
    direction: z.strictObject({
      kind: z.literal('mean_difference'),
      contrast: z.literal('harmful_minus_harmless'),
      normalize: z.literal('l2'),
    }),
    steering: z.strictObject({
      // alpha 0 would "pass" parity without steering anything.
      alpha: z.number().finite().min(-1000).max(1000).refine((a) => a !== 0, 'must not be 0 (nothing would be steered)'),
      /**
       * The fraction of eval prompts whose steered token ids must differ from the baseline's for the report to
       * call steering visible. Below it the report says, per model, that steering had no visible effect; parity
       * does not fail on it.
       */
      min_changed_fraction: z.number().min(0, 'must be at least 0').max(1, 'must be at most 1').default(0.1),
    }),
    numerics: numericsSchema.default(() => numericsSchema.parse({})),
    sampling: z.strictObject({
      decode: z.literal('greedy'),
      max_new_tokens: z.number().int().min(1).max(4096),
      batch_size: z.number().int().min(1).max(1024).default(32),
    }),
    repeats: z.number().int().min(1).max(100),
    seed: z.number().int().min(0).max(2 ** 31 - 1).default(1234),
    deterministic: z.boolean().default(true),
    /** Prompt files, one prompt per line, paths relative to the protocol file. */
    prompts: z.strictObject({ harmful: relativeFile, harmless: relativeFile, eval: relativeFile }),
    /** The number of evaluation prompts the eval file must hold: a guard against a truncated file. */
    eval_prompt_count: z.number().int().min(1).max(100_000),
    classification: z.strictObject({
      normal_rule: z.literal('exact_match').default('exact_match'),
      garbled_max_repeated_ngram_fraction: z.number().min(0).max(1),
      garbled_ngram: z.number().int().min(1).max(16),
      garbled_min_unique_token_fraction: z.number().min(0).max(1),
      garbled_max_nonprintable_fraction: z.number().min(0).max(1),
    }),
    parity: z.strictObject({ min_cosine: z.number().min(-1).max(1), max_l2: z.number().min(0).max(1e6) }),
    /**
     * Everyone who may decide at a gate, name -> public key: inline, or the path of a roster file holding the
     * same object. Either way the names and keys enter the protocol hash, so a changed roster is a new phase.
     */
    // Loosely typed here; the loader checks every name and key with rosterSchema, inline or from the file.
    people: z.union([relativeFile, z.record(z.string(), z.string())], {
      error: "must be an object naming each person's public key (name -> ed25519:...), or the path of a roster file holding one",
    }),
    /** One key may not both approve the budget and review the run (default). */
    separate_duties: z.boolean().default(true),
    budget: z.strictObject({
      // A whole number of micro-dollars, at most a million dollars: approvals are checked against it exactly.
      cap_usd: positive(1_000_000).refine((v) => v > 1_000_000 || Math.abs(v * 1e6 - Math.round(v * 1e6)) < 1e-6, 'must have at most 6 decimals'),
      approvers: z.array(person).min(1, 'must list at least one approver').max(50),
      deadline_hours: deadlineHours,
    }),
    review: z.strictObject({
      reviewers: z.array(person).min(1, 'must list at least one reviewer').max(50),
      deadline_hours: deadlineHours,
    }),
    retry: z
      .strictObject({
        max_attempts: z.number().int().min(1).max(10).default(3),
        // 0, or between a tenth of a second and an hour; the back-off never waits more than a day (phase-logic).
        initial_interval_seconds: z.number().min(0).max(3600).refine((v) => v === 0 || v >= 0.1, 'must be 0 or at least 0.1').default(10),
        backoff_coefficient: z.number().min(1).max(10).default(2),
      })
      .default({ max_attempts: 3, initial_interval_seconds: 10, backoff_coefficient: 2 }),
    /** The pricing table, relative to the protocol file. */
    pricing: relativeFile,
    limitations: z.array(text(2000)).max(50).default([]),
    next_phase: z.array(text(2000)).max(50).default([]),
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
  source: text(500),
  read_on: z.string().regex(/^\d{4}-\d{2}-\d{2}$/, 'must be a date YYYY-MM-DD'),
  note: z.string().max(4000).default(''),
  usd_per_second: z.record(gpuSchema, z.number().finite().min(0).max(1)),
  /**
   * Modal bills CPU and memory on GPU containers too. The Modal backend runs each call with these limits, and every
   * second of a Modal protocol is priced with them added (PricingSnapshot.usdPerSecond): an upper bound.
   */
  modal_container: z
    .strictObject({
      note: z.string().max(4000).default(''),
      cpu_cores: z.number().finite().min(0.125).max(64),
      memory_gib: z.number().finite().min(0.125).max(1024),
      usd_per_core_second: z.number().finite().min(0).max(1),
      usd_per_gib_second: z.number().finite().min(0).max(1),
    })
    .optional(),
});

/** A roster file (see `people`): the same name -> public key object as inline. */
export const rosterSchema = z.record(person, publicKey);
export type PricingTable = z.infer<typeof pricingSchema>;
