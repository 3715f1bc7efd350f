/**
 * The embedded server keeps its state in SQLite: a phase started before a dev-server restart is still there
 * after it, takes decisions and completes. Uses phasegate's own launcher (worker/dev-server.ts), as
 * `phasegate server` does.
 */
import { Client, Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { getState, startPhase } from '../client/phases';
import { PhaseRecordStore } from '../common/phase-records';
import { approveAs, reviewAs, rejectAs } from './helpers/decisions';
import { startDevServer, type DevServer } from '../worker/dev-server';
import { createPhaseWorker } from '../worker/worker';
import { bundle, phaseResult, quietLogger, quietTemporalRuntime, repoPaths, testPaths, testProtocol, uniqueQueue, freePort } from './helpers/temporal';


test('a phase started before a dev-server restart completes after it', async () => {
  quietTemporalRuntime();
  const stateDir = mkdtempSync(path.join(os.tmpdir(), 'phasegate-restart-'));
  const port = await freePort();
  const uiPort = await freePort();
  const start = (): Promise<DevServer> => startDevServer({ temporalBin: repoPaths.temporalBin, stateDir, port, uiPort, namespace: 'default' });
  const taskQueue = uniqueQueue('restart');
  const workflowBundle = await bundle();
  const paths = testPaths('restart');

  const runWorkerDuring = async <T>(server: DevServer, fn: (client: Client) => Promise<T>): Promise<T> => {
    const connection = await Connection.connect({ address: server.address });
    const nativeConnection = await NativeConnection.connect({ address: server.address });
    const client = new Client({ connection });
    const worker = await createPhaseWorker({ connection: nativeConnection, namespace: 'default', taskQueue, paths, logger: quietLogger, workflowBundle });
    try {
      return await worker.runUntil(fn(client));
    } finally {
      await nativeConnection.close();
      await connection.close();
    }
  };

  let server = await start();
  let phaseId = '';
  try {
    phaseId = await runWorkerDuring(server, async (client) => {
      const pc = { client, taskQueue, records: new PhaseRecordStore(paths.recordsDir) };
      const started = await startPhase(pc, testProtocol('restart'));
      await approveAs(pc, started.phaseId, { by: 'demo-approver', usd: 0.3 });
      // Stop only once the estimate activity has completed: an activity task handed to a worker that is shutting
      // down is re-dispatched by the server only after minutes, which would make this test slow, not wrong.
      while ((await getState(pc, started.phaseId)).estimate === null) await new Promise((r) => setTimeout(r, 100));
      return started.phaseId;
    });
  } finally {
    await server.stop();
  }

  server = await start();
  try {
    await runWorkerDuring(server, async (client) => {
      const pc = { client, taskQueue, records: new PhaseRecordStore(paths.recordsDir) };
      const before = await getState(pc, phaseId);
      expect(before.status).toBe('AWAITING_REVIEW');
      expect(before.budget.approvedUsd).toBe(0.3);
      // The gate in AWAITING_REVIEW is the review; a rejection now is refused, and the phase is still waiting.
      await expect(rejectAs(pc, phaseId, { by: 'demo-approver', reason: 'too late' })).rejects.toThrow('accepted only in AWAITING_BUDGET or BUDGET_HOLD');
      await reviewAs(pc, phaseId, { by: 'demo-reviewer', verdict: 'CHANGES_REQUESTED', ref: 'after-restart' });
      const final = await phaseResult(client, phaseId);
      expect(final).toMatchObject({ status: 'CHANGES_REQUESTED', review: { ref: 'after-restart' } });
    });
  } finally {
    await server.stop();
  }
});
