/**
 * The human gates on a real dev server: validators refuse bad decisions with reasons before they enter
 * history, a resent decision is applied once, rejection and CHANGES_REQUESTED end the phase, and the state
 * survives continue-as-new. None of these reach the GPU step, so they run no model.
 */
import {
  approveBudget,
  decisionTarget,
  getPlan,
  getState,
  PhaseError,
  type PhaseClient,
  startPhase,
  submitReview,
  waitForStatus,
} from '../client/phases';
import { approveAs, reviewAs, rejectAs, sign } from './helpers/decisions';
import { phaseResult, recordHistory, serverPerFile, testProtocol, testWorker, waitFor } from './helpers/temporal';
import { historyEvents, scheduledActivities, updateAcceptedEvents } from './helpers/history';
import { rejection } from './helpers/errors';

const server = serverPerFile();

function refusal(p: Promise<unknown>): Promise<PhaseError> {
  return rejection(p, PhaseError);
}

test('refuses an approval from an unlisted approver, malformed amounts and amounts past the cap, with reasons', async () => {
  const { worker, pc } = await testWorker(server, 'refuse');
  const loaded = testProtocol('refuse');
  await worker.runUntil(async () => {
    const { phaseId } = await startPhase(pc, loaded);
    const unlisted = await refusal(approveAs(pc, phaseId, { by: 'mallory', usd: 1 }));
    expect(unlisted.exitCode).toBe(2);
    expect(unlisted.message).toContain('approver "mallory" is not listed');
    for (const usd of ['0', '-5', 'Infinity', 'NaN', '1e308', '0x10']) {
      const bad = await refusal(approveAs(pc, phaseId, { by: 'demo-approver', usd }));
      expect(bad.message).toContain('content.usd: must be');
    }
    const overCap = await refusal(approveAs(pc, phaseId, { by: 'demo-approver', usd: '150' }));
    expect(overCap.message).toContain("exceeds the protocol's budget.cap_usd $5.00");
    const early = await refusal(reviewAs(pc, phaseId, { by: 'demo-reviewer', verdict: 'APPROVED' }));
    expect(early.message).toContain('accepted only in AWAITING_REVIEW');

    const state = await getState(pc, phaseId);
    expect(state.status).toBe('AWAITING_BUDGET');
    expect(state.budget.approvals).toHaveLength(0);
    // Refused updates never enter history.
    expect(updateAcceptedEvents(await historyEvents(server.env.client, phaseId), 'approveBudget')).toHaveLength(0);
  });
});

test('applies a duplicate approval once, whether resent with the same update id or as a new request', async () => {
  const { worker, pc } = await testWorker(server, 'dup');
  const loaded = testProtocol('dup');
  await worker.runUntil(async () => {
    const { phaseId } = await startPhase(pc, loaded);
    await waitForEstimate(pc, phaseId);
    const signed = sign('demo-approver', { kind: 'approve-budget', ...(await decisionTarget(pc, phaseId)), content: { usd: '0.5', note: 'ok' } });
    const first = await approveBudget(pc, signed);
    expect(first.applied).toBe(true);
    // The same signed decision again (a retry after a lost reply): the same update id, and Temporal returns the
    // first call's own result.
    const again = await approveBudget(pc, signed);
    expect(again).toEqual(first);
    // Signed again with a new nonce and another note: the workflow recognises the same decision and does not reapply it.
    const resent = await approveAs(pc, phaseId, { by: 'demo-approver', usd: 0.5, note: 'resent from another terminal' });
    expect(resent.applied).toBe(false);

    const state = await waitForStatus(pc, phaseId, 'AWAITING_REVIEW', 30);
    expect(state.budget.approvals).toHaveLength(1);
    expect(state.events.filter((e) => e.kind === 'decision')).toHaveLength(1);
    // Starting the same protocol again is idempotent: same phase, not a second workflow.
    const restart = await startPhase(pc, loaded);
    expect(restart).toEqual({ phaseId, started: false, protocolHash: loaded.protocolHash });
  });
});

test('a budget rejection ends the phase REJECTED and nothing runs', async () => {
  const { worker, pc } = await testWorker(server, 'reject');
  await worker.runUntil(async () => {
    const { phaseId } = await startPhase(pc, testProtocol('reject'));
    const missingReason = await refusal(rejectAs(pc, phaseId, { by: 'demo-approver', reason: ' ' }));
    expect(missingReason.message).toContain('content.reason: must not be empty');
    await rejectAs(pc, phaseId, { by: 'demo-approver', reason: 'Phase-1 already overspent' });
    const state = await phaseResult(server.env.client, phaseId);
    expect(state.status).toBe('REJECTED');
    expect(state.budget.rejection?.reason).toBe('Phase-1 already overspent');
    expect(scheduledActivities(await historyEvents(server.env.client, phaseId), 'runModel')).toHaveLength(0);
    // A completed phase refuses further decisions and a restart of the same protocol.
    const late = await refusal(approveAs(pc, phaseId, { by: 'demo-approver', usd: 1 }));
    expect(late.message).toMatch(/has ended|accepted only/);
    const rerun = await refusal(startPhase(pc, testProtocol('reject')));
    expect(rerun.message).toContain('already ended as REJECTED');
  });
});

test('CHANGES_REQUESTED ends the phase after the reviewer has read the run plan', async () => {
  const { worker, pc } = await testWorker(server, 'changes');
  await worker.runUntil(async () => {
    const { phaseId } = await startPhase(pc, testProtocol('changes'));
    await approveAs(pc, phaseId, { by: 'demo-approver', usd: 1 });
    await waitForStatus(pc, phaseId, 'AWAITING_REVIEW', 30);
    const plan = await getPlan(pc, phaseId);
    expect(plan.commands).toHaveLength(2);
    expect(plan.stopConditions.join(' ')).toContain('BUDGET_HOLD');
    expect(plan.estimate?.totalUsd).toBeCloseTo(2 * 100 * 0.0000262, 8);
    const stranger = await refusal(reviewAs(pc, phaseId, { by: 'mallory', verdict: 'APPROVED' }));
    expect(stranger.message).toContain('reviewer "mallory" is not listed');
    // The approver may not also review (separate_duties), even if a protocol listed them as a reviewer.
    const approverReviews = await refusal(reviewAs(pc, phaseId, { by: 'demo-approver', verdict: 'APPROVED' }));
    expect(approverReviews.message).toContain('reviewer "demo-approver" is not listed');
    await reviewAs(pc, phaseId, { by: 'demo-reviewer', verdict: 'CHANGES_REQUESTED', ref: 'thread-42', notes: 'add a second layer' });
    const state = await phaseResult(server.env.client, phaseId);
    expect(state.status).toBe('CHANGES_REQUESTED');
    expect(state.review).toMatchObject({ by: 'demo-reviewer', verdict: 'CHANGES_REQUESTED', ref: 'thread-42' });
    recordHistory(server.env, phaseId, 'changes-requested');
    expect(scheduledActivities(await historyEvents(server.env.client, phaseId), 'runModel')).toHaveLength(0);
  });
});

test('state and applied decisions survive continue-as-new', async () => {
  const { worker, pc } = await testWorker(server, 'can');
  await worker.runUntil(async () => {
    const { phaseId } = await startPhase(pc, testProtocol('can'), { continueAsNewAfterEvents: 5 });
    const firstRun = (await server.env.client.workflow.getHandle(phaseId).describe()).runId;
    await approveAs(pc, phaseId, { by: 'demo-approver', usd: 0.25 });
    const state = await waitForStatus(pc, phaseId, 'AWAITING_REVIEW', 30);
    await waitFor(async () => (await server.env.client.workflow.getHandle(phaseId).describe()).runId !== firstRun);
    // The same decision sent to the new run is recognised as already applied.
    const resent = await approveAs(pc, phaseId, { by: 'demo-approver', usd: 0.25, note: 'resent after continue-as-new' });
    expect(resent.applied).toBe(false);
    const after = await getState(pc, phaseId);
    expect(after.continuedAsNew).toBeGreaterThanOrEqual(1);
    expect(after.budget).toEqual(state.budget);
    await reviewAs(pc, phaseId, { by: 'demo-reviewer', verdict: 'CHANGES_REQUESTED' });
    expect((await phaseResult(server.env.client, phaseId)).status).toBe('CHANGES_REQUESTED');
  });
});

test('decisions that arrive while phases continue as new are applied once and never fail a phase', async () => {
  // With a limit of 5 history events each run continues as new at once, so the phases churn through runs and a
  // review often lands in the first task of a run, before that run has checked the state it carries. That check
  // once compared against the state with the review already applied, and failed the phase (found by CI).
  const { worker, pc } = await testWorker(server, 'churn');
  await worker.runUntil(async () => {
    const phases = await Promise.all([...Array(8).keys()].map(() => startPhase(pc, testProtocol('churn'), { continueAsNewAfterEvents: 5 })));
    for (const { phaseId } of phases) {
      await approveAs(pc, phaseId, { by: 'demo-approver', usd: 0.25 });
      await waitForStatus(pc, phaseId, 'AWAITING_REVIEW', 30);
    }
    // Each signed review is sent twice at once, as a client that retries after a lost reply does: applied once.
    const reviews = await Promise.all(phases.map(async ({ phaseId }) => sign('demo-reviewer', { kind: 'review', ...(await decisionTarget(pc, phaseId)), content: { verdict: 'CHANGES_REQUESTED', ref: '', notes: '' } })));
    await Promise.all(reviews.flatMap((d) => [submitReview(pc, d), submitReview(pc, d)]));
    for (const { phaseId } of phases) {
      const result = await phaseResult(server.env.client, phaseId);
      expect(result.status).toBe('CHANGES_REQUESTED');
      expect(result.continuedAsNew).toBeGreaterThanOrEqual(1);
      expect(result.appliedDecisions).toHaveLength(2);
    }
  });
});

async function waitForEstimate(pc: PhaseClient, phaseId: string): Promise<void> {
  await waitFor(async () => (await getState(pc, phaseId)).estimate !== null);
}

test('no worker polling: a status query says so by kind (unavailable); once one polls, the phase goes on', async () => {
  const { worker, pc } = await testWorker(server, 'no-worker');
  const loaded = testProtocol('no-worker');
  // Started while no worker polls the queue (a worker restarting, or replaced after a crash).
  await startPhase(pc, loaded);
  // The server holds the query for a worker, then answers DEADLINE_EXCEEDED (about 30 s on the dev server).
  const err = await refusal(getState(pc, loaded.phaseId));
  expect(err.kind).toBe('unavailable');
  expect(err.message).toMatch(/no worker serves phase .* start one with `phasegate worker`/);
  await worker.runUntil(async () => {
    expect((await waitForStatus(pc, loaded.phaseId, 'AWAITING_BUDGET', 120)).status).toBe('AWAITING_BUDGET');
  });
});
