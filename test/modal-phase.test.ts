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
import { approveAs, reviewAs } from './helpers/decisions';
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

interface FakeModal {
  env: Record<string, string>;
  calls(): Record<string, { cancelled: boolean }>;
  spawns(): string[];
}

/** A fresh double of Modal: every launcher process of the test shares its state file. */
function fakeModal(outcome = 'ok'): FakeModal {
  const statePath = path.join(mkdtempSync(path.join(os.tmpdir(), 'phasegate-modal-phase-')), 'fake-modal.json');
  const state = (): { calls: Record<string, { cancelled: boolean }>; spawns: string[] } =>
    existsSync(statePath) ? (JSON.parse(readFileSync(statePath, 'utf8')) as { calls: Record<string, { cancelled: boolean }>; spawns: string[] }) : { calls: {}, spawns: [] };
  return {
    env: fakeModalEnv(statePath, outcome),
    calls: () => state().calls,
    spawns: () => state().spawns,
  };
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
    expect(state.ledger[1]).toMatchObject({ modelKey: 'qwen-7b', outcome: 'cancelled', secondsBasis: 'observed', backendIds: { stopped: callId } });
    expect(state.ledger[1]?.error).toMatch(/still running when the phase left RUNNING \(cancelled\); stopped/);
    // The ledger covers the call's whole life: the detached attempt's line, then the stopped remainder.
    expect(Date.parse(state.ledger[1]!.startedAt)).toBe(Date.parse(state.ledger[0]!.endedAt));
  });
});

test('a spec invalid by definition fails in the preflight, before any GPU call is spawned or charged', async () => {
  const modal = fakeModal();
  await withEnv(modal.env, async () => {
    const { worker, pc } = await testWorker(server, 'modal-preflight');
    // The tiny models have 3 blocks: layer 5 does not exist. The run would find out only after loading on the GPU.
    const loaded = testProtocol('modal-preflight', {
      backend: 'modal',
      models: [{ key: 'tiny-qwen2', id: 'tiny:qwen2', gpu: 'A10G', dtype: 'float32', expected_gpu_seconds: 60, timeout_minutes: 10, tiny_seed: 0 }],
      site: { stream: 'residual', layer: 5, position: -1 },
    });
    await worker.runUntil(async () => {
      const state = await runToFailure(pc, loaded);
      expect(state.status).toBe('FAILED');
      expect(state.failure).toBe('tiny-qwen2: site.layer: must be < num_hidden_layers (3) (found before any GPU run)');
      expect(state.ledger).toEqual([]);
    });
    expect(modal.spawns()).toEqual([]);
  });
});
