/**
 * Builds the runtime's RunSpec (runtime/SPEC.md) from a protocol and its locked prompt texts. Pure: the caller
 * reads the files and checks their hashes.
 */
import type { ModelSpec, Numerics, Protocol } from '../protocols/schema';

export interface PromptTexts {
  harmful: string[];
  harmless: string[];
  eval: string[];
}

export interface RunSpec {
  spec_version: 2;
  phase_id: string;
  model_key: string;
  model: {
    id: string;
    revision: string | null;
    dtype: ModelSpec['dtype'];
    device: 'cpu' | 'cuda' | 'auto';
    attn_implementation: ModelSpec['attn_implementation'];
    tiny_seed: number;
  };
  site: { layer: number; position: number };
  steering: { alpha: number; min_changed_fraction: number };
  /** Every switch that changes numerics, copied from the protocol: part of the spec hash. */
  numerics: Numerics;
  generation: { max_new_tokens: number; batch_size: number };
  methods: Protocol['methods'];
  repeats: number;
  seed: number;
  deterministic: boolean;
  prompts: PromptTexts;
  classification: Protocol['classification'];
  cache_dir: string;
}

export function buildRunSpec(args: {
  phaseId: string;
  protocol: Protocol;
  model: ModelSpec;
  prompts: PromptTexts;
  cacheDir: string;
}): RunSpec {
  const { protocol: p, model: m } = args;
  return {
    spec_version: 2,
    phase_id: args.phaseId,
    model_key: m.key,
    model: {
      id: m.id,
      revision: m.revision,
      dtype: m.dtype,
      // A GPU type in the protocol means CUDA wherever the runtime runs; "cpu" means this machine's CPU.
      device: m.gpu === 'cpu' ? 'cpu' : 'cuda',
      attn_implementation: m.attn_implementation,
      tiny_seed: m.tiny_seed,
    },
    site: { layer: p.site.layer, position: p.site.position },
    steering: { alpha: p.steering.alpha, min_changed_fraction: p.steering.min_changed_fraction },
    numerics: { decoder: p.numerics.decoder, fused_kernels: p.numerics.fused_kernels, cuda_graphs: p.numerics.cuda_graphs, grouped_eager: p.numerics.grouped_eager },
    generation: { max_new_tokens: p.sampling.max_new_tokens, batch_size: p.sampling.batch_size },
    methods: p.methods,
    repeats: p.repeats,
    seed: p.seed,
    deterministic: p.deterministic,
    prompts: args.prompts,
    classification: p.classification,
    cache_dir: args.cacheDir,
  };
}
