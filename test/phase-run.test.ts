/**
 * A whole phase on a real dev server with the real Python runtime on tiny models: a budget hold that dispatches
 * nothing until re-approval, the freeze with its manifest, `verify`, a frozen phase refusing reruns, reopen.
 * The history of this run is what test/histories/ holds for the replay test (RECORD_HISTORIES=1 rewrites it).
 */
import { chmodSync, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  getState,
  PhaseError,
  reopenPhase,
  startPhase,
  verifyPhase,
  waitForStatus,
} from '../client/phases';
import { approveAs, reviewAs } from './helpers/decisions';
import { renderManifest } from '../activities/manifest';
import { spentUsd } from '../workflows/phase-logic';
import { modelRunQueue, preflightQueue } from '../workflows/definitions';
import { activityQueues, activityTimeouts, historyEvents, scheduledActivities, updateAcceptedEvents } from './helpers/history';
import { recordHistory, serverPerFile, testProtocol, testWorker } from './helpers/temporal';

const server = serverPerFile();

test('holds a GPU attempt that would exceed the approval, dispatches nothing while held, then runs to FROZEN', async () => {
  const { worker, pc } = await testWorker(server, 'run');
  const loaded = testProtocol('run', { methods: ['nnsight', 'hooks', 'pyvene'] });
  const perModelEstimate = 100 * 0.0000262;

  await worker.runUntil(async () => {
    const { phaseId } = await startPhase(pc, loaded);
    // Enough for the first model's estimate, not for the first model's real cost plus the second's estimate.
    await approveAs(pc, phaseId, { by: 'demo-approver', usd: perModelEstimate + 0.00005 });
    await reviewAs(pc, phaseId, { by: 'demo-reviewer', verdict: 'APPROVED', ref: 'thread-1' });

    const held = await waitForStatus(pc, phaseId, 'BUDGET_HOLD', 180);
    expect(held.models.map((m) => m.status)).toEqual(['succeeded', 'pending']);
    expect(held.ledger).toHaveLength(1);
    expect(held.ledger[0]).toMatchObject({ modelKey: 'tiny-qwen2', attempt: 1, outcome: 'succeeded', secondsBasis: 'measured' });
    // While held, nothing is dispatched: still one runModel in history, a few seconds later too.
    expect(scheduledActivities(await historyEvents(server.env.client, phaseId), 'runModel')).toHaveLength(1);
    await new Promise((r) => setTimeout(r, 3000));
    expect(scheduledActivities(await historyEvents(server.env.client, phaseId), 'runModel')).toHaveLength(1);

    // A re-approval must raise the amount; then the second model runs.
    const low = await approveAs(pc, phaseId, { by: 'demo-approver', usd: 0.001 }).catch((e: unknown) => e);
    expect(low).toBeInstanceOf(PhaseError);
    expect((low as PhaseError).message).toContain('must exceed the approved');
    await approveAs(pc, phaseId, { by: 'demo-approver', usd: 0.05, note: 'second model' });
    const frozen = await waitForStatus(pc, phaseId, 'FROZEN', 240);

    const events = await historyEvents(server.env.client, phaseId);
    const runs = scheduledActivities(events, 'runModel');
    const approvals = updateAcceptedEvents(events, 'approveBudget');
    expect(runs).toHaveLength(2);
    expect(approvals).toHaveLength(2);
    expect(runs[1]!.eventId).toBeGreaterThan(approvals[1]!);

    // The ledger: one entry per real attempt, totals consistent with the approvals.
    expect(frozen.ledger.map((e) => [e.modelKey, e.attempt, e.outcome])).toEqual([
      ['tiny-qwen2', 1, 'succeeded'],
      ['tiny-llama', 1, 'succeeded'],
    ]);
    expect(spentUsd(frozen.ledger)).toBeLessThanOrEqual(0.05);
    expect(frozen.events.some((e) => e.message.includes('BUDGET_HOLD'))).toBe(true);

    // Scoring and the freeze: real parity of the three libraries on two architectures.
    expect(frozen.score?.models.map((m) => m.modelKey)).toEqual(['tiny-llama', 'tiny-qwen2']);
    for (const m of frozen.score!.models) {
      expect(Object.keys(m.methods).sort()).toEqual(['hooks', 'nnsight', 'pyvene']);
      expect(m.outputsIdentical).toBe(true);
      expect(m.failures).toEqual([]);
    }
    expect(frozen.score!.parityPass).toBe(true);
    const dir = frozen.freeze!.dir;
    // Every file the proof reads is frozen: the units' directions, the reference's and the native reads'.
    const proofFiles = ['directions/tiny-qwen2/hooks_r0.npy', 'directions/tiny-qwen2/reference.npy', 'directions/tiny-qwen2/native_pyvene_read.npy'];
    for (const f of ['MANIFEST.sha256', 'closeout.md', 'parity.svg', 'cost.svg', 'score.json', 'phase.json', 'models/tiny-qwen2.json', ...proofFiles]) {
      expect(existsSync(path.join(dir, f))).toBe(true);
    }
    expect(statSync(path.join(dir, 'closeout.md')).mode & 0o222).toBe(0);
    const artifact = JSON.parse(readFileSync(path.join(dir, 'models', 'tiny-qwen2.json'), 'utf8')) as { provenance: Record<string, unknown>; ledger: unknown[] };
    expect(artifact.provenance.git_commit).toMatch(/^[0-9a-f]{40}$|^unknown/);
    expect(typeof artifact.provenance.git_dirty).toBe('boolean');
    expect(artifact.provenance.protocol_hash).toBe(loaded.protocolHash);
    expect(artifact.ledger).toHaveLength(1);
    const report = readFileSync(frozen.freeze!.reportPath, 'utf8');
    for (const heading of ['## 1. Scope Statement', '## 2. Protocol Lock', '## 4. Canonical Artifacts', '### Cross-Model Closure', '## 7. Provenance', '## 8. Limitations', '## 9. Next-Phase Handoff']) {
      expect(report).toContain(heading);
    }

    // verify: intact, then a changed artifact is named.
    expect((await verifyPhase(pc, phaseId)).ok).toBe(true);
    const tampered = path.join(dir, 'models', 'tiny-llama.json');
    chmodSync(tampered, 0o644);
    writeFileSync(tampered, readFileSync(tampered, 'utf8').replace('"succeeded"', '"failed"'));
    const check = await verifyPhase(pc, phaseId);
    expect(check.ok).toBe(false);
    expect(check.changed).toEqual(['models/tiny-llama.json']);
    // Regenerating the manifest to match does not help: its own hash is in the workflow's history.
    const manifest = path.join(dir, 'MANIFEST.sha256');
    chmodSync(manifest, 0o644);
    writeFileSync(manifest, renderManifest(dir));
    const forged = await verifyPhase(pc, phaseId);
    expect(forged).toMatchObject({ ok: false, manifestIntact: false, changed: ['MANIFEST.sha256'] });

    // A frozen phase refuses a rerun; reopen needs a defect and starts a new, linked phase.
    const rerun = await startPhase(pc, loaded).catch((e: unknown) => e);
    expect((rerun as PhaseError).message).toContain('is FROZEN');
    await expect(reopenPhase(pc, phaseId, '  ')).rejects.toThrow('--defect must describe');
    const reopened = await reopenPhase(pc, phaseId, 'tokenizer padding bug in v1');
    expect(reopened.phaseId).toMatch(new RegExp(`^${phaseId}-reopen-[0-9a-f]{8}$`));
    const linked = await getState(pc, reopened.phaseId);
    expect(linked.reopenOf).toEqual({ phaseId, defect: 'tokenizer padding bug in v1' });
    expect(linked.status).toBe('AWAITING_BUDGET');

    recordHistory(server.env, phaseId, 'budget-hold-to-frozen');
  });
});

test('models run side by side when the approval pays for both at once; each attempt is checked with the others in flight', async () => {
  const { worker, pc, taskQueue } = await testWorker(server, 'side-by-side');
  const loaded = testProtocol('side-by-side');
  const perModelEstimate = 100 * 0.0000262;
  await worker.runUntil(async () => {
    const { phaseId } = await startPhase(pc, loaded);
    // Both estimates fit: spent (0) + the first's estimate in flight + the second's estimate <= the approval (with room
    // for each attempt's time limit: the approval less the other's estimate, here 300 s of the CPU rate).
    await approveAs(pc, phaseId, { by: 'demo-approver', usd: 4 * perModelEstimate });
    await reviewAs(pc, phaseId, { by: 'demo-reviewer', verdict: 'APPROVED' });
    const frozen = await waitForStatus(pc, phaseId, 'FROZEN', 240);
    const [a, b] = frozen.ledger;
    expect(frozen.ledger.map((e) => [e.modelKey, e.outcome]).sort()).toEqual([['tiny-llama', 'succeeded'], ['tiny-qwen2', 'succeeded']]);
    // The two runs overlapped in time: each began before the other ended.
    expect(Date.parse(a!.startedAt)).toBeLessThan(Date.parse(b!.endedAt));
    expect(Date.parse(b!.startedAt)).toBeLessThan(Date.parse(a!.endedAt));
    expect(spentUsd(frozen.ledger)).toBeLessThanOrEqual(frozen.budget.approvedUsd);
    expect(frozen.events.some((e) => e.message.includes('BUDGET_HOLD'))).toBe(false);
    // Model runs and preflights on queues of their own: they never hold the slots an estimate or a scoring needs.
    const events = await historyEvents(server.env.client, phaseId);
    expect(activityQueues(events, 'estimatePhase')).toEqual([taskQueue]);
    expect(activityQueues(events, 'preflightModels')).toEqual([preflightQueue(taskQueue)]);
    expect(activityQueues(events, 'runModel')).toEqual([modelRunQueue(taskQueue), modelRunQueue(taskQueue)]);
    expect(activityQueues(events, 'scorePhase')).toEqual([taskQueue]);
    expect(activityQueues(events, 'freezePhase')).toEqual([taskQueue]);
    // A step that may run for minutes heartbeats, so that one lost with a SIGKILLed worker is tried again elsewhere
    // within a minute (the cluster test's kill once caught a preflight, which then waited out its 10 minutes).
    const long = activityTimeouts(events).filter((a) => (a.startToCloseSeconds ?? Infinity) > 120);
    expect(long.map((a) => a.activityType).sort()).toEqual(['freezePhase', 'preflightModels', 'runModel', 'runModel', 'scorePhase']);
    for (const a of long) expect([a.activityType, a.heartbeatSeconds !== null && a.heartbeatSeconds <= 60]).toEqual([a.activityType, true]);
  });
});
