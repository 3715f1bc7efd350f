/**
 * Durability under failure, with real processes: cancelling a phase mid-run stops the runtime process and
 * charges the attempt; a worker process killed mid-run is replaced, the phase completes, checkpointed units
 * are not recomputed and the ledger has one line per real attempt.
 */
import { WorkflowFailedError } from '@temporalio/client';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { cancelPhase, getState, startPhase, waitForStatus } from '../client/phases';
import { approveAs, reviewAs } from './helpers/decisions';
import { repoRoot } from '../common/config';
import { makeWorker, phaseClient, phaseResult, recordHistory, serverPerFile, testPaths, testProtocol, testWorker, uniqueQueue } from './helpers/temporal';

const server = serverPerFile();

/** One model, two repeats and longer generations: a run that lasts long enough to be interrupted. */
const slowOverrides = {
  models: [{ key: 'tiny-qwen2', id: 'tiny:qwen2', gpu: 'cpu', dtype: 'float32', expected_gpu_seconds: 100, timeout_minutes: 10, tiny_seed: 0 }],
  methods: ['nnsight', 'hooks'],
  repeats: 2,
  sampling: { decode: 'greedy', max_new_tokens: 300, batch_size: 8 },
};

/** Processes whose command line mentions `needle` (the runtime is started with its spec path). */
function processesMentioning(needle: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (cmdline.includes(needle) && cmdline.includes('phasegate_runtime')) pids.push(Number(entry));
    } catch {
      // The process ended while we looked.
    }
  }
  return pids;
}

function unitFiles(dir: string): Map<string, number> {
  const units = path.join(dir, 'units');
  const out = new Map<string, number>();
  if (!existsSync(units)) return out;
  for (const f of readdirSync(units)) if (f.endsWith('.json')) out.set(f, statSync(path.join(units, f)).mtimeMs);
  return out;
}

async function until(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

test('cancelling a phase mid-run stops the runtime process and leaves a correct ledger', async () => {
  const { worker, pc, paths } = await testWorker(server, 'cancel');
  await worker.runUntil(async () => {
    const loaded = testProtocol('cancel', slowOverrides);
    const { phaseId } = await startPhase(pc, loaded);
    await approveAs(pc, phaseId, { by: 'demo-approver', usd: 1 });
    await reviewAs(pc, phaseId, { by: 'demo-reviewer', verdict: 'APPROVED' });
    const runDir = path.join(paths.workDir, phaseId, 'tiny-qwen2');
    await until(() => unitFiles(runDir).size >= 2, 180_000, 'the first checkpointed units');
    expect(processesMentioning(runDir)).toHaveLength(1);

    await cancelPhase(pc, phaseId);
    const outcome = await phaseResult(server.env.client, phaseId).catch((e: unknown) => e);
    expect(outcome).toBeInstanceOf(WorkflowFailedError);
    expect(processesMentioning(runDir)).toEqual([]);

    const state = await getState(pc, phaseId);
    expect(state.status).toBe('CANCELLED');
    expect(state.models[0]!.status).toBe('cancelled');
    expect(state.ledger).toHaveLength(1);
    expect(state.ledger[0]).toMatchObject({ modelKey: 'tiny-qwen2', attempt: 1, outcome: 'cancelled', secondsBasis: 'measured' });
    expect(state.ledger[0]!.seconds).toBeGreaterThan(0);
    expect(state.ledger[0]!.usd).toBeGreaterThan(0);

    recordHistory(server.env, phaseId, 'cancelled-mid-run');
    // Starting the cancelled phase again resumes it, and the cancelled attempt's cost stays on its ledger.
    expect((await startPhase(pc, loaded)).started).toBe(true);
    const restarted = await getState(pc, phaseId);
    expect(restarted.status).toBe('AWAITING_BUDGET');
    expect(restarted.ledger).toEqual([{ ...state.ledger[0], earlierRun: true }]);
  });
});

test('a worker killed mid-run is replaced: the phase completes without recomputing checkpointed units', async () => {
  const taskQueue = uniqueQueue('crash');
  const paths = testPaths('crash');
  const pc = phaseClient(server.env, taskQueue, paths);
  // The first worker is a separate OS process (`phasegate worker`), so that it can really be killed.
  const child = spawn(process.execPath, [path.join(repoRoot, 'lib', 'client', 'cli.js'), 'worker'], {
    env: { ...process.env, TEMPORAL_ADDRESS: server.env.address, PHASEGATE_TASK_QUEUE: taskQueue, PHASEGATE_STATE_DIR: paths.stateDir, LOG_LEVEL: 'warn', LOG_FORMAT: 'json' },
    stdio: 'ignore',
  });
  let before: Map<string, number>;
  let runDir = '';
  let phaseId = '';
  try {
    phaseId = (await startPhase(pc, testProtocol('crash', slowOverrides))).phaseId;
    runDir = path.join(paths.workDir, phaseId, 'tiny-qwen2');
    await approveAs(pc, phaseId, { by: 'demo-approver', usd: 1 });
    await reviewAs(pc, phaseId, { by: 'demo-reviewer', verdict: 'APPROVED' });
    await until(() => unitFiles(runDir).size >= 2, 180_000, 'the first checkpointed units');
    before = unitFiles(runDir);
  } finally {
    child.kill('SIGKILL');
  }
  // The runtime dies with its worker (parent-death signal), so no orphan races the retry over the same folder.
  await until(() => processesMentioning(runDir).length === 0, 15_000, 'the orphaned runtime to exit');

  const worker = await makeWorker(server.env, server.workflowBundle, paths, taskQueue);
  const state = await worker.runUntil(waitForStatus(pc, phaseId, 'FROZEN', 300));

  expect(state.ledger.map((e) => [e.attempt, e.outcome, e.secondsBasis])).toEqual([
    [1, 'timed_out', 'observed'],
    [2, 'succeeded', 'measured'],
  ]);
  const after = unitFiles(runDir);
  // baseline, reference, each method x 2 repeats, a native cross-check per method
  const methods = slowOverrides.methods.length;
  expect(after.size).toBe(2 + methods * slowOverrides.repeats + methods);
  for (const [file, mtime] of before) expect(after.get(file)).toBe(mtime);
  expect(state.score?.models[0]?.outputsIdentical).toBe(true);
});
