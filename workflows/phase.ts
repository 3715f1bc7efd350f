/**
 * The phase workflow: budget gate, review gate, one GPU run per model under a budget check, scoring, freeze.
 *
 * The workflow is a resumable state machine: everything it knows lives in `PhaseState`, which continue-as-new
 * carries into the next run, so the main loop can pick up from any state. Pure transitions live in
 * phase-logic.ts; this file wires them to Temporal (handlers, timers, activities).
 */
import {
  ActivityCancellationType,
  type ActivityOptions,
  ActivityFailure,
  allHandlersFinished,
  ApplicationFailure,
  CancellationScope,
  CancelledFailure,
  condition,
  ContinueAsNew,
  continueAsNew,
  isCancellation,
  log,
  patched,
  proxyActivities,
  type RetryPolicy,
  setCurrentDetails,
  setHandler,
  sleep,
  TimeoutFailure,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { PhaseActivities, ModelRunResult } from '../activities/types';
import type { ModelSpec } from '../protocols/schema';
import {
  approveBudgetUpdate,
  ErrorTypes,
  isTerminal,
  modelRunQueue,
  preflightQueue,
  planQuery,
  rejectBudgetUpdate,
  searchAttributes,
  stateQuery,
  submitReviewUpdate,
  type ApproveBudgetInput,
  type AttemptOutcome,
  type CallWindow,
  type PhaseInput,
  type PhaseState,
  type PhaseStatus,
  type RejectBudgetInput,
  type SubmitReviewInput,
} from './definitions';
import {
  applyApproveBudget,
  applyRejectBudget,
  applySubmitReview,
  checkBudget,
  gateContext,
  initialState,
  attemptWindow,
  ledgerEntryFor,
  ledgerEntryForWindows,
  mayHaveLaunched,
  retryDelaySeconds,
  runPlan,
  spentUsd,
  attemptTimeoutSeconds,
  attemptReserveUsd,
  attemptGrantUsd,
  type BudgetCheck,
  costUsd,
  startInputProblem,
  transition,
  validateApproveBudget,
  validateRejectBudget,
  validateSubmitReview,
} from './phase-logic';
import { announcedEvent, notifyPeople } from './notify';

// Every durability decision in one place. The model run's timeout comes from the protocol and the budget left, so
// that activity is proxied per attempt below; its retries are driven by the workflow (see runModels).
const { estimatePhase } = proxyActivities<PhaseActivities>({
  startToCloseTimeout: '2 minutes',
  retry: { maximumAttempts: 5, initialInterval: '2s', nonRetryableErrorTypes: [ErrorTypes.invalidInput, ErrorTypes.lockViolation] },
});
// Scoring and freeze are idempotent and come after the GPU money is spent: an outage of any length must not end
// the phase FAILED, so they retry without limit (at most a minute apart) until they succeed or fail for good.
const finalRetry: RetryPolicy = {
  // No maximumAttempts: unlimited.
  initialInterval: '5s',
  maximumInterval: '1 minute',
  nonRetryableErrorTypes: [ErrorTypes.invalidInput, ErrorTypes.lockViolation, ErrorTypes.alreadyFrozen],
};
// Scoring runs the runtime (numpy only, a second of CPU) and heartbeats every few seconds, so a cancellation reaches
// its process.
const { scorePhase } = proxyActivities<PhaseActivities>({ startToCloseTimeout: '10 minutes', heartbeatTimeout: '1 minute', retry: finalRetry });
// The freeze writes files for a few seconds, heartbeating between steps, so a worker that dies mid-freeze is
// noticed in a minute; it runs to the end even if the phase is cancelled.
const { freezePhase } = proxyActivities<PhaseActivities>({ startToCloseTimeout: '10 minutes', heartbeatTimeout: '1 minute', retry: finalRetry });
// The phase record outside Temporal's history (common/phase-records.ts): written at every change, retried
// without limit; a FROZEN record refuses a rerun of the phase (AlreadyFrozen, not retried).
const { verifyResume } = proxyActivities<PhaseActivities>({ startToCloseTimeout: '1 minute', retry: { initialInterval: '1s', maximumInterval: '1 minute', nonRetryableErrorTypes: [ErrorTypes.invalidInput] } });
// Stopping whatever still runs when the phase leaves RUNNING: retried without limit, since "nothing is live" must
// be established, not assumed (activities/release.ts).
const { releaseCompute } = proxyActivities<PhaseActivities>({ startToCloseTimeout: '2 minutes', retry: { initialInterval: '2s', maximumInterval: '1 minute' } });
// The CPU preflight of every model's spec before the first dispatch (activities/preflight.ts); an invalid spec
// is final (the phase fails before any GPU second), anything else is retried a few times. It has a queue of its own
// (seconds of CPU a model), so that new phases' estimates and paid phases' scorings never wait behind a batch of
// preflights (histories recorded before it existed replay on the phase queue); proxied at the call, where `patched`
// may be asked. It heartbeats while the runtime checks, so a preflight lost with its worker is tried again on
// another within a minute, not after the whole start-to-close timeout (the cluster test kills a worker mid-run).
const preflight: ActivityOptions = {
  startToCloseTimeout: '10 minutes',
  heartbeatTimeout: '1 minute',
  retry: { maximumAttempts: 5, initialInterval: '2s', nonRetryableErrorTypes: [ErrorTypes.invalidInput, ErrorTypes.lockViolation] },
};
const preflightModels: PhaseActivities['preflightModels'] = (args) =>
  proxyActivities<PhaseActivities>(patched('preflights-on-their-own-queue') ? { ...preflight, taskQueue: preflightQueue(workflowInfo().taskQueue) } : preflight).preflightModels(args);
const { recordPhase } = proxyActivities<PhaseActivities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1s', maximumInterval: '1 minute', nonRetryableErrorTypes: [ErrorTypes.alreadyFrozen] },
});

function modelRunner(timeoutSeconds: number): PhaseActivities['runModel'] {
  return proxyActivities<PhaseActivities>({
    // Model runs have a queue of their own, so that long launchers never starve other phases' steps (histories
    // recorded before it existed replay on the phase queue).
    ...(patched('model-runs-on-their-own-queue') ? { taskQueue: modelRunQueue(workflowInfo().taskQueue) } : {}),
    startToCloseTimeout: `${timeoutSeconds} seconds`,
    // The runner heartbeats every few seconds; a dead worker is noticed within this window.
    heartbeatTimeout: '45 seconds',
    // One Temporal attempt per workflow attempt: the workflow retries, so that every attempt gets a ledger line
    // and a budget check before it is dispatched.
    retry: { maximumAttempts: 1 },
    // Wait for the runner to stop its process, so that a cancelled attempt's seconds are measured and charged.
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  }).runModel;
}

const nowIso = (): string => new Date(Date.now()).toISOString();
/** A deep copy of plain data: an activity's input is serialized only when the activation ends. */
const snapshot = <T>(value: T): T => JSON.parse(JSON.stringify(value)) as T;

export async function phaseWorkflow(input: PhaseInput): Promise<PhaseState> {
  const protocol = input.protocol;
  // Anyone who reaches Temporal can start this workflow with any input: check what it claims before anything else.
  // A resumed state is accepted only on a run that continued another (not a cron or retry run, which also
  // carry a previous run id); its content is checked here and against the phase record below.
  const info = workflowInfo();
  const continued = info.continuedFromExecutionRunId !== undefined && info.cronSchedule === undefined && info.attempt === 1;
  const refused = startInputProblem(input, continued);
  if (refused !== null) throw ApplicationFailure.create({ type: ErrorTypes.invalidInput, message: `refused start input: ${refused}`, nonRetryable: true });
  if (input.resume?.run !== undefined && input.resume.run !== info.firstExecutionRunId) {
    throw ApplicationFailure.create({ type: ErrorTypes.invalidInput, message: 'refused start input: resume.run: the resumed state is of another run of this phase', nonRetryable: true });
  }
  const state: PhaseState = input.resume ?? initialState(input, nowIso());
  // What the previous run carried, copied before any handler can apply a decision to `state` (the same object):
  // a decision that arrives with this run's first task must not make the check below refuse the phase.
  const carried = input.resume === undefined ? undefined : snapshot(input.resume);
  // Decisions are bound to the run chain: after the copy above, so that a resumed state is checked as it was sent.
  state.run = info.firstExecutionRunId;
  const gate = gateContext(input, info.firstExecutionRunId);

  // ---- Handlers: validators check each signed decision before it enters history; handlers apply pure transitions --
  setHandler(stateQuery, () => state);
  setHandler(planQuery, () => runPlan(input, state));
  setHandler(approveBudgetUpdate, (i) => applyApproveBudget(gate, state, i, nowIso()), {
    validator: (i: ApproveBudgetInput) => refuseIf(validateApproveBudget(gate, state, i, Date.now())),
  });
  setHandler(rejectBudgetUpdate, (i) => applyRejectBudget(gate, state, i, nowIso()), {
    validator: (i: RejectBudgetInput) => refuseIf(validateRejectBudget(gate, state, i, Date.now())),
  });
  setHandler(submitReviewUpdate, (i) => applySubmitReview(gate, state, i, nowIso()), {
    validator: (i: SubmitReviewInput) => refuseIf(validateSubmitReview(gate, state, i, Date.now())),
  });

  // Search attributes are upserted only when the status changes, so history does not grow with re-checks.
  const searchable = input.publishSearchAttributes !== false;
  let published: PhaseStatus | null = null;
  const publish = (): void => {
    if (published === state.status) return;
    published = state.status;
    publishState(state, searchable);
  };
  const moveTo = (status: PhaseStatus, why: string): void => {
    const before = state.status;
    // An end is final: a model's step that was under way when a rejection (or a failure) ended the phase must not
    // move it back to BUDGET_HOLD, which once sent a rejected phase on to scoring and FAILED (an adversarial probe
    // found it; histories recorded before replay without this).
    if (isTerminal(before) && status !== before && patched('an-end-is-final')) return;
    transition(state, status, nowIso(), why);
    publish();
    const event = announcedEvent(status);
    if (event !== undefined && before !== status) notifyPeople(state, event, { message: why, at: nowIso() });
  };
  publish();
  // Writes the phase record when anything it holds has changed since the last write.
  let recorded = '';
  const persist = async (): Promise<void> => {
    const mark = recordMark(state);
    if (mark === recorded) return;
    // A snapshot: the activity's input is serialized when the activation ends, and a decision applied in between
    // must not slip into a record of the state before it.
    await recordPhase({ input: { ...input, resume: undefined }, state: snapshot(state) });
    recorded = mark;
  };

  if (carried !== undefined) {
    // Before anything else, and before anything is recorded: the run this one continues must be this phase's own.
    await verifyResume({ phaseId: input.phaseId, previousRunId: info.continuedFromExecutionRunId!, taskQueue: info.taskQueue, resume: carried });
  }
  try {
    await persist();
    // The estimate first, whatever the state: a decision may already have arrived with the start.
    if (state.estimate === null) state.estimate = await estimatePhase({ phaseId: input.phaseId, protocol, pricing: input.pricing });
    while (!isTerminal(state.status)) {
      await persist();
      await maybeContinueAsNew(input, state, persist);
      switch (state.status) {
        case 'AWAITING_BUDGET':
          // The decision handlers make the transition (see phase-logic); here the loop waits, then publishes it.
          await waitForGate(state, 'budget', protocol.budget.deadline_hours, () => state.status !== 'AWAITING_BUDGET');
          publish();
          break;
        case 'AWAITING_REVIEW':
          await waitForGate(state, 'review', protocol.review.deadline_hours, () => state.status !== 'AWAITING_REVIEW');
          publish();
          break;
        case 'RUNNING':
        case 'BUDGET_HOLD':
          // Before the first dispatch (histories recorded before the preflight existed replay without it).
          if (state.preflight === undefined && !state.ledger.some((e) => e.earlierRun !== true) && patched('preflight-before-dispatch')) {
            state.preflight = await preflightModels({ phaseId: input.phaseId, protocol, prompts: input.prompts });
            for (const { modelKey, why } of state.preflight.notChecked) state.events.push({ at: nowIso(), kind: 'note', message: `preflight: ${modelKey} not checked before dispatch: ${why}` });
          }
          await runModels(input, state, moveTo, publish, persist);
          await releaseLeftovers(input, state, isTerminal(state.status) ? state.status : 'every model ran');
          if (!isTerminal(state.status)) moveTo('SCORING', 'every model ran');
          break;
        case 'SCORING': {
          const results: Record<string, string> = {};
          for (const m of state.models) if (m.resultPath !== undefined) results[m.modelKey] = m.resultPath;
          state.score = await scorePhase({ phaseId: input.phaseId, protocol, results });
          moveTo('FREEZING', `parity_pass ${String(state.score.parityPass)}`);
          break;
        }
        case 'FREEZING':
          // Not cancellable: a cancel arriving now must not leave a half-recorded freeze behind.
          state.freeze = await CancellationScope.nonCancellable(() => freezePhase({ input: { ...input, resume: undefined }, state }));
          moveTo('FROZEN', `artifacts frozen in ${state.freeze.dir}`);
          break;
      }
    }
  } catch (err) {
    if (err instanceof ContinueAsNew) throw err;
    if (isCancellation(err) && state.status === 'FREEZING' && patched('freeze-finishes-after-a-cancel')) {
      // The cancel arrived after scoring, before the freeze itself began (while the state was being recorded):
      // the phase is FREEZING, so the freeze finishes, as it would have had the cancel come a moment later.
      await CancellationScope.nonCancellable(async () => {
        state.freeze = await freezePhase({ input: { ...input, resume: undefined }, state });
        moveTo('FROZEN', `artifacts frozen in ${state.freeze.dir} (a cancel arrived while freezing)`);
      });
    } else if (isCancellation(err) && state.status !== 'FROZEN') {
      // Recording the outcome must not itself be cancelled.
      await CancellationScope.nonCancellable(async () => {
        for (const m of state.models) if (m.status === 'running') m.status = 'cancelled';
        await releaseLeftovers(input, state, 'cancelled');
        moveTo('CANCELLED', 'cancelled by a user');
        await persist();
        await condition(allHandlersFinished);
      });
      throw err;
    } else if (!isCancellation(err) && !(err instanceof ActivityFailure || err instanceof ApplicationFailure)) {
      // A bug in workflow code (a TypeError, say) fails the workflow task instead, so a fixed deployment resumes.
      throw err;
    } else if (state.status !== 'FROZEN') {
      await releaseLeftovers(input, state, 'failed');
      state.failure = errorMessage(err);
      moveTo('FAILED', state.failure);
      await CancellationScope.nonCancellable(() => persist());
      throw ApplicationFailure.create({ type: ErrorTypes.phaseFailed, message: state.failure, details: [state], nonRetryable: true });
    }
  }
  // A frozen phase ends FROZEN whatever arrives late: a cancel during the freeze (or now) changes nothing.
  await CancellationScope.nonCancellable(async () => {
    await persist();
    await condition(allHandlersFinished);
  });
  if (state.status === 'FAILED') {
    throw ApplicationFailure.create({ type: ErrorTypes.phaseFailed, message: state.failure ?? 'failed', details: [state], nonRetryable: true });
  }
  return state;
}

/** What the phase record holds, in a few numbers: when it changes, the record is written again. */
function recordMark(s: PhaseState): string {
  return [s.status, s.estimate === null, s.budget.approvals.length, s.budget.rejection !== null, s.review !== null, s.ledger.length, s.score !== null, s.freeze !== null, s.events.length].join('|');
}

function refuseIf(reason: string | null): void {
  if (reason !== null) throw ApplicationFailure.create({ type: ErrorTypes.decisionRefused, message: reason, nonRetryable: true });
}

/** Waits for a gate; each time its deadline passes, records a reminder and keeps waiting. */
async function waitForGate(
  state: PhaseState,
  gate: 'budget' | 'review',
  deadlineHours: number | null,
  decided: () => boolean,
): Promise<void> {
  // A budget hold was announced as such when the phase entered it.
  if (!decided() && state.status !== 'BUDGET_HOLD') notifyPeople(state, 'gate-opened', { gate, message: `the ${gate} gate waits for a decision (${state.status})`, at: nowIso() });
  if (deadlineHours === null) {
    await condition(decided);
    return;
  }
  for (let reminder = 1; !(await condition(decided, Math.round(deadlineHours * 3_600_000))); reminder++) {
    const message = `${gate} decision overdue: no decision ${deadlineHours * reminder} h after the gate opened (reminder ${reminder})`;
    state.events.push({ at: nowIso(), kind: 'reminder', message });
    log.warn(message, { phaseId: state.phaseId, gate });
    notifyPeople(state, 'reminder', { gate, message, at: nowIso() });
  }
}

type MoveTo = (s: PhaseStatus, why: string) => void;

/** Runs every model that has not succeeded yet, each attempt behind a budget check. */
async function runModels(input: PhaseInput, state: PhaseState, moveTo: MoveTo, publish: () => void, persist: () => Promise<void>): Promise<void> {
  // Side by side (on Modal each model has its own GPU); histories recorded before replay one after the other.
  if (patched('models-side-by-side')) await runModelsSideBySide(input, state, moveTo, persist);
  else await runModelsOneByOne(input, state, moveTo, publish, persist);
}

/** What a model's attempts share: its estimate per attempt, its price, its progress. */
function modelPlan(input: PhaseInput, state: PhaseState, model: ModelSpec): { usdPerSecond: number; attemptUsd: number; progress: PhaseState['models'][number] | undefined } {
  const estimate = state.estimate?.models.find((e) => e.modelKey === model.key);
  const usdPerSecond = input.pricing.usdPerSecond[model.gpu] ?? 0;
  return { usdPerSecond, attemptUsd: attemptReserveUsd(estimate?.usd ?? 0, usdPerSecond), progress: state.models.find((m) => m.modelKey === model.key) };
}

/**
 * Every model at once, each through its own attempts, under one budget rule kept exact: an attempt in flight holds
 * what it may spend at most (its time limit times its GPU's price), and before each dispatch, spent + what the
 * attempts in flight hold + this attempt's estimate must fit the approval. The attempt's own limit comes out of what
 * is left, less room for the models still waiting (`attemptGrantUsd`), so together they can never spend past the
 * approval. A model that does not fit waits alone; when nothing is in flight and a model still waits, the phase is
 * in BUDGET_HOLD. The first model to fail for good (or a rejection) stops the others.
 *
 * Histories recorded before the limits were held replay the older rule, which held each attempt's estimate only:
 * the first attempt's limit then ignored the second, and two attempts together could spend up to almost twice the
 * approval (found by an adversarial probe on the Modal double).
 */
async function runModelsSideBySide(input: PhaseInput, state: PhaseState, moveTo: MoveTo, persist: () => Promise<void>): Promise<void> {
  const protocol = input.protocol;
  const limitsHeld = patched('side-by-side-limits-held');
  const inFlight = new Map<string, number>();
  let changes = 0; // bumped whenever an attempt ends: a waiting model re-checks
  const others = (key: string): number => [...inFlight].reduce((sum, [k, usd]) => (k === key ? sum : sum + usd), 0);
  const scope = new CancellationScope();
  let ended = false; // FAILED or REJECTED: the other models stop
  const isDone = (key: string): boolean => succeeded(state.models.find((p) => p.modelKey === key) ?? { status: '' });
  const todo = protocol.models.filter((m) => !isDone(m.key));
  /** The reserves of the other models that still wait to dispatch. */
  const waitingUsd = (key: string): number =>
    todo.filter((m) => m.key !== key && !inFlight.has(m.key) && !isDone(m.key)).reduce((sum, m) => sum + modelPlan(input, state, m).attemptUsd, 0);

  // The phase has ended for every model: one failed for good, or a decision ended it (a rejection arrives while
  // one model waits at the gate and others wait elsewhere: each must see it, not only the one at the gate).
  const over = (): boolean => ended || (limitsHeld && isTerminal(state.status));
  let releasing = 0; // leftovers being released: releaseCompute stops every model's calls, so nothing dispatches

  const runOne = async (model: ModelSpec): Promise<void> => {
    const { usdPerSecond, attemptUsd, progress } = modelPlan(input, state, model);
    if (progress === undefined) return;
    while (!succeeded(progress) && !over()) {
      const attempt = progress.attempts + 1;
      if (attempt > protocol.retry.max_attempts) {
        progress.status = 'failed';
        state.failure = progress.lastError ?? 'attempts exhausted';
        moveTo('FAILED', `${model.key}: ${protocol.retry.max_attempts} attempts failed; last error: ${progress.lastError ?? 'unknown'}`);
        ended = true;
        return;
      }
      const need = (): BudgetCheck => checkBudget(state, attemptUsd, others(model.key));
      for (let check = need(); !check.ok; check = need()) {
        const seen = changes;
        const approvedBefore = state.budget.approvedUsd;
        if (inFlight.size > 0 || (limitsHeld && releasing > 0)) {
          // Other attempts may leave room when they end: wait for that, not for a person.
          await condition(() => changes !== seen || over());
        } else {
          if (limitsHeld) releasing++;
          try {
            await releaseLeftovers(input, state, 'budget hold');
          } finally {
            if (limitsHeld) {
              releasing--;
              changes++;
            }
          }
          if (over() && patched('an-end-is-final')) return; // rejected, or another model failed, meanwhile
          if (limitsHeld && inFlight.size > 0) continue; // another model dispatched meanwhile: check again
          moveTo('BUDGET_HOLD', `${model.key} attempt ${attempt} needs $${check.neededUsd.toFixed(4)} (spent $${check.spentUsd.toFixed(4)} + estimate $${check.nextUsd.toFixed(4)}), approved $${check.approvedUsd.toFixed(4)}`);
          await persist();
          // A larger approval, a rejection, or another model's attempt ending (one that was in its back-off).
          await waitForGate(state, 'budget', protocol.budget.deadline_hours, () => state.budget.approvedUsd > approvedBefore || state.budget.rejection !== null || changes !== seen || over());
          if (state.budget.rejection !== null && !ended) {
            moveTo('REJECTED', `budget rejected during hold by ${state.budget.rejection.by}`);
            ended = true;
          }
        }
        if (over()) return;
      }
      if (limitsHeld && releasing > 0) {
        // Not while another model's leftovers are being stopped (its releaseCompute would stop this call too).
        await condition(() => releasing === 0 || over());
        continue;
      }
      moveTo('RUNNING', `${model.key} attempt ${attempt}`);
      const availableUsd = state.budget.approvedUsd - spentUsd(state.ledger) - others(model.key);
      let limit: number;
      if (limitsHeld) {
        limit = attemptTimeoutSeconds(model.timeout_minutes, attemptGrantUsd(availableUsd, attemptUsd, waitingUsd(model.key)), usdPerSecond);
        inFlight.set(model.key, costUsd(limit, usdPerSecond));
      } else {
        inFlight.set(model.key, attemptUsd);
        limit = attemptTimeoutSeconds(model.timeout_minutes, availableUsd, usdPerSecond);
      }
      const held = inFlight.get(model.key)!;
      const linesBefore = state.ledger.length;
      let done: AttemptResult;
      try {
        done = await runAttempt(input, state, model, attempt, limit, persist);
      } finally {
        inFlight.delete(model.key);
        changes++;
      }
      const next = settleAttempt(done, state, model.key, moveTo);
      if (next === 'succeeded') continue;
      if (next === 'failed') {
        ended = true;
        return;
      }
      if (limitsHeld) {
        // A detached call of this attempt may run on through the back-off (the next attempt reattaches to it):
        // what it may still spend (its hold less what this model's lines have charged since) stays held until then.
        // (Not carried into the next attempt's hold: that would hold most of the approval twice; a reattached
        // call's back-off seconds are charged to the next attempt, a gap the README names.)
        const charged = state.ledger.slice(linesBefore).reduce((sum, e) => (e.modelKey === model.key ? sum + e.usd : sum), 0);
        inFlight.set(model.key, Math.max(0, held - charged));
      }
      await sleep(Math.round(retryDelaySeconds(protocol.retry, attempt + 1) * 1000));
      if (limitsHeld) {
        inFlight.delete(model.key);
        changes++;
      }
    }
  };

  // Settled, not raced: every model's attempt must have its ledger line before the phase moves on.
  const outcomes = await scope.run(() =>
    Promise.allSettled(
      todo.map(async (m) => {
        await runOne(m);
        if (over()) scope.cancel(); // the phase failed or was rejected: the other models' attempts stop
      }),
    ),
  );
  for (const o of outcomes) {
    // Attempts stopped because another model ended the phase are on the ledger; a user's cancel goes on up.
    if (o.status === 'rejected' && !(over() && isCancellation(o.reason))) throw o.reason;
  }
}

/** Every model one after the other (the order of histories recorded before models ran side by side). */
async function runModelsOneByOne(input: PhaseInput, state: PhaseState, moveTo: MoveTo, publish: () => void, persist: () => Promise<void>): Promise<void> {
  const protocol = input.protocol;
  for (const model of protocol.models) {
    const { usdPerSecond, attemptUsd, progress } = modelPlan(input, state, model);
    if (progress === undefined || progress.status === 'succeeded') continue;

    while (!succeeded(progress)) {
      const attempt = progress.attempts + 1;
      if (attempt > protocol.retry.max_attempts) {
        progress.status = 'failed';
        moveTo('FAILED', `${model.key}: ${protocol.retry.max_attempts} attempts failed; last error: ${progress.lastError ?? 'unknown'}`);
        state.failure = progress.lastError ?? 'attempts exhausted';
        return;
      }
      // The budget gate before every dispatch: overspending can no longer happen silently.
      for (let check = checkBudget(state, attemptUsd); !check.ok; check = checkBudget(state, attemptUsd)) {
        await releaseLeftovers(input, state, 'budget hold');
        moveTo('BUDGET_HOLD', `${model.key} attempt ${attempt} needs $${check.neededUsd.toFixed(4)} (spent $${check.spentUsd.toFixed(4)} + estimate $${check.nextUsd.toFixed(4)}), approved $${check.approvedUsd.toFixed(4)}`);
        await persist();
        const approvedBefore = state.budget.approvedUsd;
        await waitForGate(state, 'budget', protocol.budget.deadline_hours, () => state.budget.approvedUsd > approvedBefore || state.budget.rejection !== null);
        if (state.budget.rejection !== null) {
          moveTo('REJECTED', `budget rejected during hold by ${state.budget.rejection.by}`);
          return;
        }
      }
      moveTo('RUNNING', `${model.key} attempt ${attempt}`);
      // The attempt may not outlive the budget left: it is stopped (and charged) when the approval runs out.
      const done = await runAttempt(input, state, model, attempt, attemptTimeoutSeconds(model.timeout_minutes, state.budget.approvedUsd - spentUsd(state.ledger), usdPerSecond), persist);
      const next = settleAttempt(done, state, model.key, moveTo);
      if (next === 'succeeded') continue;
      if (next === 'failed') return;
      publish();
      await sleep(Math.round(retryDelaySeconds(protocol.retry, attempt + 1) * 1000));
    }
  }
}

/** Read through a call: runAttempt sets the status, which TypeScript's narrowing in the loops cannot see. */
const succeeded = (p: { status: string }): boolean => p.status === 'succeeded';

/**
 * What an ended attempt means for its model: done, failed for good (the phase fails), or to be retried after the
 * back-off. A cancelled attempt is thrown on: the phase is being cancelled.
 */
function settleAttempt(done: AttemptResult, state: PhaseState, modelKey: string, moveTo: MoveTo): 'succeeded' | 'failed' | 'retry' {
  const progress = state.models.find((m) => m.modelKey === modelKey)!;
  if (done.outcome === 'succeeded') return 'succeeded';
  if (done.outcome === 'cancelled') throw done.failure;
  if (isNonRetryable(done.failure)) {
    progress.status = 'failed';
    state.failure = `${modelKey}: ${done.error ?? 'failed'}`;
    moveTo('FAILED', state.failure);
    return 'failed';
  }
  progress.status = 'pending';
  return 'retry';
}

interface AttemptResult {
  outcome: AttemptOutcome;
  failure: unknown;
  error: string | undefined;
}

/** One attempt of one model: dispatched with its time limit, then its ledger line and event, recorded at once. */
async function runAttempt(input: PhaseInput, state: PhaseState, model: ModelSpec, attempt: number, limitSeconds: number, persist: () => Promise<void>): Promise<AttemptResult> {
  const protocol = input.protocol;
  const progress = state.models.find((m) => m.modelKey === model.key)!;
  const usdPerSecond = input.pricing.usdPerSecond[model.gpu] ?? 0;
  const runModel = modelRunner(limitSeconds);
  progress.status = 'running';
  progress.attempts = attempt;
  const scheduledAtMs = Date.now();
  let outcome: AttemptOutcome = 'succeeded';
  let measured: number | null = null;
  let result: ModelRunResult | null = null;
  let failure: unknown = null;
  try {
    const container = input.pricing.container === undefined ? undefined : { cpuCores: input.pricing.container.cpuCores, memoryGib: input.pricing.container.memoryGib };
    result = await runModel({ phaseId: input.phaseId, protocol, protocolHash: input.protocolHash, prompts: input.prompts, modelKey: model.key, attempt, container });
    measured = result.measuredSeconds;
  } catch (err) {
    failure = err;
    outcome = isCancellation(err) ? 'cancelled' : err instanceof ActivityFailure && err.cause instanceof TimeoutFailure ? 'timed_out' : 'failed';
    measured = measuredSecondsOf(err);
  }
  const error = failure === null ? undefined : errorMessage(failure);
  const backendIds = result?.backendIds ?? backendIdsOf(failure);
  // From when the run began on the worker, if it said so; an attempt that never reported is charged from its
  // scheduling (an upper bound).
  const attemptSpan = attemptWindow(scheduledAtMs, result?.startedAtMs ?? startedAtOf(failure), Date.now());
  const windows = result?.windows ?? windowsOf(failure);
  const rate = (resource: CallWindow['resource']): number => input.pricing.usdPerSecond[resource === 'cpu' ? 'cpu' : model.gpu] ?? usdPerSecond;
  state.ledger.push(
    // A remote backend that reported its calls' billable windows is charged those, each call-second once
    // (histories recorded before windows existed replay the attempt's own window).
    windows.length > 0 && patched('ledger-from-call-windows')
      ? ledgerEntryForWindows(state.ledger, { modelKey: model.key, attempt, gpu: model.gpu, outcome, backendIds, error, ...attemptSpan }, windows, rate)
      : ledgerEntryFor({ modelKey: model.key, attempt, gpu: model.gpu, usdPerSecond, outcome, measuredSeconds: measured, backendIds, error, ...attemptSpan }),
  );
  Object.assign(progress.backendIds, backendIds);
  state.events.push({ at: nowIso(), kind: 'attempt', message: `${model.key} attempt ${attempt}: ${outcome}${error ? ` (${error})` : ''}` });
  // Every attempt's line is on the record before anything else happens (a cancel, a retry, a hold).
  await CancellationScope.nonCancellable(() => persist());
  if (result !== null) {
    progress.status = 'succeeded';
    progress.resultPath = result.resultPath;
  } else {
    progress.lastError = error;
  }
  return { outcome, failure, error };
}

/**
 * The one rule of money on a remote backend: when the phase leaves RUNNING, nothing of it still runs. A detached
 * attempt (its worker stopped) or a dead worker can leave a paid call behind that no attempt will reattach to; this
 * stops every one still recorded, and puts the time it may have run since its attempt's ledger line ended on the
 * ledger ("observed", an upper bound). Not cancellable; only after an attempt was dispatched.
 */
async function releaseLeftovers(input: PhaseInput, state: PhaseState, why: string): Promise<void> {
  // Histories recorded before this step existed replay without it.
  if (!patched('release-compute-on-leaving-running') || !mayHaveLaunched(state)) return;
  const { stopped } = await CancellationScope.nonCancellable(() => releaseCompute({ phaseId: input.phaseId, protocol: input.protocol }));
  const endedAtMs = Date.now();
  for (const { modelKey, ids, windows } of stopped) {
    state.events.push({ at: nowIso(), kind: 'note', message: `${modelKey}: ${ids.join(', ')} still running when the phase left RUNNING (${why}); stopped` });
    const model = input.protocol.models.find((m) => m.key === modelKey);
    const last = [...state.ledger].reverse().find((e) => e.modelKey === modelKey);
    if (model === undefined || last === undefined) continue; // nothing of this run to extend: noted above
    const usdPerSecond = input.pricing.usdPerSecond[model.gpu] ?? 0;
    const line = { modelKey, attempt: last.attempt, gpu: model.gpu, outcome: 'cancelled' as const, backendIds: { stopped: ids.join(',') }, error: `still running when the phase left RUNNING (${why}); stopped` };
    state.ledger.push(
      // The stopped calls' windows, less what earlier lines charged of them; else from the end of the model's last line.
      windows !== undefined && windows.length > 0 && patched('ledger-from-call-windows')
        ? ledgerEntryForWindows(state.ledger, { ...line, startedAtMs: Date.parse(last.endedAt), endedAtMs }, windows, () => usdPerSecond)
        : ledgerEntryFor({ ...line, usdPerSecond, measuredSeconds: null, startedAtMs: Date.parse(last.endedAt), endedAtMs }),
    );
  }
}

/** Makes the state visible outside: search attributes for filtering, current details for the Temporal UI. */
function publishState(state: PhaseState, searchable: boolean): void {
  if (searchable) {
    upsertSearchAttributes([
      { key: searchAttributes.phaseName, value: state.phaseName },
      { key: searchAttributes.phaseStatus, value: state.status },
      { key: searchAttributes.protocolHash, value: state.protocolHash },
    ]);
  }
  setCurrentDetails(`**${state.status}** · spent $${spentUsd(state.ledger).toFixed(4)} of $${state.budget.approvedUsd.toFixed(2)} approved`);
}

/** Continue-as-new at a stable point, before history grows large; the state travels in the input. */
async function maybeContinueAsNew(input: PhaseInput, state: PhaseState, persist: () => Promise<void>): Promise<void> {
  const info = workflowInfo();
  const limit = input.continueAsNewAfterEvents;
  if (!info.continueAsNewSuggested && !(limit !== undefined && info.historyLength >= limit)) return;
  await condition(allHandlersFinished);
  state.continuedAsNew += 1;
  state.events.push({ at: nowIso(), kind: 'note', message: `continued as new after ${info.historyLength} history events` });
  await persist();
  await continueAsNew<typeof phaseWorkflow>({ ...input, resume: state });
}

function causeOf(err: unknown): unknown {
  return err instanceof ActivityFailure ? err.cause : err;
}

function isNonRetryable(err: unknown): boolean {
  const cause = causeOf(err);
  return cause instanceof ApplicationFailure && (cause.nonRetryable || cause.type === ErrorTypes.invalidInput || cause.type === ErrorTypes.lockViolation || cause.type === ErrorTypes.missingCredentials);
}

/** Runners attach `{ measuredSeconds, backendIds }` as the first detail of their failures and cancellations. */
function firstDetail(err: unknown): Record<string, unknown> | null {
  const cause = causeOf(err);
  const details = cause instanceof ApplicationFailure || cause instanceof CancelledFailure ? cause.details : undefined;
  const first: unknown = details?.[0];
  return first !== null && typeof first === 'object' ? (first as Record<string, unknown>) : null;
}

function measuredSecondsOf(err: unknown): number | null {
  const v = firstDetail(err)?.measuredSeconds;
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

function startedAtOf(err: unknown): number | undefined {
  const v = firstDetail(err)?.startedAtMs;
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

function backendIdsOf(err: unknown): Record<string, string> {
  const v = firstDetail(err)?.backendIds ?? lastHeartbeatOf(err)?.backendIds;
  return v !== null && typeof v === 'object' ? (v as Record<string, string>) : {};
}

/** A timed-out attempt (its worker died) says nothing itself; its last heartbeat named the remote call it ran. */
function lastHeartbeatOf(err: unknown): Record<string, unknown> | null {
  const cause = causeOf(err);
  const details: unknown = cause instanceof TimeoutFailure ? cause.lastHeartbeatDetails : undefined;
  return details !== null && typeof details === 'object' ? (details as Record<string, unknown>) : null;
}

/** The remote calls' billable windows a runner attached to its failure (Modal), checked field by field. */
function windowsOf(err: unknown): CallWindow[] {
  const v = firstDetail(err)?.windows;
  if (!Array.isArray(v)) return [];
  return v.filter((w): w is CallWindow => w !== null && typeof w === 'object' && typeof (w as CallWindow).callId === 'string' && Number.isFinite((w as CallWindow).fromMs) && Number.isFinite((w as CallWindow).toMs));
}

function errorMessage(err: unknown): string {
  const cause = causeOf(err);
  if (cause instanceof Error) return cause.message;
  return String(cause);
}
