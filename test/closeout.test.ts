/** The closeout report and its pictures are pure functions of the phase data: checked here without a server. */
import { costChart, parityChart } from '../activities/charts';
import { renderCloseout } from '../activities/closeout-report';
import type { ModelScore, PhaseState } from '../workflows/definitions';
import { applyApproveBudget, gateContext, initialState, ledgerEntryFor } from '../workflows/phase-logic';
import { sign } from './helpers/decisions';
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

function frozenState(): PhaseState {
  const s = { ...initialState(input, '2026-01-01T00:00:00.000Z'), estimate: { models: [], totalUsd: 0.5 } };
  applyApproveBudget(gateContext(input), s, sign('demo-approver', { kind: 'approve-budget', phaseId: input.phaseId, protocolHash: input.protocolHash, content: { usd: '1', note: '' } }), '2026-01-01T00:01:00.000Z');
  s.status = 'FROZEN';
  s.ledger.push(ledgerEntryFor({ modelKey: 'tiny-qwen2', attempt: 1, gpu: 'cpu', usdPerSecond: 0.0000262, outcome: 'failed', measuredSeconds: 10, startedAtMs: 0, endedAtMs: 10_000, backendIds: {}, error: 'CUDA out of memory' }));
  s.ledger.push(ledgerEntryFor({ modelKey: 'tiny-qwen2', attempt: 2, gpu: 'cpu', usdPerSecond: 0.0000262, outcome: 'succeeded', measuredSeconds: 30, startedAtMs: 20_000, endedAtMs: 50_000, backendIds: {} }));
  s.score = { models: [failing], parityPass: false, scorePath: '/tmp/score.json' };
  return s;
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
  expect(report).toContain('| hooks ↔ nnsight | n/a | n/a |');
  expect(report).toContain('| tiny-qwen2 | 1/2 | false |');
  expect(report).toContain('(working tree DIRTY: uncommitted changes were present)');
  expect(report).toMatch(/\| tiny-qwen2 \| 1 \| cpu \| 10\.0 \| measured \| \$0\.0003 \| failed \(CUDA out of memory\) \|/);
  expect(report).toContain('charged $0.0010 over 2 attempt(s)');
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
