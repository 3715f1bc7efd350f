/**
 * Modal phases through the real Temporal server and the real launcher. First, a worker without Modal credentials:
 * one attempt, no retry, a FAILED phase whose error says how to set them, and a ledger line that charges nothing
 * (nothing was launched; the launcher never reaches the Modal SDK, so no double is involved). Then the launcher's
 * double of the Modal SDK (PHASEGATE_MODAL_FAKE=1), whose state file says what was spawned and cancelled.
 */
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { getState, startPhase, type PhaseClient } from '../client/phases';
import type { LoadedProtocol } from '../protocols/load';
import type { PhaseState } from '../workflows/definitions';
import { approveAs, rejectAs, reviewAs } from './helpers/decisions';
import { fakeModalEnv } from './helpers/modal';
import { makeWorker, phaseResult, serverPerFile, testProtocol, testWorker, waitFor } from './helpers/temporal';

const server = serverPerFile();

/** Runs `body` with these environment variables set (undefined: unset), then puts the old values back. */
async function withEnv(env: Record<string, string | undefined>, body: () => Promise<void>): Promise<void> {
  const saved = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  const apply = (values: Record<string, string | undefined>): void => {
    for (const [k, v] of Object.entries(values)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  };
  apply(env);
  try {
    await body();
  } finally {
    apply(saved);
  }
}

/** A call as the double keeps it: when it ended (null: still live) and what Modal bills for it. */
interface FakeCall {
  kind: 'run' | 'prefetch' | 'smoke';
  cancelled: boolean;
  ended_at: number | null;
  billed_s: number | null;
  containers: [number, number][];
}

interface FakeState {
  calls: Record<string, FakeCall>;
  spawns: string[];
  runs: Record<string, number>;
}

interface FakeModal {
  env: Record<string, string>;
  calls(): Record<string, FakeCall>;
  spawns(): string[];
  runs(): Record<string, number>;
}

/** A fresh double of Modal: every launcher process of the test shares its state file. */
function fakeModal(outcome = 'ok', extra: Record<string, string> = {}): FakeModal {
  const statePath = path.join(mkdtempSync(path.join(os.tmpdir(), 'phasegate-modal-phase-')), 'fake-modal.json');
  const state = (): FakeState => (existsSync(statePath) ? (JSON.parse(readFileSync(statePath, 'utf8')) as FakeState) : { calls: {}, spawns: [], runs: {} });
  return {
    env: { ...fakeModalEnv(statePath, outcome), ...extra },
    calls: () => state().calls,
    spawns: () => state().spawns,
    runs: () => state().runs,
  };
}

/**
 * The money rules, held against the double's bill: nothing live once the phase has left RUNNING; per call, the
 * ledger charged at least what Modal bills and never one second twice (its charged spans do not overlap).
 */
function expectLedgerCoversTheBill(state: PhaseState, modal: FakeModal): void {
  for (const [callId, call] of Object.entries(modal.calls())) {
    expect({ callId, live: call.ended_at === null }).toEqual({ callId, live: false });
    const spans: [number, number][] = [];
    for (const line of state.ledger) {
      if (line.calls !== undefined) for (const c of line.calls) if (c.callId === callId) spans.push([Date.parse(c.from), Date.parse(c.to)]);
      if (line.calls === undefined && (line.backendIds.call === callId || (line.backendIds.stopped ?? '').split(',').includes(callId))) spans.push([Date.parse(line.startedAt), Date.parse(line.endedAt)]);
    }
    spans.sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < spans.length; i++) expect(spans[i]![0]).toBeGreaterThanOrEqual(spans[i - 1]![1]);
    const charged = spans.reduce((sum, [a, b]) => sum + (b - a) / 1000, 0);
    expect({ callId, charged: charged >= (call.billed_s ?? 0) }).toEqual({ callId, charged: true });
  }
}

/** Starts the phase, passes both gates, and waits for it to fail; returns its state. */
async function runToFailure(pc: PhaseClient, loaded: LoadedProtocol): Promise<PhaseState> {
  const { phaseId } = await startPhase(pc, loaded);
  await approveAs(pc, phaseId, { by: 'demo-approver', usd: 1 });
  await reviewAs(pc, phaseId, { by: 'demo-reviewer', verdict: 'APPROVED' });
  await expect(phaseResult(server.env.client, phaseId)).rejects.toThrow();
  return getState(pc, phaseId);
}

const qwenOnModal = { key: 'qwen-7b', id: 'Qwen/Qwen2.5-7B-Instruct', gpu: 'A10G', expected_gpu_seconds: 600, timeout_minutes: 60 };

test('missing Modal credentials: one attempt, a clear error, nothing charged', async () => {
  const noCredentials = { MODAL_TOKEN_ID: undefined, MODAL_TOKEN_SECRET: undefined, MODAL_CONFIG_PATH: path.join(os.tmpdir(), 'phasegate-no-such-modal.toml') };
  await withEnv(noCredentials, async () => {
    const { worker, pc } = await testWorker(server, 'modal');
    const loaded = testProtocol('modal', { backend: 'modal', models: [qwenOnModal] });
    await worker.runUntil(async () => {
      const state = await runToFailure(pc, loaded);
      expect(state.status).toBe('FAILED');
      expect(state.failure).toMatch(/MODAL_TOKEN_ID/);
      expect(state.ledger).toHaveLength(1);
      expect(state.ledger[0]).toMatchObject({ attempt: 1, outcome: 'failed', seconds: 0, usd: 0, secondsBasis: 'measured' });
    });
  });
});

/**
 * The money rule at workflow level: a worker that stops mid-attempt detaches from its paid call (so that a retry
 * can reattach); if the phase then leaves RUNNING before any retry does (here, a cancel during the retry's
 * back-off), the call must not run on unseen. Without the release step it would: nothing else names it.
 */
test('a call a stopped worker left running is stopped, and put on the ledger, when the phase is cancelled', async () => {
  const modal = fakeModal('hang');
  await withEnv(modal.env, async () => {
    const first = await testWorker(server, 'modal-leftover');
    // A long back-off: the cancel arrives while no attempt holds the call.
    const loaded = testProtocol('modal-leftover', { backend: 'modal', models: [qwenOnModal], retry: { max_attempts: 3, initial_interval_seconds: 600, backoff_coefficient: 1 } });
    const running = first.worker.run();
    const { phaseId } = await startPhase(first.pc, loaded);
    await approveAs(first.pc, phaseId, { by: 'demo-approver', usd: 1 });
    await reviewAs(first.pc, phaseId, { by: 'demo-reviewer', verdict: 'APPROVED' });
    await waitFor(() => Promise.resolve(modal.spawns().length === 1));
    first.worker.shutdown();
    await running;
    const [callId] = modal.spawns();
    expect(modal.calls()[callId!]?.cancelled).toBe(false); // detached, not stopped: a retry could reattach

    const second = await makeWorker(server.env, server.workflowBundle, first.paths, first.taskQueue);
    let state: PhaseState | undefined;
    await second.runUntil(async () => {
      await waitFor(async () => (await getState(first.pc, phaseId)).ledger.length === 1);
      await server.env.client.workflow.getHandle(phaseId).cancel();
      await expect(phaseResult(server.env.client, phaseId)).rejects.toThrow();
      state = await getState(first.pc, phaseId);
    });
    expect(modal.calls()[callId!]?.cancelled).toBe(true);
    expect(modal.spawns()).toHaveLength(1); // one paid call for the model, never a second
    if (state === undefined) throw new Error('no state');
    expect(state.status).toBe('CANCELLED');
    expect(state.ledger).toHaveLength(2);
    expect(state.ledger[1]).toMatchObject({ modelKey: 'qwen-7b', outcome: 'cancelled', secondsBasis: 'container', backendIds: { stopped: callId } });
    expect(state.ledger[1]?.error).toMatch(/still running when the phase left RUNNING \(cancelled\); stopped/);
    // The ledger covers the call's whole life, from its spawn to its stop, and the download before it.
    expectLedgerCoversTheBill(state, modal);
  });
});

/**
 * Each way a Modal run goes wrong, through the real Temporal server and the real launcher processes: a preempted
 * input restarted in a second container, polls failing on the network, a crashed container, a TimeoutError raised
 * by the remote function. Every phase ends (FAILED at scoring at best: the double's result is not a real run), and
 * then: one paid run per model at most, nothing live, and the ledger >= the double's bill, no second twice.
 */
test.each([
  ['preempt', {}, 1],
  ['ok', { PHASEGATE_MODAL_FAKE_PROBE_ERRORS: '3' }, 1],
  ['crash', {}, 0],
  ['remote_timeout', {}, 0],
])('Modal failure mode %s %j: at most one paid run, nothing live, the ledger covers the bill', async (outcome, extra, paidRuns) => {
  const modal = fakeModal(outcome, { PHASEGATE_MODAL_FAKE_RUN_S: '0.6', ...extra });
  await withEnv(modal.env, async () => {
    const { worker, pc } = await testWorker(server, `modal-${outcome}`);
    const loaded = testProtocol(`modal-mode-${outcome.replace("_", "-")}-${Object.keys(extra).length}`, { backend: 'modal', models: [qwenOnModal], retry: { max_attempts: 2, initial_interval_seconds: 1, backoff_coefficient: 1 } });
    await worker.runUntil(async () => {
      const state = await runToFailure(pc, loaded);
      expect(state.ledger.length).toBeGreaterThan(0);
      expect(state.ledger.map((e) => [e.attempt, e.outcome, e.secondsBasis, e.error ?? ''])).toEqual(state.ledger.map((e) => [e.attempt, e.outcome, 'container', e.error ?? '']));
      expectLedgerCoversTheBill(state, modal);
    });
    expect(Object.values(modal.runs()).reduce((a, b) => a + b, 0)).toBe(paidRuns);
    expect(modal.spawns().length).toBeLessThanOrEqual(paidRuns === 1 ? 1 : 2);
  });
});

test('a spec invalid by definition fails in the preflight, before any GPU call is spawned or charged', async () => {
  const modal = fakeModal();
  await withEnv(modal.env, async () => {
    const { worker, pc } = await testWorker(server, 'modal-preflight');
    // Both models are checked in one runtime process; the second names a tiny architecture that does not exist,
    // which the run would find out only on the GPU. The failure names that model, not the first.
    const tiny = { gpu: 'A10G', dtype: 'float32', expected_gpu_seconds: 60, timeout_minutes: 10, tiny_seed: 0 };
    const loaded = testProtocol('modal-preflight', {
      backend: 'modal',
      models: [
        { key: 'tiny-qwen2', id: 'tiny:qwen2', ...tiny },
        { key: 'tiny-unknown', id: 'tiny:mamba', ...tiny },
      ],
    });
    await worker.runUntil(async () => {
      const state = await runToFailure(pc, loaded);
      expect(state.status).toBe('FAILED');
      expect(state.failure).toBe("tiny-unknown: model.id: unknown tiny arch 'mamba'; expected one of qwen2, gemma2, llama, qwen3 (found before any GPU run)");
      expect(state.ledger).toEqual([]);
    });
    expect(modal.spawns()).toEqual([]);
  });
});

test('long model runs have their own queue and slots: they never starve another phase of its estimate', async () => {
  const modal = fakeModal('hang');
  await withEnv(modal.env, async () => {
    const { worker, pc } = await testWorker(server, 'modal-slots');
    await worker.runUntil(async () => {
      // Four Modal launchers that never finish: as many as the phase queue has slots.
      const hanging: string[] = [];
      for (const n of [1, 2, 3, 4]) {
        const { phaseId } = await startPhase(pc, testProtocol(`modal-slots-${n}`, { backend: 'modal', models: [qwenOnModal] }));
        await approveAs(pc, phaseId, { by: 'demo-approver', usd: 1 });
        await reviewAs(pc, phaseId, { by: 'demo-reviewer', verdict: 'APPROVED' });
        hanging.push(phaseId);
      }
      await waitFor(() => Promise.resolve(modal.spawns().length === 2)); // two model runs at once per worker
      const { phaseId } = await startPhase(pc, testProtocol('modal-slots-5', { backend: 'modal', models: [qwenOnModal] }));
      await waitFor(async () => (await getState(pc, phaseId)).estimate !== null);
      for (const id of [...hanging, phaseId]) await server.env.client.workflow.getHandle(id).cancel();
      for (const id of hanging) await expect(phaseResult(server.env.client, id)).rejects.toThrow();
    });
    expect(Object.values(modal.calls()).every((c) => c.ended_at !== null)).toBe(true); // every one stopped
  });
});

test('a call that would run past the approval is stopped by its own timeout: the ledger stays within the approval', async () => {
  const modal = fakeModal('hang');
  await withEnv(modal.env, async () => {
    const { worker, pc } = await testWorker(server, 'modal-budget-limit');
    // 40 s expected: the attempt is dispatched; $0.025 pays ~53 s of an A10G container, so the call may run ~41 s
    // (its scale-down and stop fit in the rest), far less than the protocol's 60 minutes.
    const loaded = testProtocol('modal-budget-limit', { backend: 'modal', models: [{ ...qwenOnModal, expected_gpu_seconds: 40 }] });
    await worker.runUntil(async () => {
      const { phaseId } = await startPhase(pc, loaded);
      await approveAs(pc, phaseId, { by: 'demo-approver', usd: '0.025' });
      await reviewAs(pc, phaseId, { by: 'demo-reviewer', verdict: 'APPROVED' });
      await waitFor(async () => (await getState(pc, phaseId)).status === 'BUDGET_HOLD', 180_000);
      const state = await getState(pc, phaseId);
      expect(state.ledger.reduce((sum, e) => sum + e.usd, 0)).toBeLessThanOrEqual(0.025);
      expectLedgerCoversTheBill(state, modal);
      expect(Object.values(modal.calls()).filter((c) => c.kind === 'run').map((c) => c.billed_s! < 60)).toEqual([true]);
      await rejectAs(pc, phaseId, { by: 'demo-approver', reason: 'enough' });
      await expect(phaseResult(server.env.client, phaseId)).resolves.toMatchObject({ status: 'REJECTED' });
    });
  });
});

test('two models side by side that both run until stopped spend within the approval together, not each', async () => {
  // Both reserves fit the approval, so both are dispatched at once; each call then runs until its own timeout. An
  // adversarial probe found the older rule gave the first attempt the whole approval as its limit and the second
  // all but the first's estimate: together 151 % of the approval, on the ledger and on the double's bill.
  const modal = fakeModal('hang');
  const hang = (key: string, id: string): Record<string, unknown> => ({ key, id, gpu: 'A10G', dtype: 'float32', expected_gpu_seconds: 40, timeout_minutes: 60, tiny_seed: 0 });
  await withEnv(modal.env, async () => {
    const { worker, pc } = await testWorker(server, 'modal-two-limits');
    const loaded = testProtocol('modal-two-limits', { backend: 'modal', models: [hang('tiny-qwen2', 'tiny:qwen2'), hang('tiny-llama', 'tiny:llama')] });
    await worker.runUntil(async () => {
      const { phaseId } = await startPhase(pc, loaded);
      await approveAs(pc, phaseId, { by: 'demo-approver', usd: '0.04' });
      const estimate = (await getState(pc, phaseId)).estimate!;
      expect(estimate.models.reduce((sum, m) => sum + m.usd, 0)).toBeLessThanOrEqual(0.04);
      await reviewAs(pc, phaseId, { by: 'demo-reviewer', verdict: 'APPROVED' });
      await waitFor(async () => (await getState(pc, phaseId)).status === 'BUDGET_HOLD', 300_000);
      const state = await getState(pc, phaseId);
      expect(state.ledger.reduce((sum, e) => sum + e.usd, 0)).toBeLessThanOrEqual(0.04);
      expectLedgerCoversTheBill(state, modal);
      const runs = Object.values(modal.calls()).filter((c) => c.kind === 'run');
      expect(runs).toHaveLength(2);
      // They overlapped: each call started before the other ended.
      const [a, b] = runs.map((c) => [c.containers[0]![0], c.ended_at!] as const);
      expect(Math.max(a![0], b![0])).toBeLessThan(Math.min(a![1], b![1]));
      await rejectAs(pc, phaseId, { by: 'demo-approver', reason: 'enough' });
      await expect(phaseResult(server.env.client, phaseId)).resolves.toMatchObject({ status: 'REJECTED' });
    });
  });
});

test('a two-model phase whose containers run the real body on the double: the models overlap, the phase freezes', async () => {
  // The double's `execute` outcome runs modal_job's container body (claim, the runtime's run, done marker) in
  // a child process per call; each call lasts at least 15 s, a stand-in for a GPU run's length.
  const modal = fakeModal('execute', { PHASEGATE_MODAL_FAKE_RUN_S: '15' });
  const tiny = (key: string, id: string): Record<string, unknown> => ({ key, id, gpu: 'A10G', dtype: 'float32', expected_gpu_seconds: 60, timeout_minutes: 10, tiny_seed: 0 });
  await withEnv(modal.env, async () => {
    const { worker, pc } = await testWorker(server, 'modal-execute');
    const loaded = testProtocol('modal-execute', { backend: 'modal', models: [tiny('tiny-qwen2', 'tiny:qwen2'), tiny('tiny-llama', 'tiny:llama')] });
    await worker.runUntil(async () => {
      const { phaseId } = await startPhase(pc, loaded);
      await approveAs(pc, phaseId, { by: 'demo-approver', usd: 1 });
      await reviewAs(pc, phaseId, { by: 'demo-reviewer', verdict: 'APPROVED' });
      const state = await phaseResult(server.env.client, phaseId);
      expect(state.status).toBe('FROZEN');
      expect(state.ledger.map((e) => [e.modelKey, e.attempt, e.outcome]).sort()).toEqual([
        ['tiny-llama', 1, 'succeeded'],
        ['tiny-qwen2', 1, 'succeeded'],
      ]);
      for (const m of state.score!.models) expect(m.outputsIdentical).toBe(true);
      expectLedgerCoversTheBill(state, modal);
      // Side by side: each model's call started before the other's ended.
      const runs = Object.values(modal.calls()).filter((c) => c.kind === 'run');
      expect(runs).toHaveLength(2);
      const [a, b] = runs.map((c) => [c.containers[0]![0], c.ended_at!] as const);
      expect(Math.max(a![0], b![0])).toBeLessThan(Math.min(a![1], b![1]));
    });
    expect(Object.values(modal.runs())).toEqual([1, 1]);
  });
});
