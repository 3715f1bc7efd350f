/**
 * The closeout report and its pictures are pure functions of the phase data: checked here without a server. The
 * runtime's score.json (v2) is read through the same parser the scoring activity uses.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { costChart, parityChart } from '../activities/charts';
import { renderCloseout } from '../activities/closeout-report';
import { parseRuntimeScore, RuntimeOutputError, toModelScores } from '../activities/runtime-json';
import type { ModelScore, PhaseState } from '../workflows/definitions';
import { applyApproveBudget, gateContext, initialState, ledgerEntryFor } from '../workflows/phase-logic';
import { sign, TEST_RUN } from './helpers/decisions';
import { testProtocol } from './helpers/temporal';
import { phaseInputOf } from '../protocols/load';

const loaded = testProtocol('closeout');
const input = phaseInputOf(loaded);
const rate = (mean: number) => ({ mean, std: 0 });
const failing: ModelScore = {
  modelKey: 'tiny-qwen2',
  methods: {
    hooks: { nOk: 1, coherent: rate(1), garbled: rate(0), normal: rate(0), withinMethodCosineMin: 1 },
    nnsight: { nOk: 0, coherent: { mean: null, std: null }, garbled: { mean: null, std: null }, normal: { mean: null, std: null }, withinMethodCosineMin: null },
  },
  pairs: [{ a: 'hooks', b: 'nnsight', cosine: null, l2: null }],
  outputsIdentical: false,
  parityPass: false,
  methodsPassing: ['hooks'],
};

function frozenState(models: ModelScore[] = [failing], phaseInput = input): PhaseState {
  const s = { ...initialState(phaseInput, '2026-01-01T00:00:00.000Z'), estimate: { models: [], totalUsd: 0.5 } };
  applyApproveBudget(gateContext(phaseInput, TEST_RUN), s, sign('demo-approver', { kind: 'approve-budget', phaseId: phaseInput.phaseId, protocolHash: phaseInput.protocolHash, run: TEST_RUN, content: { usd: '1', note: '' } }), '2026-01-01T00:01:00.000Z');
  s.status = 'FROZEN';
  s.ledger.push(ledgerEntryFor({ modelKey: 'tiny-qwen2', attempt: 1, gpu: 'cpu', usdPerSecond: 0.0000262, outcome: 'failed', measuredSeconds: 10, startedAtMs: 0, endedAtMs: 10_000, backendIds: {}, error: 'CUDA out of memory' }));
  s.ledger.push(ledgerEntryFor({ modelKey: 'tiny-qwen2', attempt: 2, gpu: 'cpu', usdPerSecond: 0.0000262, outcome: 'succeeded', measuredSeconds: 30, startedAtMs: 20_000, endedAtMs: 50_000, backendIds: {} }));
  s.score = { models, parityPass: models.every((m) => m.parityPass), scorePath: '/tmp/score.json' };
  return s;
}

const render = (models: ModelScore[], phaseInput = input): string =>
  renderCloseout({ freeze: { input: phaseInput, state: frozenState(models, phaseInput) }, generatedAt: '2026-01-01T02:00:00.000Z', gitCommit: 'abc123', gitDirty: false, models: [] });

/** One model's entry of a score.json v2 as the runtime writes it: every proof check passing. */
function scoreModelJson(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const method = { n_ok: 1, repeats: 1, coherent: rate(0.5), garbled: rate(0), normal: rate(0.5), within_method_cosine_min: 1, changed_fraction: rate(0.5) };
  const native = { ok: true, error: null, tokens_identical: true, read_cosine: 0.9999999, wall_s: 1.25 };
  return {
    methods: { hooks: method, nnsight: method },
    pairs: [{ a: 'hooks', b: 'nnsight', cosine: 1, l2: 0, outputs_identical: true, texts_identical: true, within_thresholds: true }],
    outputs_identical: true,
    parity_pass: true,
    reference_method: 'hooks',
    methods_passing: ['hooks', 'nnsight'],
    reference: { ok: true, error: null, methods: { hooks: { cosine: 1, l2: 0, within_thresholds: true }, nnsight: { cosine: 0.99999999, l2: 1.5e-7, within_thresholds: true } } },
    steering: { site_exact: true, max_abs_error: 0, forward_passes: 14, positions: 1234, unsteered_max_abs_error: 0, changed_fraction_min: 0.5, min_changed_fraction: 0.1, visible: true },
    native: { all_identical: true, methods: { hooks: native, nnsight: native } },
    integrity: { ok: true, problems: [] },
    numerics: { decoder: 'fast', fused_kernels: false, cuda_graphs: false, grouped_eager: true },
    failures: [],
    ...overrides,
  };
}

function scoreFile(models: Record<string, unknown>, version = 2): string {
  const file = path.join(mkdtempSync(path.join(os.tmpdir(), 'phasegate-score-')), 'score.json');
  writeFileSync(file, JSON.stringify({ score_version: version, parity: { min_cosine: 0.999999, max_l2: 1e-5 }, models, closure: [] }));
  return file;
}

/** No element may repeat an attribute: SVG viewers reject the whole picture if one does. */
function expectWellFormedTags(svg: string): void {
  for (const tag of svg.match(/<[a-z][^>]*>/g) ?? []) {
    const names = [...tag.matchAll(/\s([a-z-]+)="/g)].map((m) => m[1]);
    expect(new Set(names).size).toBe(names.length);
  }
  expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
}

test('a parity failure is reported as a result, with the unmeasured pair shown and not hidden', () => {
  const report = renderCloseout({ freeze: { input, state: frozenState() }, generatedAt: '2026-01-01T02:00:00.000Z', gitCommit: 'abc123', gitDirty: true, models: [] });
  expect(report).toContain('**Phase parity_pass: false** — parity FAILED; this is a result, recorded and frozen as such.');
  expect(report).toContain('| hooks ↔ nnsight | n/a | n/a | n/a |');
  expect(report).toContain('| tiny-qwen2 | 1/2 | false |');
  expect(report).toContain('(working tree DIRTY: uncommitted changes were present)');
  expect(report).toMatch(/\| tiny-qwen2 \| 1 \| cpu \| 10\.0 \| measured \| \$0\.0003 \| failed \(CUDA out of memory\) \|/);
  expect(report).toContain('charged $0.0010 over 2 attempt(s)');
});

test('a score recorded before score v2 says its proof checks were not recorded, and labels its comparison as texts', () => {
  const report = render([failing]);
  expect(report).toContain('**Proof checks (tiny-qwen2)**\n\n_proof checks not recorded (scored before score v2)_');
  expect(report).toContain('Steered outputs (decoded texts) identical across methods: **false**');
  expect(report).not.toContain('parity_pass is false because');
});

test('score v2: the closeout carries its proof checks, read from score.json through the runtime contract', () => {
  const [model] = toModelScores(parseRuntimeScore(scoreFile({ 'tiny-qwen2': scoreModelJson() })));
  expect(model).toMatchObject({ modelKey: 'tiny-qwen2', parityPass: true, failures: [], numerics: { decoder: 'fast', fusedKernels: false, cudaGraphs: false, groupedEager: true } });
  const report = render([model!]);
  expect(report).toContain('Steered token ids identical across methods: **true**');
  expect(report).toContain('| hooks ↔ nnsight | 1.0000000000 | 0.000e+0 | true |');
  expect(report).toContain(
    '- Steering at the site: steered residual − unsteered = alpha × direction (alpha 3) at every position of every forward pass: **exact** (14 forward passes, 1234 positions, max abs error 0.000e+0)',
  );
  expect(report).toContain('- Unsteered passes (baseline, direction reads) unchanged: max abs error 0.000e+0');
  expect(report).toContain('- Visible effect: min changed fraction 50.0% (required ≥ 10.0% of eval prompts)');
  expect(report).toContain('- Numerics as run: decoder fast, fused kernels off, CUDA graphs off, grouped eager on');
  // A GPU run in the default mode says which fused pieces ran: the exact ones, not "on" like every piece.
  const numerics = { decoder: 'fast', fused_kernels: true, fused_mode: 'exact', cuda_graphs: true, grouped_eager: true };
  const [onGpu] = toModelScores(parseRuntimeScore(scoreFile({ 'tiny-qwen2': scoreModelJson({ numerics }) })));
  expect(render([onGpu!])).toContain('- Numerics as run: decoder fast, fused kernels exact, CUDA graphs on, grouped eager on');
  expect(report).toMatch(/Independent reference direction \(computed from output_hidden_states by code that shares nothing with the methods\), worst over repeats: \*\*ok\*\*/);
  expect(report).toContain('| Method | cosine (min) | L2 (max) | within thresholds |');
  expect(report).toContain('| nnsight | 0.9999999900 | 1.500e-7 | true |');
  expect(report).toContain('| Method | tokens identical | read cosine without explicit position_ids | wall s | error |');
  expect(report).toContain('| hooks | true | 0.9999999000 | 1.3 | — |');
  expect(report).toContain('Integrity checks: **ok**');
  expect(report).toContain('| hooks | 1 | 50.0% ± 0.0 | 0.0% ± 0.0 | 50.0% ± 0.0 | 50.0% ± 0.0 | 1.0000000000 |');
  expect(report).not.toContain('parity_pass is false because');
  expect(report).not.toContain('not recorded');
});

test('score v2: a failed parity lists every reason, and steering without visible effect is said per model', () => {
  const json = scoreModelJson({
    parity_pass: false,
    steering: { site_exact: false, max_abs_error: 0.5, forward_passes: 14, positions: 1234, unsteered_max_abs_error: 1e-3, changed_fraction_min: 0, min_changed_fraction: 0.1, visible: false },
    reference: { ok: false, error: 'hidden_states | shape mismatch', methods: {} },
    native: { all_identical: false, methods: { hooks: { ok: false, error: 'generate raised RuntimeError', tokens_identical: false, read_cosine: null, wall_s: null } } },
    integrity: { ok: false, problems: ['hooks repeat 0: direction file missing'] },
    failures: ['steering at the site is not exact (max abs error 5.000e-1)', 'native cross-check: hooks tokens differ'],
  });
  const report = render(toModelScores(parseRuntimeScore(scoreFile({ 'tiny-qwen2': json }))));
  expect(report).toContain('**NOT exact** (14 forward passes, 1234 positions, max abs error 5.000e-1)');
  expect(report).toContain('- **steering had no visible effect on tiny-qwen2**: min changed fraction 0.0% (required ≥ 10.0% of eval prompts); this does not fail parity');
  expect(report).toContain('worst over repeats: **FAILED** — hidden_states \\| shape mismatch');
  expect(report).toContain('_no method compared_');
  expect(report).toContain('| hooks | not run | n/a | n/a | generate raised RuntimeError |');
  expect(report).toContain('Integrity problems:\n\n- hooks repeat 0: direction file missing');
  expect(report).toContain('parity_pass is false because:\n\n- steering at the site is not exact (max abs error 5.000e-1)\n- native cross-check: hooks tokens differ');
  expect(report).toContain('**Phase parity_pass: false**');
});

test('a score.json that is not v2, or lacks a proof check, is refused as a broken contract', () => {
  expect(() => parseRuntimeScore(scoreFile({ 'tiny-qwen2': scoreModelJson() }, 1))).toThrow(RuntimeOutputError);
  const { steering: _steering, ...withoutSteering } = scoreModelJson();
  expect(() => parseRuntimeScore(scoreFile({ 'tiny-qwen2': withoutSteering }))).toThrow(/models\.tiny-qwen2\.steering/);
});

test('the lock shows numerics and min_changed_fraction; class definitions and the scope of the claim come from the protocol', () => {
  const gpu = testProtocol('closeout-gpu', {
    backend: 'modal',
    models: [
      { key: 'qwen-7b', id: 'Qwen/Qwen2.5-7B-Instruct', gpu: 'A10G', dtype: 'bfloat16', expected_gpu_seconds: 100 },
      { key: 'tiny-qwen2', id: 'tiny:qwen2', gpu: 'A10G', dtype: 'float32', expected_gpu_seconds: 100 },
    ],
    steering: { alpha: 3, min_changed_fraction: 0.25 },
    numerics: { decoder: 'fast', fused_kernels: 'on', cuda_graphs: false, grouped_eager: true },
  });
  const report = render([failing], phaseInputOf(gpu));
  expect(report).toContain('| Steering alpha | 3; min_changed_fraction 0.25 (the fraction of eval prompts whose token ids must change for steering to count as visible; it does not gate parity) |');
  expect(report).toContain('| Numerics | decoder fast, fused kernels on, CUDA graphs off, grouped eager on |');
  expect(report).toContain(
    "*garbled* = changed, and any of: repeated 3-gram fraction > 0.5, distinct-token fraction < 0.2, non-printable character fraction (U+FFFD counts as non-printable) > 0.1, or empty",
  );
  expect(report).toContain("*normal* = the steered token ids equal the baseline's (rule `exact_match`)");
  expect(report).toContain("These are phasegate's rules, not the seed closeout's labels; the rates are not comparable with its 93.3 % / 6.7 %.");
  expect(report).toContain('Repeats are deterministic replicas of one computation (deterministic mode, fixed seed 1234): std 0 is expected by construction, not a measured stability.');
  const limitations = report.slice(report.indexOf('## 8. Limitations'), report.indexOf('## 9.'));
  expect(limitations).toContain(
    "1. **Scope of the claim:** all fast units decode with phasegate's static-cache greedy decoder (CUDA graphs off, fused kernels on, grouped eager on); only repeat 0 of each method is also generated through the library's own generation path on transformers' generate (the native cross-check).",
  );
  expect(limitations).toContain("2. **Scope of the claim:** every method's activation reads pass explicit position_ids counted from each row's first real token; the native cross-check reports the cosine without them.");
  expect(limitations).toContain("3. **Scope of the claim:** cosines and L2 are computed in float64 from float32 unit vectors of bfloat16 (qwen-7b), float32 (tiny-qwen2) activations; the seed's figures were float32.");
  expect(limitations).toContain('4. **Scope of the claim:** the site check sees the residual between blocks');
  expect(limitations).toContain('5. Tiny random-weight models');
});

test('the default numerics enter the lock table and the scope of the claim', () => {
  const report = render([failing]);
  expect(input.protocol.numerics).toEqual({ decoder: 'fast', fused_kernels: 'exact', cuda_graphs: true, grouped_eager: true });
  expect(input.protocol.steering.min_changed_fraction).toBe(0.1);
  expect(report).toContain('| Numerics | decoder fast, fused kernels exact, CUDA graphs on, grouped eager on |');
  expect(report).toContain('(CUDA graphs on, fused kernels exact (bit-exact pieces, CUDA only), grouped eager on)');
  expect(report).toContain('float32 unit vectors of float32 activations');
});

test('the pictures are well-formed SVG and mark failed attempts and failed parity in red', () => {
  const state = frozenState();
  const parity = parityChart(state.score!.models, 0.999999);
  expectWellFormedTags(parity);
  expect(parity).toContain('fill="#c62828"');
  const cost = costChart([{ modelKey: 'tiny-qwen2', estimateUsd: 0.002, ledger: state.ledger }], 1);
  expectWellFormedTags(cost);
  expect(cost).toContain('attempt 1: failed');
  expect(cost.match(/fill="#c62828"><title>/g)).toHaveLength(1);
});
