/**
 * The phase's pure state transitions: gate validation, decision de-duplication, the cost ledger and the budget
 * check. No Temporal API here, so unit tests call these without a server; the workflow wires them to handlers.
 */
import type {
  CallWindow,
  ChargedSpan,
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
import {
  decisionShapeProblem,
  keyFingerprint,
  recordProblem,
  signatureProblem,
  signatureRecord,
  type DecisionKind,
  type SignatureRecord,
  type SignedDecision,
} from '../domain/decisions';
import { isReopenIdOf, PHASE_NAME, phaseIdFor, protocolHashOf } from '../domain/lock';
import { formatMicros, microsToUsd, parseUsd, usdToMicros } from '../domain/money';

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
    budget: { approvedUsd: 0, approvedMicros: 0, approvals: [], rejection: null },
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
  inFlightUsd: number;
}

/**
 * Before each GPU attempt: would spent + the estimates of the attempts in flight (other models running side by side)
 * + this attempt's estimate exceed the approved total?
 */
export function checkBudget(state: PhaseState, nextAttemptUsd: number, inFlightUsd = 0): BudgetCheck {
  const spent = spentUsd(state.ledger);
  const needed = roundUsd(spent + inFlightUsd + nextAttemptUsd);
  return {
    // Compared in integer micro-dollars, so the check is exact.
    ok: usdToMicros(needed) <= state.budget.approvedMicros,
    spentUsd: spent,
    approvedUsd: state.budget.approvedUsd,
    nextUsd: nextAttemptUsd,
    neededUsd: needed,
    inFlightUsd,
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
 * What a call has been charged for already in this model's ledger: the spans of 'container' lines, and the whole
 * window of any line that named the call without knowing its spans (an attempt that only observed it).
 */
function chargedSpans(ledger: readonly LedgerEntry[], modelKey: string, callId: string): [number, number][] {
  const spans: [number, number][] = [];
  for (const e of ledger) {
    if (e.modelKey !== modelKey) continue;
    if (e.calls !== undefined) {
      for (const c of e.calls) if (c.callId === callId) spans.push([Date.parse(c.from), Date.parse(c.to)]);
    } else if (e.backendIds.call === callId || (e.backendIds.stopped ?? '').split(',').includes(callId)) {
      spans.push([Date.parse(e.startedAt), Date.parse(e.endedAt)]);
    }
  }
  return spans;
}

/** [from, to) less every span in `taken`. */
function subtractSpans(from: number, to: number, taken: readonly [number, number][]): [number, number][] {
  let parts: [number, number][] = [[from, to]];
  for (const [a, b] of taken) {
    parts = parts.flatMap(([x, y]): [number, number][] => (b <= x || a >= y ? [[x, y]] : [...(a > x ? [[x, a] as [number, number]] : []), ...(b < y ? [[b, y] as [number, number]] : [])]));
  }
  return parts.filter(([x, y]) => y > x);
}

/**
 * The ledger line of an attempt that reported its remote calls' billable windows: every second of every window
 * that no earlier line of this model charged, and nothing twice (a detached attempt's observed time, a reattached
 * call's whole life, a restart re-reporting a finished call). Modal bills container-seconds; the windows bound them
 * from above (runtime/.../modal_launch.py, CallBook), so the ledger is never below the bill.
 */
export function ledgerEntryForWindows(
  ledger: readonly LedgerEntry[],
  r: Omit<AttemptRecord, 'measuredSeconds' | 'usdPerSecond'>,
  windows: readonly CallWindow[],
  usdPerSecond: (resource: CallWindow['resource']) => number,
): LedgerEntry {
  const charged: ChargedSpan[] = [];
  const taken = new Map<string, [number, number][]>();
  let seconds = 0;
  let usd = 0;
  for (const w of windows) {
    const spans = taken.get(w.callId) ?? chargedSpans(ledger, r.modelKey, w.callId);
    for (const [a, b] of subtractSpans(w.fromMs, w.toMs, spans)) {
      charged.push({ callId: w.callId, from: new Date(a).toISOString(), to: new Date(b).toISOString(), resource: w.resource });
      seconds += (b - a) / 1000;
      usd += ((b - a) / 1000) * usdPerSecond(w.resource);
      spans.push([a, b]);
    }
    taken.set(w.callId, spans);
  }
  const froms = charged.map((c) => Date.parse(c.from));
  const tos = charged.map((c) => Date.parse(c.to));
  const entry: LedgerEntry = {
    modelKey: r.modelKey,
    attempt: r.attempt,
    gpu: r.gpu,
    seconds: Math.round(seconds * 1000) / 1000,
    usd: roundUsd(usd),
    outcome: r.outcome,
    secondsBasis: 'container',
    startedAt: new Date(charged.length > 0 ? Math.min(...froms) : r.startedAtMs).toISOString(),
    endedAt: new Date(charged.length > 0 ? Math.max(...tos) : r.endedAtMs).toISOString(),
    backendIds: r.backendIds,
    calls: charged,
  };
  if (r.error !== undefined) entry.error = r.error;
  return entry;
}

/**
 * An attempt's charged window: from when its run began on the worker (reported by the activity), else from its
 * scheduling. A reported start outside [scheduled, ended] (another machine's clock) is clamped into it, so the
 * window never grows past what the workflow itself saw.
 */
export function attemptWindow(scheduledAtMs: number, reportedStartMs: number | undefined, endedAtMs: number): { startedAtMs: number; endedAtMs: number } {
  const start = reportedStartMs === undefined ? scheduledAtMs : Math.min(Math.max(reportedStartMs, scheduledAtMs), endedAtMs);
  return { startedAtMs: start, endedAtMs };
}

/**
 * Whether any attempt of this run may have started something that costs money: one that ran for some time or
 * named a remote call. An attempt refused before launching (missing credentials, say) charged 0 and named none.
 */
export function mayHaveLaunched(state: PhaseState): boolean {
  return state.ledger.some((e) => e.earlierRun !== true && (e.seconds > 0 || e.backendIds.call !== undefined));
}

/**
 * An attempt's time limit: the protocol's per-model timeout, or less when the approved budget left would run out
 * first. Never more than the budget left can pay for: an attempt that could not run MIN_ATTEMPT_SECONDS is not
 * dispatched at all (see attemptReserveUsd), it waits in BUDGET_HOLD.
 */
export function attemptTimeoutSeconds(timeoutMinutes: number, budgetLeftUsd: number, usdPerSecond: number): number {
  const protocolLimit = Math.round(timeoutMinutes * 60);
  if (usdPerSecond <= 0) return protocolLimit;
  return Math.max(1, Math.min(protocolLimit, Math.floor(budgetLeftUsd / usdPerSecond)));
}

/** The shortest attempt worth paying for: less than this left in the budget is a hold, not a dispatch. */
export const MIN_ATTEMPT_SECONDS = 30;

/** What the budget check reserves for an attempt: its estimate, and at least MIN_ATTEMPT_SECONDS of its GPU. */
export function attemptReserveUsd(estimateUsd: number, usdPerSecond: number): number {
  return roundUsd(Math.max(estimateUsd, MIN_ATTEMPT_SECONDS * usdPerSecond));
}

/**
 * What an attempt dispatched beside others may spend at most (its time limit is this over its GPU's price). It
 * comes out of `availableUsd` (the approval less spent less what the attempts in flight may still spend), so the
 * attempts in flight together can never spend past the approval. Room is kept for the models still waiting to
 * dispatch (`waitingUsd`, their reserves): what is left over is shared with them by reserve. When they cannot fit
 * beside it anyway, the attempt may use all that is available; they dispatch when it ends.
 */
export function attemptGrantUsd(availableUsd: number, ownUsd: number, waitingUsd: number): number {
  const slack = availableUsd - ownUsd - waitingUsd;
  if (slack < 0 || ownUsd + waitingUsd <= 0) return Math.max(0, availableUsd);
  return ownUsd + (slack * ownUsd) / (ownUsd + waitingUsd);
}

/** Delay before attempt `attempt` (2, 3, ...) under the protocol's back-off. */
export function retryDelaySeconds(retry: Protocol['retry'], attempt: number): number {
  return Math.min(MAX_RETRY_DELAY_SECONDS, retry.initial_interval_seconds * retry.backoff_coefficient ** Math.max(0, attempt - 2));
}

/** The longest wait between two attempts, whatever the protocol's back-off says. */
export const MAX_RETRY_DELAY_SECONDS = 86_400;

// ---- Gates -----------------------------------------------------------------------------------------------------------
/**
 * What a gate check needs to know about the phase besides its state: its lock, who may decide, and the run chain
 * (the first run's id, which Temporal gives and continue-as-new keeps: a phase started again gets another).
 */
export interface GateContext {
  phaseId: string;
  protocolHash: string;
  run: string;
  protocol: Protocol;
  people: Record<string, string>;
}

export const gateContext = (input: PhaseInput, run: string): GateContext => ({ phaseId: input.phaseId, protocolHash: input.protocolHash, run, protocol: input.protocol, people: input.people });

/** Decisions with the same meaning share a key, so a resent decision (even re-signed) is applied once. */
export function approveKey(d: ApproveBudgetInput): string {
  return `approve:${d.by}:${d.content.usd}`;
}
export function rejectKey(d: RejectBudgetInput): string {
  return `reject:${d.by}`;
}
export function reviewKey(d: SubmitReviewInput): string {
  return `review:${d.by}:${d.content.verdict}`;
}
/** The key of a decision of any kind. */
export function decisionKey(d: SignedDecision<DecisionKind>): string {
  if (d.kind === 'approve-budget') return approveKey(d as ApproveBudgetInput);
  if (d.kind === 'reject-budget') return rejectKey(d as RejectBudgetInput);
  return reviewKey(d as SubmitReviewInput);
}

const ROLES: Record<DecisionKind, { list: (p: Protocol) => string[]; field: string; noun: string }> = {
  'approve-budget': { list: (p) => p.budget.approvers, field: 'budget.approvers', noun: 'approver' },
  'reject-budget': { list: (p) => p.budget.approvers, field: 'budget.approvers', noun: 'approver' },
  review: { list: (p) => p.review.reviewers, field: 'review.reviewers', noun: 'reviewer' },
};

function signaturesIn(state: PhaseState): SignatureRecord[] {
  return [...state.budget.approvals.map((a) => a.signature), ...(state.budget.rejection ? [state.budget.rejection.signature] : []), ...(state.review ? [state.review.signature] : [])];
}

/**
 * The checks every decision passes, whoever sends it: its shape and bounds, its signer is named for this gate
 * in the locked protocol, its signature verifies with that person's key for this phase and protocol hash, and
 * its nonce has not been used by another decision. Returns the reason to refuse, or null.
 */
export function decisionProblem<K extends DecisionKind>(ctx: GateContext, state: PhaseState, kind: K, d: unknown, nowMs: number): string | null {
  const shape = decisionShapeProblem(d, kind);
  if (shape !== null) return shape;
  const decision = d as SignedDecision<K>;
  const role = ROLES[kind];
  if (!role.list(ctx.protocol).includes(decision.by)) {
    return `by: ${role.noun} "${decision.by}" is not listed in the protocol's ${role.field} (${role.list(ctx.protocol).join(', ')})`;
  }
  if (decision.phaseId !== ctx.phaseId || decision.protocolHash !== ctx.protocolHash) {
    return `phaseId: the decision was signed for phase ${decision.phaseId.slice(0, 80)} (protocol ${decision.protocolHash.slice(0, 12)}), not for this phase ${ctx.phaseId} (protocol ${ctx.protocolHash.slice(0, 12)})`;
  }
  if (decision.v !== 2) return 'v: must be 2: this decision is not bound to a run of the phase (sign it with a current phasegate)';
  if (decision.run !== ctx.run) {
    return `run: the decision was signed for another run of phase ${ctx.phaseId} (${String(decision.run).slice(0, 36)}), not this one (${ctx.run}): a phase started again after it was cancelled or failed needs its decisions again`;
  }
  const key = ctx.people[decision.by];
  if (key === undefined) return `by: "${decision.by}" has no public key in the protocol's people`;
  const bad = signatureProblem(decision, key);
  if (bad !== null) return bad;
  const reused = signaturesIn(state).find((r) => r.signed.nonce === decision.nonce);
  if (reused !== undefined && reused.signed.signature !== decision.signature) return `nonce: already used by another decision (a replay)`;
  // The identical decision resent is acknowledged whatever its age; a new one must be fresh.
  if (reused === undefined) return staleDecision(decision.signedAt, nowMs);
  return null;
}

/** Separation of duties: a key that approved the budget may not review, and a reviewer's key may not approve. */
function dutyConflict(ctx: GateContext, state: PhaseState, kind: DecisionKind, by: string): string | null {
  if (!ctx.protocol.separate_duties) return null;
  const key = ctx.people[by];
  if (kind === 'review') {
    const approver = state.budget.approvals.find((a) => a.signature.publicKey === key);
    if (approver !== undefined) return `separate_duties: ${by}'s key ${keyFingerprint(key ?? '')} approved this phase's budget (as ${approver.by}), so it may not also review it`;
  } else if (state.review !== null && state.review.signature.publicKey === key) {
    return `separate_duties: ${by}'s key ${keyFingerprint(key ?? '')} reviewed this phase (as ${state.review.by}), so it may not also decide its budget`;
  }
  return null;
}


/** Returns why an approval must be refused, or null. A valid decision already applied is never refused. */
export function validateApproveBudget(ctx: GateContext, state: PhaseState, d: unknown, nowMs: number = Date.now()): string | null {
  const problem = decisionProblem(ctx, state, 'approve-budget', d, nowMs);
  if (problem !== null) return problem;
  const i = d as ApproveBudgetInput;
  if (state.appliedDecisions.includes(approveKey(i))) return null;
  const duty = dutyConflict(ctx, state, 'approve-budget', i.by);
  if (duty !== null) return duty;
  if (state.status !== 'AWAITING_BUDGET' && state.status !== 'BUDGET_HOLD') {
    return `status: the phase is ${state.status}: a budget approval is accepted only in AWAITING_BUDGET or BUDGET_HOLD`;
  }
  if (state.estimate === null) return 'estimate: the cost estimate is not ready yet: an approval is given against an estimate (retry in a moment)';
  const micros = (parseUsd(i.content.usd) as { micros: number }).micros;
  const capMicros = usdToMicros(ctx.protocol.budget.cap_usd);
  if (micros > capMicros) {
    return `content.usd: ${formatMicros(micros)} exceeds the protocol's budget.cap_usd ${formatMicros(capMicros)}; the cap is a protocol field: raise it in a new protocol version (a new phase)`;
  }
  if (state.status === 'BUDGET_HOLD' && micros <= state.budget.approvedMicros) {
    return `content.usd: ${formatMicros(micros)} must exceed the approved ${formatMicros(state.budget.approvedMicros)} to release the hold`;
  }
  return null;
}

const unchanged = (state: PhaseState): DecisionResult => ({ applied: false, status: state.status, approvedUsd: state.budget.approvedUsd });

export function applyApproveBudget(ctx: GateContext, state: PhaseState, i: ApproveBudgetInput, now: string): DecisionResult {
  const key = approveKey(i);
  if (state.appliedDecisions.includes(key)) return unchanged(state);
  state.appliedDecisions.push(key);
  const micros = (parseUsd(i.content.usd) as { micros: number }).micros;
  const signature = signatureRecord(i, ctx.people[i.by]!);
  state.budget.approvals.push({ by: i.by, usd: microsToUsd(micros), usdMicros: micros, note: i.content.note, at: now, signature });
  state.budget.approvedMicros = micros;
  state.budget.approvedUsd = microsToUsd(micros);
  state.events.push({ at: now, kind: 'decision', message: `budget approved by ${i.by}: ${formatMicros(micros)} (signature verified, key ${signature.keyFingerprint})` });
  // The gate opens at once, so a review sent right after the approval is accepted. (A hold is released by the
  // workflow's run loop, which re-checks the budget before moving back to RUNNING.)
  if (state.status === 'AWAITING_BUDGET') transition(state, 'AWAITING_REVIEW', now, `budget approved: ${formatMicros(micros)}`);
  return { applied: true, status: state.status, approvedUsd: state.budget.approvedUsd };
}

export function validateRejectBudget(ctx: GateContext, state: PhaseState, d: unknown, nowMs: number = Date.now()): string | null {
  const problem = decisionProblem(ctx, state, 'reject-budget', d, nowMs);
  if (problem !== null) return problem;
  const i = d as RejectBudgetInput;
  if (state.appliedDecisions.includes(rejectKey(i))) return null;
  const duty = dutyConflict(ctx, state, 'reject-budget', i.by);
  if (duty !== null) return duty;
  if (state.status !== 'AWAITING_BUDGET' && state.status !== 'BUDGET_HOLD') {
    return `status: the phase is ${state.status}: a budget rejection is accepted only in AWAITING_BUDGET or BUDGET_HOLD`;
  }
  return null;
}

export function applyRejectBudget(ctx: GateContext, state: PhaseState, i: RejectBudgetInput, now: string): DecisionResult {
  const key = rejectKey(i);
  if (state.appliedDecisions.includes(key)) return unchanged(state);
  state.appliedDecisions.push(key);
  const signature = signatureRecord(i, ctx.people[i.by]!);
  state.budget.rejection = { by: i.by, reason: i.content.reason, at: now, signature };
  state.events.push({ at: now, kind: 'decision', message: `budget rejected by ${i.by} (signature verified, key ${signature.keyFingerprint}): ${i.content.reason}` });
  transition(state, 'REJECTED', now, `budget rejected by ${i.by}`);
  return { applied: true, status: state.status, approvedUsd: state.budget.approvedUsd };
}

export function validateSubmitReview(ctx: GateContext, state: PhaseState, d: unknown, nowMs: number = Date.now()): string | null {
  const problem = decisionProblem(ctx, state, 'review', d, nowMs);
  if (problem !== null) return problem;
  const i = d as SubmitReviewInput;
  if (state.appliedDecisions.includes(reviewKey(i))) return null;
  const duty = dutyConflict(ctx, state, 'review', i.by);
  if (duty !== null) return duty;
  if (state.status !== 'AWAITING_REVIEW') {
    return `status: the phase is ${state.status}: a review verdict is accepted only in AWAITING_REVIEW`;
  }
  return null;
}

export function applySubmitReview(ctx: GateContext, state: PhaseState, i: SubmitReviewInput, now: string): DecisionResult {
  const key = reviewKey(i);
  if (state.appliedDecisions.includes(key)) return unchanged(state);
  state.appliedDecisions.push(key);
  const { verdict, ref, notes } = i.content;
  const signature = signatureRecord(i, ctx.people[i.by]!);
  state.review = { by: i.by, verdict, ref, notes, at: now, signature };
  state.events.push({ at: now, kind: 'decision', message: `review by ${i.by}: ${verdict}${ref ? ` (${ref})` : ''} (signature verified, key ${signature.keyFingerprint})` });
  transition(state, verdict === 'CHANGES_REQUESTED' ? 'CHANGES_REQUESTED' : 'RUNNING', now, `review ${verdict} by ${i.by}`);
  return { applied: true, status: state.status, approvedUsd: state.budget.approvedUsd };
}

// ---- The start input: what a client may claim ---------------------------------------------------------------------
/**
 * Why a run's input must be refused, or null. Anyone who can reach Temporal can start a workflow with any input,
 * so the workflow trusts nothing it can check itself: the protocol hash is recomputed from the input's own
 * protocol, prompt hashes, pricing and people; the phase id must be the one that hash names; a resumed state is
 * accepted only from the phase's own continue-as-new, and every decision in it must still verify.
 */
export function startInputProblem(input: PhaseInput, continuedFromOwnRun: boolean): string | null {
  if (input.resume !== undefined && !continuedFromOwnRun) return 'resume: a resumed state is accepted only from the phase\'s own continue-as-new, not from a start';
  const hash = lockHashOf(input);
  if (typeof input.protocol.phase !== 'string' || !PHASE_NAME.test(input.protocol.phase)) return 'protocol.phase: not a phase name';
  if (hash !== input.protocolHash) return 'protocolHash: does not match the protocol, prompt hashes, pricing and people in the start input';
  const own = phaseIdFor(input.protocol.phase, hash);
  // A reopened phase (of a reopened phase, ...) keeps the frozen phase's lock: its id extends that phase's id.
  const reopensOwn = (id: string): boolean => id === own || id.startsWith(`${own}-reopen-`);
  const idOk = input.reopenOf === undefined ? input.phaseId === own : reopensOwn(input.reopenOf.phaseId) && isReopenIdOf(input.phaseId, input.reopenOf.phaseId);
  if (!idOk) return `phaseId: ${input.phaseId.slice(0, 80)} is not the id the locked protocol names (${own})`;
  const bad = (input.priorLedger ?? []).find((e) => !(Number.isFinite(e.usd) && e.usd >= 0 && Number.isFinite(e.seconds) && e.seconds >= 0));
  if (bad !== undefined) return 'priorLedger: every carried-over line must have a finite, non-negative cost';
  if (input.resume !== undefined) {
    for (const problem of [...decisionRecordProblems(input, input.resume), ...gateProblems(input.resume)]) return `resume: ${problem}`;
  }
  return null;
}

/**
 * What the signed decisions in a state must account for: an approved amount equal to the last signed approval,
 * a budget gate passed only by an approval or a rejection, and a run only after an approving review. Used on a
 * resumed state (with decisionRecordProblems) and by `verify` on a frozen phase.
 */
export function gateProblems(state: PhaseState): string[] {
  const problems: string[] = [];
  const last = state.budget.approvals[state.budget.approvals.length - 1];
  const signed = last === undefined ? { micros: 0 } : parseUsd((last.signature.signed.content as { usd?: unknown }).usd);
  const micros = 'micros' in signed ? signed.micros : -1;
  if (state.budget.approvedMicros !== micros) problems.push(`budget.approvedMicros: ${state.budget.approvedMicros} is not the last signed approval (${micros})`);
  if (last !== undefined && last.usdMicros !== micros) problems.push('budget.approvals: a recorded amount differs from its signed amount');
  const pastBudget = state.status !== 'AWAITING_BUDGET';
  if (pastBudget && last === undefined && state.budget.rejection === null && !(state.status === 'CANCELLED' || state.status === 'FAILED')) {
    problems.push(`status: ${state.status} without a signed budget decision`);
  }
  const ran = ['RUNNING', 'BUDGET_HOLD', 'SCORING', 'FREEZING', 'FROZEN'].includes(state.status) || state.ledger.some((e) => e.earlierRun !== true);
  if (ran && (state.review === null || state.review.verdict === 'CHANGES_REQUESTED')) problems.push(`status: ${state.status} (or GPU attempts) without an approving signed review`);
  if (ran && last === undefined) problems.push(`status: ${state.status} (or GPU attempts) without a signed budget approval`);
  return problems;
}

/** A signed decision is good for a day (and may not come from more than ten minutes in the future). */
export const DECISION_MAX_AGE_MS = 24 * 3_600_000;

export function staleDecision(signedAt: string, nowMs: number): string | null {
  const at = Date.parse(signedAt);
  if (!Number.isFinite(at)) return 'signedAt: not a time';
  if (at > nowMs + 10 * 60_000) return 'signedAt: more than ten minutes in the future (check the signer\'s clock)';
  if (at < nowMs - DECISION_MAX_AGE_MS) return 'signedAt: signed more than 24 h ago; a stale decision is refused (sign it again)';
  return null;
}

/** The protocol hash a start input's own content gives (protocol, prompt hashes, pricing, people). */
export function lockHashOf(input: Pick<PhaseInput, 'protocol' | 'prompts' | 'pricing' | 'people'>): string {
  const { protocol, prompts, pricing, people } = input;
  return protocolHashOf({ protocol, promptSha256: { harmful: prompts.harmful.sha256, harmless: prompts.harmless.sha256, eval: prompts.eval.sha256 }, pricing, people });
}

/** Every recorded decision of a phase checked again from scratch; the problems found (none for an honest phase). */
export function decisionRecordProblems(lock: { phaseId: string; protocolHash: string; people: Record<string, string> }, state: PhaseState): string[] {
  return signaturesIn(state)
    .map((r) => recordProblem(r, { ...lock, run: state.run ?? null }))
    .filter((p): p is string => p !== null);
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
