/** The phase's pure state transitions, without a server: gates, de-duplication, ledger and budget arithmetic. */
import type { PhaseInput, PhaseState } from '../workflows/definitions';
import {
  attemptTimeoutSeconds,
  applyApproveBudget,
  applyRejectBudget,
  checkBudget,
  costUsd,
  initialState,
  ledgerEntryFor,
  retryDelaySeconds,
  spentUsd,
  validateApproveBudget,
  validateRejectBudget,
  validateSubmitReview,
} from '../workflows/phase-logic';
import { estimatePhase, type CalibrationPoint, workOf } from '../activities/estimate';
import { testProtocol } from './helpers/temporal';

const loaded = testProtocol('logic');
const protocol = loaded.protocol;
const input: PhaseInput = {
  phaseId: loaded.phaseId,
  protocol,
  protocolHash: loaded.protocolHash,
  protocolPath: loaded.protocolPath,
  prompts: loaded.prompts,
  pricing: loaded.pricing,
};
const ESTIMATE = { models: [], totalUsd: 0.5 };
/** A phase at its budget gate with its estimate computed. */
const fresh = (): PhaseState => ({ ...initialState(input, '2026-01-01T00:00:00.000Z'), estimate: ESTIMATE });
const NOW = '2026-01-01T01:00:00.000Z';

describe('budget gate', () => {
  test('refuses unlisted approvers, bad amounts and the wrong state, naming the reason', () => {
    const s = fresh();
    expect(validateApproveBudget(s, protocol, { by: 'eve', usd: 1 })).toMatch(/approver "eve" is not listed .*\(demo-approver\)/);
    expect(validateApproveBudget(s, protocol, { by: 'demo-approver', usd: 0 })).toMatch(/positive, finite/);
    expect(validateApproveBudget(s, protocol, { by: 'demo-approver', usd: Number.NaN })).toMatch(/positive, finite/);
    expect(validateApproveBudget(s, protocol, { by: 'demo-approver', usd: 1 })).toBeNull();
    s.status = 'RUNNING';
    expect(validateApproveBudget(s, protocol, { by: 'demo-approver', usd: 2 })).toMatch(/the phase is RUNNING/);
  });

  test('an approval waits for the estimate', () => {
    const s = initialState(input, '2026-01-01T00:00:00.000Z');
    expect(validateApproveBudget(s, protocol, { by: 'demo-approver', usd: 1 })).toMatch(/estimate is not ready/);
  });

  test('a restart carries the earlier run\'s ledger, so its spend counts against the new approval', () => {
    const earlier = ledgerEntryFor({ modelKey: 'tiny-qwen2', attempt: 1, gpu: 'A10G', usdPerSecond: 0.001, outcome: 'cancelled', measuredSeconds: 100, startedAtMs: 0, endedAtMs: 0, backendIds: {} });
    const s = initialState({ ...input, priorLedger: [earlier] }, NOW);
    expect(s.ledger).toEqual([{ ...earlier, earlierRun: true }]);
    expect(s.events[0]!.message).toContain('carried over');
    s.budget.approvedUsd = 0.15;
    expect(checkBudget(s, 0.06)).toMatchObject({ ok: false, spentUsd: 0.1 });
  });

  test('a hold is released only by a larger total', () => {
    const s = fresh();
    applyApproveBudget(s, { by: 'demo-approver', usd: 1 }, NOW);
    s.status = 'BUDGET_HOLD';
    expect(validateApproveBudget(s, protocol, { by: 'demo-approver', usd: 0.5 })).toMatch(/must exceed the approved \$1.00/);
    expect(validateApproveBudget(s, protocol, { by: 'demo-approver', usd: 2 })).toBeNull();
  });

  test('the same decision twice is acknowledged and applied once', () => {
    const s = fresh();
    expect(applyApproveBudget(s, { by: 'demo-approver', usd: 1, note: 'a' }, NOW).applied).toBe(true);
    s.status = 'AWAITING_REVIEW';
    // Not refused (the caller resent it), not applied again.
    expect(validateApproveBudget(s, protocol, { by: 'demo-approver', usd: 1, note: 'b' })).toBeNull();
    expect(applyApproveBudget(s, { by: 'demo-approver', usd: 1, note: 'b' }, NOW).applied).toBe(false);
    expect(s.budget.approvals).toHaveLength(1);
  });

  test('a rejection needs a reason and an open budget gate', () => {
    const s = fresh();
    expect(validateRejectBudget(s, protocol, { by: 'demo-approver', reason: '' })).toMatch(/reason/);
    applyRejectBudget(s, { by: 'demo-approver', reason: 'no' }, NOW);
    expect(s.budget.rejection).toEqual({ by: 'demo-approver', reason: 'no', at: NOW });
  });
});

test('the review gate accepts only listed reviewers, known verdicts, in AWAITING_REVIEW', () => {
  const s = fresh();
  expect(validateSubmitReview(s, protocol, { by: 'demo-reviewer', verdict: 'APPROVED' })).toMatch(/only in AWAITING_REVIEW/);
  s.status = 'AWAITING_REVIEW';
  expect(validateSubmitReview(s, protocol, { by: 'x', verdict: 'APPROVED' })).toMatch(/reviewer "x" is not listed/);
  expect(validateSubmitReview(s, protocol, { by: 'demo-reviewer', verdict: 'MAYBE' as 'APPROVED' })).toMatch(/verdict must be one of/);
  expect(validateSubmitReview(s, protocol, { by: 'demo-reviewer', verdict: 'ADVISED' })).toBeNull();
});

describe('ledger and budget check', () => {
  test('charges measured seconds when known, the observed wall time otherwise', () => {
    const base = { modelKey: 'm', attempt: 1, gpu: 'A10G', usdPerSecond: 0.000306, startedAtMs: 0, endedAtMs: 100_000, backendIds: {} };
    expect(ledgerEntryFor({ ...base, outcome: 'succeeded', measuredSeconds: 60 })).toMatchObject({ seconds: 60, usd: 0.01836, secondsBasis: 'measured' });
    expect(ledgerEntryFor({ ...base, outcome: 'timed_out', measuredSeconds: null })).toMatchObject({ seconds: 100, usd: 0.0306, secondsBasis: 'observed' });
  });

  test('holds when spent plus the next estimate exceeds the approval, and failed attempts count', () => {
    const s = fresh();
    s.budget.approvedUsd = 15;
    const entry = (usd: number, outcome: 'failed' | 'succeeded') => ({ ...ledgerEntryFor({ modelKey: 'm', attempt: 1, gpu: 'A100-40GB', usdPerSecond: 1, outcome, measuredSeconds: usd, startedAtMs: 0, endedAtMs: 0, backendIds: {} }) });
    s.ledger.push(entry(10, 'failed'));
    expect(spentUsd(s.ledger)).toBe(10);
    expect(checkBudget(s, 5).ok).toBe(true);
    expect(checkBudget(s, 5.000001)).toMatchObject({ ok: false, spentUsd: 10, neededUsd: 15.000001 });
    // The seed's overrun: $43 spent against a $15 cap cannot happen silently.
    s.ledger.push(entry(33, 'succeeded'));
    expect(checkBudget(s, 0.01).ok).toBe(false);
  });

  test('an attempt may not outlive the budget left, but gets at least a minute', () => {
    expect(attemptTimeoutSeconds(60, 100, 0.001)).toBe(3600);
    expect(attemptTimeoutSeconds(60, 1, 0.001)).toBe(1000);
    expect(attemptTimeoutSeconds(60, 0.001, 0.001)).toBe(60);
    expect(attemptTimeoutSeconds(10, 5, 0)).toBe(600);
  });

  test('cost and back-off arithmetic', () => {
    expect(costUsd(3600, 0.000583)).toBe(2.0988);
    expect(costUsd(-5, 1)).toBe(0);
    expect([2, 3, 4].map((a) => retryDelaySeconds({ max_attempts: 5, initial_interval_seconds: 10, backoff_coefficient: 2 }, a))).toEqual([10, 20, 40]);
  });
});

describe('estimate', () => {
  test('uses the protocol prior, then calibrates from the slowest matching frozen run with a margin', () => {
    const prior = estimatePhase(protocol, loaded.pricing.usdPerSecond, []);
    expect(prior.models.map((m) => [m.modelKey, m.gpuSeconds, m.basis])).toEqual([
      ['tiny-qwen2', 100, 'protocol'],
      ['tiny-llama', 100, 'protocol'],
    ]);
    expect(prior.totalUsd).toBeCloseTo(200 * 0.0000262, 10);

    const work = workOf(protocol);
    const points: CalibrationPoint[] = [
      { phaseId: 'old-1', modelId: 'tiny:qwen2', gpu: 'cpu', work, seconds: 20 },
      { phaseId: 'old-2', modelId: 'tiny:qwen2', gpu: 'cpu', work: work * 2, seconds: 60 },
      { phaseId: 'other-gpu', modelId: 'tiny:qwen2', gpu: 'A10G', work, seconds: 999 },
    ];
    const calibrated = estimatePhase(protocol, loaded.pricing.usdPerSecond, points);
    expect(calibrated.models[0]).toMatchObject({ modelKey: 'tiny-qwen2', basis: 'calibrated', gpuSeconds: 37.5 });
    expect(calibrated.models[0]!.basisDetail).toContain('old-2');
    expect(calibrated.models[1]!.basis).toBe('protocol');
  });
});
