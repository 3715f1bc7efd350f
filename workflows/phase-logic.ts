/**
 * The phase's pure state transitions: gate validation, decision de-duplication, the cost ledger and the budget
 * check. No Temporal API here, so unit tests call these without a server; the workflow wires them to handlers.
 */
import type {
  ApproveBudgetInput,
  AttemptOutcome,
  DecisionResult,
  LedgerEntry,
  PhaseInput,
  PhaseState,
  PhaseStatus,
  RejectBudgetInput,
  RunPlan,
  SubmitReviewInput,
} from './definitions';
import type { Protocol } from '../protocols/schema';

export function initialState(input: PhaseInput, now: string): PhaseState {
  const prior = (input.priorLedger ?? []).map((e) => ({ ...e, earlierRun: true }));
  const events: PhaseState['events'] =
    prior.length > 0
      ? [{ at: now, kind: 'note', message: `restarted: ${prior.length} ledger line(s), $${spentUsd(prior).toFixed(4)}, carried over from the earlier run` }]
      : [];
  return {
    phaseId: input.phaseId,
    phaseName: input.protocol.phase,
    protocolHash: input.protocolHash,
    status: 'AWAITING_BUDGET',
    startedAt: now,
    estimate: null,
    budget: { approvedUsd: 0, approvals: [], rejection: null },
    review: null,
    models: input.protocol.models.map((m) => ({ modelKey: m.key, status: 'pending', attempts: 0, backendIds: {} })),
    ledger: prior,
    score: null,
    freeze: null,
    events,
    appliedDecisions: [],
    failure: null,
    reopenOf: input.reopenOf ?? null,
    continuedAsNew: 0,
  };
}

export function transition(state: PhaseState, status: PhaseStatus, now: string, why: string): void {
  if (state.status === status) return;
  state.events.push({ at: now, kind: 'transition', message: `${state.status} -> ${status}: ${why}` });
  state.status = status;
}

// ---- Money ----------------------------------------------------------------------------------------------------------
/** Dollars are rounded to micro-dollars so that sums of many small entries stay exact enough to compare. */
export function roundUsd(usd: number): number {
  return Math.round(usd * 1e6) / 1e6;
}

export function spentUsd(ledger: readonly LedgerEntry[]): number {
  return roundUsd(ledger.reduce((sum, e) => sum + e.usd, 0));
}

export function costUsd(seconds: number, usdPerSecond: number): number {
  return roundUsd(Math.max(0, seconds) * usdPerSecond);
}

export interface BudgetCheck {
  ok: boolean;
  spentUsd: number;
  approvedUsd: number;
  nextUsd: number;
  /** The least total approval under which the next attempt may be dispatched. */
  neededUsd: number;
}

/** Before each GPU attempt: would spent + this attempt's estimate exceed the approved total? */
export function checkBudget(state: PhaseState, nextAttemptUsd: number): BudgetCheck {
  const spent = spentUsd(state.ledger);
  const needed = roundUsd(spent + nextAttemptUsd);
  return {
    ok: needed <= state.budget.approvedUsd,
    spentUsd: spent,
    approvedUsd: state.budget.approvedUsd,
    nextUsd: nextAttemptUsd,
    neededUsd: needed,
  };
}

export interface AttemptRecord {
  modelKey: string;
  attempt: number;
  gpu: string;
  usdPerSecond: number;
  outcome: AttemptOutcome;
  measuredSeconds: number | null;
  startedAtMs: number;
  endedAtMs: number;
  backendIds: Record<string, string>;
  error?: string;
}

/**
 * One ledger line per attempt. When the backend measured the seconds we charge those; when it could not (the
 * worker died, the heartbeat timed out) we charge the wall time the workflow saw, an upper bound, because an
 * under-charged ledger is the failure this product exists to prevent.
 */
export function ledgerEntryFor(r: AttemptRecord): LedgerEntry {
  const observed = Math.max(0, (r.endedAtMs - r.startedAtMs) / 1000);
  const seconds = r.measuredSeconds ?? observed;
  const entry: LedgerEntry = {
    modelKey: r.modelKey,
    attempt: r.attempt,
    gpu: r.gpu,
    seconds: Math.round(seconds * 1000) / 1000,
    usd: costUsd(seconds, r.usdPerSecond),
    outcome: r.outcome,
    secondsBasis: r.measuredSeconds === null ? 'observed' : 'measured',
    startedAt: new Date(r.startedAtMs).toISOString(),
    endedAt: new Date(r.endedAtMs).toISOString(),
    backendIds: r.backendIds,
  };
  if (r.error !== undefined) entry.error = r.error;
  return entry;
}

/**
 * An attempt's time limit: the protocol's per-model timeout, or less when the approved budget left would run out
 * first (at least a minute, so a nearly spent budget still gets a clean stop rather than an instant timeout).
 */
export function attemptTimeoutSeconds(timeoutMinutes: number, budgetLeftUsd: number, usdPerSecond: number): number {
  const protocolLimit = Math.round(timeoutMinutes * 60);
  if (usdPerSecond <= 0) return protocolLimit;
  return Math.max(60, Math.min(protocolLimit, Math.floor(budgetLeftUsd / usdPerSecond)));
}

/** Delay before attempt `attempt` (2, 3, ...) under the protocol's back-off. */
export function retryDelaySeconds(retry: Protocol['retry'], attempt: number): number {
  return retry.initial_interval_seconds * retry.backoff_coefficient ** Math.max(0, attempt - 2);
}

// ---- Gates -----------------------------------------------------------------------------------------------------------
export function approveKey(i: ApproveBudgetInput): string {
  return `approve:${i.by.trim()}:${i.usd}`;
}
export function rejectKey(i: RejectBudgetInput): string {
  return `reject:${i.by.trim()}`;
}
export function reviewKey(i: SubmitReviewInput): string {
  return `review:${i.by.trim()}:${i.verdict}`;
}

const listed = (who: string, list: readonly string[]): boolean => list.includes(who.trim());
const money = (usd: number): string => `$${usd.toFixed(2)}`;

/** Returns why an approval must be refused, or null. A decision already applied is never refused. */
export function validateApproveBudget(state: PhaseState, protocol: Protocol, i: ApproveBudgetInput): string | null {
  if (state.appliedDecisions.includes(approveKey(i))) return null;
  if (typeof i.by !== 'string' || !listed(i.by, protocol.budget.approvers)) {
    return `approver "${String(i.by)}" is not listed in the protocol's budget.approvers (${protocol.budget.approvers.join(', ')})`;
  }
  if (typeof i.usd !== 'number' || !Number.isFinite(i.usd) || i.usd <= 0) {
    return `usd must be a positive, finite amount, got ${String(i.usd)}`;
  }
  if (state.status !== 'AWAITING_BUDGET' && state.status !== 'BUDGET_HOLD') {
    return `the phase is ${state.status}: a budget approval is accepted only in AWAITING_BUDGET or BUDGET_HOLD`;
  }
  if (state.estimate === null) return 'the cost estimate is not ready yet: an approval is given against an estimate (retry in a moment)';
  if (state.status === 'BUDGET_HOLD' && i.usd <= state.budget.approvedUsd) {
    return `usd ${money(i.usd)} must exceed the approved ${money(state.budget.approvedUsd)} to release the hold`;
  }
  return null;
}

export function applyApproveBudget(state: PhaseState, i: ApproveBudgetInput, now: string): DecisionResult {
  const key = approveKey(i);
  if (state.appliedDecisions.includes(key)) return { applied: false, status: state.status, approvedUsd: state.budget.approvedUsd };
  state.appliedDecisions.push(key);
  state.budget.approvals.push({ by: i.by.trim(), usd: i.usd, note: i.note ?? '', at: now });
  state.budget.approvedUsd = i.usd;
  state.events.push({ at: now, kind: 'decision', message: `budget approved by ${i.by.trim()}: ${money(i.usd)}` });
  // The gate opens at once, so a review sent right after the approval is accepted. (A hold is released by the
  // workflow's run loop, which re-checks the budget before moving back to RUNNING.)
  if (state.status === 'AWAITING_BUDGET') transition(state, 'AWAITING_REVIEW', now, `budget approved: ${money(i.usd)}`);
  return { applied: true, status: state.status, approvedUsd: state.budget.approvedUsd };
}

export function validateRejectBudget(state: PhaseState, protocol: Protocol, i: RejectBudgetInput): string | null {
  if (state.appliedDecisions.includes(rejectKey(i))) return null;
  if (typeof i.by !== 'string' || !listed(i.by, protocol.budget.approvers)) {
    return `approver "${String(i.by)}" is not listed in the protocol's budget.approvers (${protocol.budget.approvers.join(', ')})`;
  }
  if (typeof i.reason !== 'string' || i.reason.trim() === '') return 'reason must say why the budget is rejected';
  if (state.status !== 'AWAITING_BUDGET' && state.status !== 'BUDGET_HOLD') {
    return `the phase is ${state.status}: a budget rejection is accepted only in AWAITING_BUDGET or BUDGET_HOLD`;
  }
  return null;
}

export function applyRejectBudget(state: PhaseState, i: RejectBudgetInput, now: string): DecisionResult {
  const key = rejectKey(i);
  if (state.appliedDecisions.includes(key)) return { applied: false, status: state.status, approvedUsd: state.budget.approvedUsd };
  state.appliedDecisions.push(key);
  state.budget.rejection = { by: i.by.trim(), reason: i.reason, at: now };
  state.events.push({ at: now, kind: 'decision', message: `budget rejected by ${i.by.trim()}: ${i.reason}` });
  transition(state, 'REJECTED', now, `budget rejected by ${i.by.trim()}`);
  return { applied: true, status: state.status, approvedUsd: state.budget.approvedUsd };
}

const VERDICTS = ['APPROVED', 'ADVISED', 'CHANGES_REQUESTED'];

export function validateSubmitReview(state: PhaseState, protocol: Protocol, i: SubmitReviewInput): string | null {
  if (state.appliedDecisions.includes(reviewKey(i))) return null;
  if (typeof i.by !== 'string' || !listed(i.by, protocol.review.reviewers)) {
    return `reviewer "${String(i.by)}" is not listed in the protocol's review.reviewers (${protocol.review.reviewers.join(', ')})`;
  }
  if (!VERDICTS.includes(i.verdict)) return `verdict must be one of ${VERDICTS.join(', ')}, got ${String(i.verdict)}`;
  if (state.status !== 'AWAITING_REVIEW') {
    return `the phase is ${state.status}: a review verdict is accepted only in AWAITING_REVIEW`;
  }
  return null;
}

export function applySubmitReview(state: PhaseState, i: SubmitReviewInput, now: string): DecisionResult {
  const key = reviewKey(i);
  if (state.appliedDecisions.includes(key)) return { applied: false, status: state.status, approvedUsd: state.budget.approvedUsd };
  state.appliedDecisions.push(key);
  state.review = { by: i.by.trim(), verdict: i.verdict, ref: i.ref ?? '', notes: i.notes ?? '', at: now };
  state.events.push({ at: now, kind: 'decision', message: `review by ${i.by.trim()}: ${i.verdict}${i.ref ? ` (${i.ref})` : ''}` });
  transition(state, i.verdict === 'CHANGES_REQUESTED' ? 'CHANGES_REQUESTED' : 'RUNNING', now, `review ${i.verdict} by ${i.by.trim()}`);
  return { applied: true, status: state.status, approvedUsd: state.budget.approvedUsd };
}

// ---- The run plan the reviewer reads -------------------------------------------------------------------------------
export function runPlan(input: PhaseInput, state: PhaseState): RunPlan {
  const p = input.protocol;
  const units = p.methods.length * p.repeats + 1;
  return {
    phaseId: input.phaseId,
    protocolHash: input.protocolHash,
    commands: p.models.map(
      (m) =>
        `${p.backend === 'modal' ? `python -m phasegate_runtime.modal_launch launch --gpu ${m.gpu}` : 'python -m phasegate_runtime run'} ` +
        `--spec <work>/${input.phaseId}/${m.key}/spec.json --out <work>/${input.phaseId}/${m.key} ` +
        `# ${m.id} on ${m.gpu} (${p.backend}), ${units} units: baseline + ${p.methods.join('/')} x ${p.repeats} repeats`,
    ),
    expectedArtifacts: [
      ...p.models.map((m) => `<artifacts>/${input.phaseId}/models/${m.key}.json (canonical result with provenance and ledger)`),
      ...p.models.map((m) => `<artifacts>/${input.phaseId}/directions/${m.key}/<method>_r<k>.npy (${p.methods.length * p.repeats} vectors)`),
      `<artifacts>/${input.phaseId}/score.json, closeout.md, parity.svg, cost.svg, MANIFEST.sha256`,
    ],
    stopConditions: [
      `a GPU attempt is not dispatched if spent + its estimate would exceed the approved budget (BUDGET_HOLD)`,
      `a running attempt is stopped when the approved budget left runs out (or after the model's timeout_minutes)`,
      `a model fails after ${p.retry.max_attempts} attempts, or at once on invalid input (FAILED)`,
      `a budget rejection (REJECTED), a CHANGES_REQUESTED review, or a cancel (CANCELLED)`,
      `parity below min_cosine ${p.parity.min_cosine} or above max_l2 ${p.parity.max_l2} is a result, not a stop: the phase freezes with parity_pass false`,
    ],
    estimate: state.estimate,
  };
}
