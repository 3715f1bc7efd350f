/**
 * A Modal phase on a worker without Modal credentials: one attempt, no retry, a FAILED phase whose error says
 * how to set them, and a ledger line that charges nothing (nothing was launched). The real launcher runs; with
 * no credentials it never reaches the Modal SDK, so no double is involved here.
 */
import os from 'node:os';
import path from 'node:path';
import { getState, startPhase } from '../client/phases';
import { approveAs, reviewAs } from './helpers/decisions';
import { phaseResult, serverPerFile, testProtocol, testWorker } from './helpers/temporal';

const server = serverPerFile();

test('missing Modal credentials: one attempt, a clear error, nothing charged', async () => {
  const saved = { id: process.env.MODAL_TOKEN_ID, secret: process.env.MODAL_TOKEN_SECRET, config: process.env.MODAL_CONFIG_PATH };
  delete process.env.MODAL_TOKEN_ID;
  delete process.env.MODAL_TOKEN_SECRET;
  process.env.MODAL_CONFIG_PATH = path.join(os.tmpdir(), 'phasegate-no-such-modal.toml');
  try {
    const { worker, pc } = await testWorker(server, 'modal');
    const loaded = testProtocol('modal', {
      backend: 'modal',
      models: [{ key: 'qwen-7b', id: 'Qwen/Qwen2.5-7B-Instruct', gpu: 'A10G', expected_gpu_seconds: 600, timeout_minutes: 60 }],
    });
    await worker.runUntil(async () => {
      const { phaseId } = await startPhase(pc, loaded);
      await approveAs(pc, phaseId, { by: 'demo-approver', usd: 1 });
      await reviewAs(pc, phaseId, { by: 'demo-reviewer', verdict: 'APPROVED' });
      await expect(phaseResult(server.env.client, phaseId)).rejects.toThrow();
      const state = await getState(pc, phaseId);
      expect(state.status).toBe('FAILED');
      expect(state.failure).toMatch(/MODAL_TOKEN_ID/);
      expect(state.ledger).toHaveLength(1);
      expect(state.ledger[0]).toMatchObject({ attempt: 1, outcome: 'failed', seconds: 0, usd: 0, secondsBasis: 'measured' });
    });
  } finally {
    for (const [k, v] of [['MODAL_TOKEN_ID', saved.id], ['MODAL_TOKEN_SECRET', saved.secret], ['MODAL_CONFIG_PATH', saved.config]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
});
