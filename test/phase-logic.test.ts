/** The phase's pure state transitions, without a server: gates, de-duplication, ledger and budget arithmetic. */
import type { PhaseInput, PhaseState } from '../workflows/definitions';
import { sign as nodeSign } from 'node:crypto';
import fc from 'fast-check';
import {
  attemptGrantUsd,
  attemptReserveUsd,
  attemptTimeoutSeconds,
  attemptWindow,
  applyApproveBudget,
  MIN_ATTEMPT_SECONDS,
  applyRejectBudget,
  checkBudget,
  costUsd,
  gateContext,
  initialState,
  ledgerEntryFor,
  ledgerEntryForWindows,
  lockHashOf,
  MAX_RETRY_DELAY_SECONDS,
  mayHaveLaunched,
  retryDelaySeconds,
  spentUsd,
  startInputProblem,
  validateApproveBudget,
  validateRejectBudget,
  validateSubmitReview,
} from '../workflows/phase-logic';
import { decisionMessage, type ReviewVerdict } from '../domain/decisions';
import { usdToMicros } from '../domain/money';
import { signDecision } from '../client/keys';
import { keyOf, sign, TEST_RUN } from './helpers/decisions';
import { phaseInputOf } from '../protocols/load';
import { estimatePhase, readCalibration, type CalibrationPoint, workOf } from '../activities/estimate';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { testProtocol } from './helpers/temporal';

const loaded = testProtocol('logic');
const protocol = loaded.protocol;
const input: PhaseInput = phaseInputOf(loaded);
const ESTIMATE = { models: [], totalUsd: 0.5 };
/** A phase at its budget gate with its estimate computed. */
const fresh = (): PhaseState => ({ ...initialState(input, '2026-01-01T00:00:00.000Z'), estimate: ESTIMATE, run: TEST_RUN });
const NOW = '2026-01-01T01:00:00.000Z';

const ctx = gateContext(input, TEST_RUN);
const target = { phaseId: input.phaseId, protocolHash: input.protocolHash, run: TEST_RUN };
const approval = (by: string, usd: string, note = '', as = by) => sign(by, { kind: 'approve-budget', ...target, content: { usd, note } }, as);
const reviewBy = (by: string, verdict: ReviewVerdict) => sign(by, { kind: 'review', ...target, content: { verdict, ref: '', notes: '' } });

describe('budget gate', () => {
  test('refuses unlisted approvers, bad amounts, amounts past the cap and the wrong state, naming the reason', () => {
    const s = fresh();
    expect(validateApproveBudget(ctx, s, approval('eve', '1', '', 'mallory'))).toMatch(/approver "eve" is not listed .*\(demo-approver, second-approver\)/);
    for (const usd of ['0', '-5', '0x10', '0b11', '5e-324', '1e308', 'Infinity', 'NaN', '1.0000001', ' 1', '']) {
      expect(validateApproveBudget(ctx, s, approval('demo-approver', usd))).toMatch(/^content\.usd: /);
    }
    expect(validateApproveBudget(ctx, s, approval('demo-approver', '150'))).toMatch(/exceeds the protocol's budget.cap_usd \$5.00; the cap is a protocol field/);
    expect(validateApproveBudget(ctx, s, approval('demo-approver', '5'))).toBeNull();
    expect(validateApproveBudget(ctx, s, approval('demo-approver', '1'))).toBeNull();
    s.status = 'RUNNING';
    expect(validateApproveBudget(ctx, s, approval('demo-approver', '2'))).toMatch(/the phase is RUNNING/);
  });

  test('an approval waits for the estimate', () => {
    const s = initialState(input, '2026-01-01T00:00:00.000Z');
    expect(validateApproveBudget(ctx, s, approval('demo-approver', '1'))).toMatch(/estimate is not ready/);
  });

  test('a restart carries the earlier run\'s ledger, so its spend counts against the new approval', () => {
    const earlier = ledgerEntryFor({ modelKey: 'tiny-qwen2', attempt: 1, gpu: 'A10G', usdPerSecond: 0.001, outcome: 'cancelled', measuredSeconds: 100, startedAtMs: 0, endedAtMs: 0, backendIds: {} });
    const s = initialState({ ...input, priorLedger: [earlier] }, NOW);
    expect(s.ledger).toEqual([{ ...earlier, earlierRun: true }]);
    expect(s.events[0]!.message).toContain('carried over');
    s.budget.approvedMicros = 150_000;
    expect(checkBudget(s, 0.06)).toMatchObject({ ok: false, spentUsd: 0.1 });
  });

  test('a hold is released only by a larger total', () => {
    const s = fresh();
    applyApproveBudget(ctx, s, approval('demo-approver', '1'), NOW);
    s.status = 'BUDGET_HOLD';
    expect(validateApproveBudget(ctx, s, approval('demo-approver', '0.5'))).toMatch(/must exceed the approved \$1.00/);
    expect(validateApproveBudget(ctx, s, approval('demo-approver', '2'))).toBeNull();
  });

  test('the same decision twice is acknowledged and applied once, even re-signed with a new nonce', () => {
    const s = fresh();
    const first = approval('demo-approver', '1', 'a');
    expect(applyApproveBudget(ctx, s, first, NOW).applied).toBe(true);
    s.status = 'AWAITING_REVIEW';
    // Not refused (the caller resent it), not applied again.
    expect(validateApproveBudget(ctx, s, first)).toBeNull();
    expect(applyApproveBudget(ctx, s, first, NOW).applied).toBe(false);
    const resigned = approval('demo-approver', '1', 'b');
    expect(validateApproveBudget(ctx, s, resigned)).toBeNull();
    expect(applyApproveBudget(ctx, s, resigned, NOW).applied).toBe(false);
    expect(s.budget.approvals).toHaveLength(1);
    expect(s.budget.approvals[0]).toMatchObject({ by: 'demo-approver', usd: 1, usdMicros: 1_000_000, note: 'a' });
    expect(s.budget.approvals[0]!.signature.keyFingerprint).toMatch(/^ed25519:[0-9a-f]{16}$/);
  });

  test('a rejection needs a reason and an open budget gate', () => {
    const s = fresh();
    expect(validateRejectBudget(ctx, s, sign('demo-approver', { kind: 'reject-budget', ...target, content: { reason: ' ' } }))).toMatch(/content.reason: must not be empty/);
    applyRejectBudget(ctx, s, sign('demo-approver', { kind: 'reject-budget', ...target, content: { reason: 'no' } }), NOW);
    expect(s.budget.rejection).toMatchObject({ by: 'demo-approver', reason: 'no', at: NOW });
  });
});

describe('forged decisions are refused with their reason', () => {
  const s = fresh();
  const good = approval('demo-approver', '1');
  test('unsigned, or with a signature from another key', () => {
    const { signature: _, ...unsigned } = good;
    expect(validateApproveBudget(ctx, s, unsigned)).toMatch(/^signature: missing/);
    expect(validateApproveBudget(ctx, s, { by: 'demo-approver', usd: 1 })).toMatch(/^decision: unknown field "usd"/);
    expect(validateApproveBudget(ctx, s, null)).toMatch(/^decision: must be a signed decision object/);
    expect(validateApproveBudget(ctx, s, approval('demo-approver', '1', '', 'mallory'))).toMatch(/^signature: does not verify with demo-approver's key/);
    expect(validateApproveBudget(ctx, s, approval('demo-approver', '1', '', 'demo-reviewer'))).toMatch(/^signature: does not verify/);
  });
  test('altered after signing: amount, signer, note, kind', () => {
    expect(validateApproveBudget(ctx, s, { ...good, content: { ...good.content, usd: '4' } })).toMatch(/^signature: does not verify/);
    expect(validateApproveBudget(ctx, s, { ...good, by: 'second-approver' })).toMatch(/^signature: does not verify/);
    expect(validateApproveBudget(ctx, s, { ...good, content: { ...good.content, note: 'x' } })).toMatch(/^signature: does not verify/);
    expect(validateRejectBudget(ctx, s, { ...good, kind: 'reject-budget' })).toMatch(/^content: unknown field/);
    const flipped = Buffer.from(good.signature, 'base64');
    flipped[10] = flipped[10]! ^ 1;
    expect(validateApproveBudget(ctx, s, { ...good, signature: flipped.toString('base64') })).toMatch(/^signature: does not verify/);
  });
  test('signed for another phase or another protocol version', () => {
    const other = sign('demo-approver', { kind: 'approve-budget', phaseId: 'other-phase-0123456789ab', protocolHash: input.protocolHash, run: TEST_RUN, content: { usd: '1', note: '' } });
    expect(validateApproveBudget(ctx, s, other)).toMatch(/signed for phase other-phase-0123456789ab/);
    expect(validateApproveBudget(ctx, s, { ...other, phaseId: input.phaseId })).toMatch(/^signature: does not verify/);
    const oldHash = sign('demo-approver', { kind: 'approve-budget', phaseId: input.phaseId, protocolHash: 'a'.repeat(64), run: TEST_RUN, content: { usd: '1', note: '' } });
    expect(validateApproveBudget(ctx, s, oldHash)).toMatch(/not for this phase/);
  });
  test('a nonce used by another decision is a replay', () => {
    const t = fresh();
    applyApproveBudget(ctx, t, good, NOW);
    t.status = 'BUDGET_HOLD';
    const reuse = signDecision(keyOf('demo-approver'), { kind: 'approve-budget', ...target, by: 'demo-approver', content: { usd: '2', note: '' } });
    const replay = { ...reuse, nonce: good.nonce };
    // Re-sign with the reused nonce so that only the nonce is wrong.
    const resigned = { ...replay, signature: nodeSign(null, decisionMessage(replay), keyOf('demo-approver')).toString('base64') };
    expect(validateApproveBudget(ctx, t, resigned)).toMatch(/^nonce: already used by another decision/);
  });
  test('a decision signed more than a day ago, or in the future, is stale', () => {
    const now = Date.parse(good.signedAt);
    expect(validateApproveBudget(ctx, s, good, now + 23 * 3_600_000)).toBeNull();
    expect(validateApproveBudget(ctx, s, good, now + 25 * 3_600_000)).toMatch(/^signedAt: signed more than 24 h ago/);
    expect(validateApproveBudget(ctx, s, good, now - 11 * 60_000)).toMatch(/^signedAt: more than ten minutes in the future/);
  });
  test('over-long text and names that are paths are refused by their field', () => {
    expect(validateApproveBudget(ctx, s, approval('demo-approver', '1', 'n'.repeat(2001)))).toMatch(/^content.note: longer than 2000/);
    expect(validateApproveBudget(ctx, s, { ...good, by: '../../etc/passwd' })).toMatch(/^by: must be a person's name/);
    expect(validateApproveBudget(ctx, s, { ...good, by: 'x'.repeat(900_000) })).toMatch(/^by: must be a person's name/);
  });
});

test('the review gate accepts only listed reviewers, known verdicts, in AWAITING_REVIEW, and separates duties', () => {
  const s = fresh();
  expect(validateSubmitReview(ctx, s, reviewBy('demo-reviewer', 'APPROVED'))).toMatch(/only in AWAITING_REVIEW/);
  applyApproveBudget(ctx, s, approval('demo-approver', '1'), NOW);
  expect(s.status).toBe('AWAITING_REVIEW');
  expect(validateSubmitReview(ctx, s, sign('x', { kind: 'review', ...target, content: { verdict: 'APPROVED', ref: '', notes: '' } }, 'mallory'))).toMatch(/reviewer "x" is not listed/);
  expect(validateSubmitReview(ctx, s, reviewBy('demo-reviewer', 'MAYBE' as ReviewVerdict))).toMatch(/content.verdict: must be one of/);
  expect(validateSubmitReview(ctx, s, reviewBy('demo-reviewer', 'ADVISED'))).toBeNull();

  // One key in both roles (a protocol listing the approver as a reviewer too): refused under separate_duties.
  const both = gateContext({ ...input, protocol: { ...protocol, review: { ...protocol.review, reviewers: ['demo-reviewer', 'demo-approver'] } } }, TEST_RUN);
  expect(validateSubmitReview(both, s, reviewBy('demo-approver', 'APPROVED'))).toMatch(/^separate_duties: demo-approver's key .* approved this phase's budget/);
  const relaxed = gateContext({ ...input, protocol: { ...both.protocol, separate_duties: false } }, TEST_RUN);
  expect(validateSubmitReview(relaxed, s, reviewBy('demo-approver', 'APPROVED'))).toBeNull();
});

describe('the start input', () => {
  test('a start that claims another hash, phase id, a resumed state or a negative carried-over spend is refused', () => {
    expect(startInputProblem(input, false)).toBeNull();
    expect(startInputProblem({ ...input, people: { ...input.people, 'demo-approver': input.people['demo-reviewer']! } }, false)).toMatch(/^protocolHash: does not match/);
    expect(startInputProblem({ ...input, protocol: { ...protocol, budget: { ...protocol.budget, cap_usd: 1e6 } } }, false)).toMatch(/^protocolHash/);
    expect(startInputProblem({ ...input, pricing: { ...input.pricing, usdPerSecond: { cpu: 0 } } }, false)).toMatch(/^protocolHash/);
    expect(startInputProblem({ ...input, phaseId: 'demo-tooling-parity-000000000000' }, false)).toMatch(/^phaseId: /);
    const resume = { ...initialState(input, NOW), status: 'RUNNING' as const, budget: { approvedUsd: 1e9, approvedMicros: 1e15, approvals: [], rejection: null } };
    expect(startInputProblem({ ...input, resume }, false)).toMatch(/^resume: a resumed state is accepted only from the phase's own continue-as-new/);
    const earlier = ledgerEntryFor({ modelKey: 'tiny-qwen2', attempt: 1, gpu: 'cpu', usdPerSecond: 1, outcome: 'failed', measuredSeconds: 1, startedAtMs: 0, endedAtMs: 0, backendIds: {} });
    expect(startInputProblem({ ...input, priorLedger: [{ ...earlier, usd: -100 }] }, false)).toMatch(/^priorLedger/);
  });

  test('a phase name that is a pattern cannot claim another phase\'s id', () => {
    // The reviewer's attack: a name that, used in a regular expression, matched the real phase's id.
    const evil = { ...protocol, phase: `x|^${input.phaseId}$|y` };
    const hash = lockHashOf({ ...input, protocol: evil });
    const crafted = { ...input, protocol: evil, protocolHash: hash, phaseId: input.phaseId, reopenOf: { phaseId: `${evil.phase}-${hash.slice(0, 12)}`, defect: 'x' } };
    expect(startInputProblem(crafted, false)).toMatch(/^protocol\.phase: not a phase name/);
  });

  test('a resumed state must be accounted for by its signed decisions', () => {
    const s = fresh();
    applyApproveBudget(ctx, s, approval('demo-approver', '1'), NOW);
    expect(startInputProblem({ ...input, resume: s }, true)).toBeNull();
    expect(startInputProblem({ ...input, resume: { ...s, budget: { ...s.budget, approvedMicros: 1e12 } } }, true)).toMatch(/^resume: budget\.approvedMicros/);
    expect(startInputProblem({ ...input, resume: { ...s, status: 'RUNNING' } }, true)).toMatch(/without an approving signed review/);
    expect(startInputProblem({ ...input, resume: { ...fresh(), status: 'SCORING' } }, true)).toMatch(/without a signed budget decision/);
  });

  test('a continued run re-checks every decision in its state', () => {
    const s = fresh();
    applyApproveBudget(ctx, s, approval('demo-approver', '1'), NOW);
    expect(startInputProblem({ ...input, resume: s }, true)).toBeNull();
    const forged = structuredClone(s);
    forged.budget.approvals[0]!.signature.signed.content = { usd: '1000', note: '' };
    expect(startInputProblem({ ...input, resume: forged }, true)).toMatch(/^resume: approve-budget by demo-approver: signature: does not verify/);
  });
});

describe('ledger and budget check', () => {
  test('charges measured seconds when known, the observed wall time otherwise', () => {
    const base = { modelKey: 'm', attempt: 1, gpu: 'A10G', usdPerSecond: 0.000306, startedAtMs: 0, endedAtMs: 100_000, backendIds: {} };
    expect(ledgerEntryFor({ ...base, outcome: 'succeeded', measuredSeconds: 60 })).toMatchObject({ seconds: 60, usd: 0.01836, secondsBasis: 'measured' });
    expect(ledgerEntryFor({ ...base, outcome: 'timed_out', measuredSeconds: null })).toMatchObject({ seconds: 100, usd: 0.0306, secondsBasis: 'observed' });
  });

  test('remote calls are charged by their billable windows, each call-second once, however often reported', () => {
    const rate = (r: 'gpu' | 'cpu'): number => (r === 'gpu' ? 0.001 : 0.0001);
    const line = { modelKey: 'm', gpu: 'H100', backendIds: {}, startedAtMs: 0, endedAtMs: 0 };
    const ledger: ReturnType<typeof ledgerEntryFor>[] = [];
    // Attempt 1 detached from call C after observing it 0-100 s (no windows: its worker stopped).
    ledger.push(ledgerEntryFor({ ...line, attempt: 1, outcome: 'failed', usdPerSecond: 0.001, measuredSeconds: null, startedAtMs: 0, endedAtMs: 100_000, backendIds: { call: 'C' } }));
    // Attempt 2 reattached and saw C end: C's window is 5-300 s; 100-300 s is left to charge. The download D ran
    // on a CPU before C, 1-4 s.
    const windows = [
      { callId: 'D', fromMs: 1_000, toMs: 4_000, resource: 'cpu' as const },
      { callId: 'C', fromMs: 5_000, toMs: 300_000, resource: 'gpu' as const },
    ];
    const second = ledgerEntryForWindows(ledger, { ...line, attempt: 2, outcome: 'succeeded' }, windows, rate);
    expect(second).toMatchObject({ seconds: 203, usd: 0.2003, secondsBasis: 'container', startedAt: new Date(1_000).toISOString(), endedAt: new Date(300_000).toISOString() });
    expect(second.calls?.map((c) => [c.callId, c.from, c.to])).toEqual([
      ['D', new Date(1_000).toISOString(), new Date(4_000).toISOString()],
      ['C', new Date(100_000).toISOString(), new Date(300_000).toISOString()],
    ]);
    ledger.push(second);
    // A restart re-reports the finished call (and the same window twice): nothing is charged again.
    const again = ledgerEntryForWindows(ledger, { ...line, attempt: 3, outcome: 'succeeded' }, [...windows, windows[1]!], rate);
    expect(again).toMatchObject({ seconds: 0, usd: 0, calls: [] });
    // A call stopped later than its last report: only the new part.
    const stopped = ledgerEntryForWindows(ledger, { ...line, attempt: 3, outcome: 'cancelled' }, [{ callId: 'C', fromMs: 5_000, toMs: 310_000, resource: 'gpu' }], rate);
    expect(stopped).toMatchObject({ seconds: 10, usd: 0.01 });
  });

  test('an attempt is charged from when its run began, not from when it was scheduled; a stray clock is clamped', () => {
    expect(attemptWindow(1_000, 31_000, 91_000)).toEqual({ startedAtMs: 31_000, endedAtMs: 91_000 }); // 30 s queued: not charged
    expect(attemptWindow(1_000, undefined, 91_000)).toEqual({ startedAtMs: 1_000, endedAtMs: 91_000 }); // never reported: upper bound
    expect(attemptWindow(1_000, -5_000, 91_000).startedAtMs).toBe(1_000); // a worker clock behind the workflow's
    expect(attemptWindow(1_000, 99_000, 91_000).startedAtMs).toBe(91_000); // or ahead of it
  });

  test('an attempt refused before launching leaves nothing to release; one that ran or named a call does', () => {
    const base = { modelKey: 'm', attempt: 1, gpu: 'A10G', usdPerSecond: 0.000306, outcome: 'failed' as const, startedAtMs: 0, endedAtMs: 0 };
    const s = fresh();
    expect(mayHaveLaunched(s)).toBe(false);
    s.ledger.push(ledgerEntryFor({ ...base, measuredSeconds: 0, backendIds: { backend: 'modal' } }));
    expect(mayHaveLaunched(s)).toBe(false);
    s.ledger.push({ ...ledgerEntryFor({ ...base, measuredSeconds: 40, backendIds: {} }), earlierRun: true });
    expect(mayHaveLaunched(s)).toBe(false); // an earlier run's line: that run released its own calls
    s.ledger.push(ledgerEntryFor({ ...base, measuredSeconds: 0, backendIds: { call: 'fc-1' } }));
    expect(mayHaveLaunched(s)).toBe(true);
  });

  test('holds when spent plus the next estimate exceeds the approval, and failed attempts count', () => {
    const s = fresh();
    s.budget.approvedMicros = 15_000_000;
    const entry = (usd: number, outcome: 'failed' | 'succeeded') => ({ ...ledgerEntryFor({ modelKey: 'm', attempt: 1, gpu: 'A100-40GB', usdPerSecond: 1, outcome, measuredSeconds: usd, startedAtMs: 0, endedAtMs: 0, backendIds: {} }) });
    s.ledger.push(entry(10, 'failed'));
    expect(spentUsd(s.ledger)).toBe(10);
    expect(checkBudget(s, 5).ok).toBe(true);
    expect(checkBudget(s, 5.000001)).toMatchObject({ ok: false, spentUsd: 10, neededUsd: 15.000001 });
    // The seed's overrun: $43 spent against a $15 cap cannot happen silently.
    s.ledger.push(entry(33, 'succeeded'));
    expect(checkBudget(s, 0.01).ok).toBe(false);
  });

  test('an attempt may not outlive the budget left, and one too short to be useful is held, not dispatched', () => {
    expect(attemptTimeoutSeconds(60, 100, 0.001)).toBe(3600);
    expect(attemptTimeoutSeconds(60, 1, 0.001)).toBe(1000);
    // No floor above what the budget pays: $0.01 at $0.001/s is 10 s, not a minute.
    expect(attemptTimeoutSeconds(60, 0.01, 0.001)).toBe(10);
    expect(attemptTimeoutSeconds(10, 5, 0)).toBe(600);
    // The budget check reserves at least MIN_ATTEMPT_SECONDS, so a dispatched attempt always gets that long.
    expect(attemptReserveUsd(0.001, 0.001)).toBe(MIN_ATTEMPT_SECONDS * 0.001);
    expect(attemptReserveUsd(5, 0.001)).toBe(5);
    const s = fresh();
    s.budget.approvedMicros = 20_000; // $0.02: 20 s at $0.001/s
    expect(checkBudget(s, attemptReserveUsd(0.001, 0.001)).ok).toBe(false);
  });

  test('attempts side by side can never together be granted more than the approval, and each fits its own reserve', () => {
    // Models dispatch one after another while the earlier ones are still in flight, as runModelsSideBySide does;
    // each takes its grant as a time limit at its GPU's price and holds what that limit may cost.
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 20_000_000 }),
        fc.array(fc.record({ reserveMicros: fc.integer({ min: 1, max: 5_000_000 }), usdPerSecond: fc.constantFrom(0.000306, 0.000583, 0.001097, 0.01) }), { minLength: 1, maxLength: 5 }),
        fc.integer({ min: 1, max: 120 }),
        (approvedMicros, models, timeoutMinutes) => {
          let held = 0;
          const approved = approvedMicros / 1e6;
          // What the budget check reserves per attempt (its estimate, and at least MIN_ATTEMPT_SECONDS of its GPU).
          const reserve = (m: (typeof models)[number]): number => attemptReserveUsd(m.reserveMicros / 1e6, m.usdPerSecond);
          for (const [i, m] of models.entries()) {
            const own = reserve(m);
            const available = approved - held;
            if (usdToMicros(available) < usdToMicros(own)) continue; // it waits; the next may still fit
            const waiting = models.slice(i + 1).reduce((sum, w) => sum + reserve(w), 0);
            const limit = attemptTimeoutSeconds(timeoutMinutes, attemptGrantUsd(available, own, waiting), m.usdPerSecond);
            const cost = costUsd(limit, m.usdPerSecond);
            expect(limit).toBeGreaterThanOrEqual(Math.min(timeoutMinutes * 60, Math.floor(own / m.usdPerSecond)));
            held += cost;
          }
          expect(usdToMicros(held)).toBeLessThanOrEqual(approvedMicros + models.length); // a micro-dollar of rounding each
        },
      ),
      { seed: 16, numRuns: 2000 },
    );
    // Two models whose reserves both fit share the rest by reserve, so both run at once within the approval.
    expect(attemptGrantUsd(0.04, 0.0186, 0.0186)).toBeCloseTo(0.02, 10);
    expect(attemptGrantUsd(0.04 - 0.02, 0.0186, 0)).toBeCloseTo(0.02, 10);
    // When the waiting ones cannot fit beside it, it may use what is there: they dispatch when it ends.
    expect(attemptGrantUsd(0.03, 0.0186, 0.0186)).toBe(0.03);
  });

  test('cost and back-off arithmetic', () => {
    expect(costUsd(3600, 0.000583)).toBe(2.0988);
    expect(costUsd(-5, 1)).toBe(0);
    expect([2, 3, 4].map((a) => retryDelaySeconds({ max_attempts: 5, initial_interval_seconds: 10, backoff_coefficient: 2 }, a))).toEqual([10, 20, 40]);
    // The largest back-off a protocol may ask for still waits at most a day.
    expect(retryDelaySeconds({ max_attempts: 10, initial_interval_seconds: 3600, backoff_coefficient: 10 }, 10)).toBe(MAX_RETRY_DELAY_SECONDS);
  });
});

describe('estimate', () => {
  test('calibrates from measured seconds only: a crash\'s observed wall time does not inflate the rate', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'phasegate-calib-'));
    mkdirSync(path.join(dir, 'old-phase', 'models'), { recursive: true });
    const line = (seconds: number, secondsBasis: string) => ({ seconds, secondsBasis });
    writeFileSync(
      path.join(dir, 'old-phase', 'models', 'm.json'),
      JSON.stringify({ model: { id: 'tiny:qwen2', gpu: 'cpu' }, workload: { work: 100 }, ledger: [line(90, 'observed'), line(15, 'measured'), line(5, 'measured')] }),
    );
    expect(readCalibration(dir, 'this-phase')).toEqual([{ phaseId: 'old-phase', modelId: 'tiny:qwen2', gpu: 'cpu', work: 100, seconds: 20 }]);
  });

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
