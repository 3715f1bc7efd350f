/**
 * Nothing a phase decided, spent or froze is lost when Temporal forgets it. One phase runs to FROZEN, another
 * to FAILED (a charged attempt); both executions are then deleted from Temporal with the Temporal CLI, as
 * retention would. Every command still answers from the phase record, a FROZEN protocol cannot be run again,
 * a restart of the FAILED one carries its spend, and a `requires_frozen` successor starts. Also: a cancel that
 * arrives while a phase freezes leaves it FROZEN.
 */
import path from 'node:path';
import { WorkflowNotFoundError } from '@temporalio/client';
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { makeWritable } from '../activities/freeze';
import { renderManifest } from '../activities/manifest';
import { getPlan, getState, getStatus, listPhases, PhaseError, RECORD_ONLY, reopenPhase, startPhase, verifyFrozenDir, verifyPhase, waitForStatus } from '../client/phases';
import { repoRoot } from '../common/config';
import { PhaseRecordStore } from '../common/phase-records';
import { phaseInputOf } from '../protocols/load';
import { initialState } from '../workflows/phase-logic';
import { approveAs, reviewAs, testKeys } from './helpers/decisions';
import { rejection } from './helpers/errors';
import { phaseResult, repoPaths, serverPerFile, testProtocol, testWorker, runProcess } from './helpers/temporal';

const server = serverPerFile();
const oneModel = { models: [{ key: 'tiny-qwen2', id: 'tiny:qwen2', gpu: 'cpu', dtype: 'float32', expected_gpu_seconds: 100, timeout_minutes: 10, tiny_seed: 0 }] };


test('deleted from Temporal, a FROZEN and a FAILED phase still answer every command from their records', async () => {
  const { worker, pc, paths, taskQueue } = await testWorker(server, 'records');
  const frozen = testProtocol('rec-frozen', oneModel);
  // A model the preflight accepts (its config and tokenizer are there) whose run then fails: its weights are gone.
  const noWeights = mkdtempSync(path.join(os.tmpdir(), 'phasegate-no-weights-'));
  const built = await runProcess(repoPaths.python, ['-m', 'phasegate_runtime', 'tiny', '--arch', 'qwen2', '--seed', '0', '--out', noWeights], { ...process.env, PYTHONPATH: repoPaths.runtimeSrc });
  expect(built.code).toBe(0);
  rmSync(path.join(noWeights, 'tiny-qwen2-s0', 'model.safetensors'));
  const failing = testProtocol('rec-failed', { models: [{ ...oneModel.models[0], key: 'broken', id: path.join(noWeights, 'tiny-qwen2-s0') }] });
  await worker.runUntil(async () => {
    // 1. One phase to FROZEN, one to FAILED after a charged attempt.
    for (const loaded of [frozen, failing]) {
      await startPhase(pc, loaded);
      await approveAs(pc, loaded.phaseId, { by: 'demo-approver', usd: '1' });
      await reviewAs(pc, loaded.phaseId, { by: 'demo-reviewer', verdict: 'APPROVED' });
    }
    const frozenState = await waitForStatus(pc, frozen.phaseId, 'FROZEN', 180);
    await rejection(phaseResult(server.env.client, failing.phaseId), Error);
    const failedState = await getState(pc, failing.phaseId);
    expect(failedState.status).toBe('FAILED');
    expect(failedState.ledger.length).toBeGreaterThan(0);

    // 2. Temporal forgets both, as retention would.
    for (const id of [frozen.phaseId, failing.phaseId]) {
      const deleted = await runProcess(repoPaths.temporalBin, ['workflow', 'delete', '--workflow-id', id, '--yes', '--address', server.env.address]);
      expect(deleted.code).toBe(0);
    }
    for (const id of [frozen.phaseId, failing.phaseId]) await waitUntilGone(id);

    // 3. Every command answers from the record: through the client ...
    expect(await getState(pc, frozen.phaseId)).toEqual(frozenState);
    const view = await getStatus(pc, frozen.phaseId);
    expect(view).toMatchObject({ status: 'FROZEN', workflowStatus: RECORD_ONLY, parityPass: frozenState.score?.parityPass });
    expect(view.gates.budget.approvals[0]?.signature.keyFingerprint).toMatch(/^ed25519:/);
    expect((await getPlan(pc, frozen.phaseId)).phaseId).toBe(frozen.phaseId);
    expect((await verifyPhase(pc, frozen.phaseId)).ok).toBe(true);
    // A frozen folder whose phase.json lost its review (and whose manifest was regenerated to match) fails verify.
    const copy = path.join(paths.stateDir, 'tampered');
    cpSync(frozenState.freeze!.dir, copy, { recursive: true });
    makeWritable(copy);
    const phaseJson = JSON.parse(readFileSync(path.join(copy, 'phase.json'), 'utf8')) as { state: { review: unknown } };
    phaseJson.state.review = null;
    writeFileSync(path.join(copy, 'phase.json'), JSON.stringify(phaseJson));
    writeFileSync(path.join(copy, 'MANIFEST.sha256'), renderManifest(copy));
    const tampered = verifyFrozenDir(copy);
    expect(tampered.ok).toBe(false);
    expect(tampered.decisions.problems.join('\n')).toMatch(/without an approving signed review/);
    const listed = await listPhases(pc);
    expect(listed.filter((p) => [frozen.phaseId, failing.phaseId].includes(p.phaseId)).map((p) => [p.status, p.workflowStatus]).sort()).toEqual([
      ['FAILED', RECORD_ONLY],
      ['FROZEN', RECORD_ONLY],
    ]);

    // ... and through bin/phasegate, as a person would.
    const env = { ...process.env, TEMPORAL_ADDRESS: server.env.address, PHASEGATE_TASK_QUEUE: taskQueue, PHASEGATE_STATE_DIR: paths.stateDir, PHASEGATE_KEYS_DIR: testKeys().dir, LOG_LEVEL: 'warn' };
    const cli = (...args: string[]) => runProcess(path.join(repoRoot, 'bin', 'phasegate'), args, env);
    const status = await cli('status', frozen.phaseId, '--json');
    expect(status.code).toBe(0);
    expect(JSON.parse(status.out)).toMatchObject({ status: 'FROZEN', workflowStatus: RECORD_ONLY });
    const ledger = await cli('ledger', failing.phaseId, '--json');
    expect((JSON.parse(ledger.out) as { ledger: unknown[] }).ledger).toEqual(failedState.ledger);
    expect((await cli('report', frozen.phaseId)).out).toContain('Phase parity_pass');
    expect((await cli('verify', frozen.phaseId)).out).toMatch(/^OK: \d+ files match the manifest .* 2 signed decision\(s\) verified/m);
    expect((await cli('list')).out).toContain(`${frozen.phaseId}`);

    // 4. A FROZEN protocol cannot be run again, whoever starts it.
    const rerun = await rejection(startPhase(pc, frozen), PhaseError);
    expect(rerun.message).toContain('is FROZEN (its record');
    // Started behind phasegate's back (straight through Temporal), it fails at its first step, before any gate.
    const sneaky = await runProcess(repoPaths.temporalBin, ['workflow', 'start', '--type', 'phaseWorkflow', '--task-queue', taskQueue, '--workflow-id', frozen.phaseId, '--address', server.env.address, '--input', JSON.stringify((await pc.records.read(frozen.phaseId))!.input)]);
    expect(sneaky.code).toBe(0);
    const refused = await rejection(phaseResult(server.env.client, frozen.phaseId), Error);
    expect(causes(refused)).toMatch(/is FROZEN in its record/);
    expect((await pc.records.read(frozen.phaseId))?.state).toEqual(frozenState);

    // 5. A restart of the FAILED one carries its spend into the new budget check.
    const restarted = await startPhase(pc, failing);
    expect(restarted.started).toBe(true);
    const again = await getState(pc, failing.phaseId);
    expect(again.ledger.map((e) => ({ ...e, earlierRun: undefined }))).toEqual(failedState.ledger.map((e) => ({ ...e, earlierRun: undefined })));
    expect(again.ledger.every((e) => e.earlierRun === true)).toBe(true);
    await server.env.client.workflow.getHandle(failing.phaseId).cancel();

    // 6. A successor that requires the frozen phase starts; reopening it works from the record.
    const successor = testProtocol('rec-next', { ...oneModel, requires_frozen: [frozen.protocol.phase] });
    expect((await startPhase(pc, successor)).started).toBe(true);
    await server.env.client.workflow.getHandle(successor.phaseId).cancel();
    const reopened = await reopenPhase(pc, frozen.phaseId, 'a defect found later');
    expect(reopened.started).toBe(true);
    expect((await getState(pc, reopened.phaseId)).reopenOf).toEqual({ phaseId: frozen.phaseId, defect: 'a defect found later' });
    await server.env.client.workflow.getHandle(reopened.phaseId).cancel();
  });
});

test('an unreadable record is listed and kept: nothing is started over it, and its phase keeps its bytes aside', async () => {
  // An adversarial probe: one truncated record made `list` throw for every phase, and its phase's record writes
  // retry forever.
  const { worker, pc } = await testWorker(server, 'rec-unreadable');
  // Run, so that the worker lets go of the server's connection at the end.
  await worker.runUntil(async () => {
    const loaded = testProtocol('rec-unreadable', oneModel);
    const store = pc.records as PhaseRecordStore;
    const file = path.join(store.dir, `${loaded.phaseId}.json`);
    mkdirSync(store.dir, { recursive: true });
    writeFileSync(file, '{"phaseId": "secret text, truncated mid-wr');
    const refused = await rejection(startPhase(pc, loaded), PhaseError);
    expect(refused.kind).toBe('refused');
    expect(refused.message).toMatch(/record of phase .* is unreadable: not JSON/);
    expect(refused.message).not.toContain('secret text');
    expect((await listPhases(pc)).find((p) => p.phaseId === loaded.phaseId)?.status).toBe('RECORD UNREADABLE');
    // A start straight through Temporal (no decision yet) is not recorded over it: it may have said FROZEN.
    const fresh = initialState(phaseInputOf(loaded), new Date().toISOString());
    await expect(store.write(phaseInputOf(loaded), fresh)).rejects.toThrow(/a phase with no decision yet is not recorded over it/);
    // A running phase's own write (its state holds all the record did) keeps the unreadable bytes beside it.
    await store.write(phaseInputOf(loaded), { ...fresh, status: 'AWAITING_REVIEW', appliedDecisions: ['approve:demo-approver:1000000'] });
    expect((await store.read(loaded.phaseId))?.state.status).toBe('AWAITING_REVIEW');
    const aside = readdirSync(store.dir).filter((n) => n.startsWith(`${loaded.phaseId}.json.unreadable-`));
    expect(aside).toHaveLength(1);
    expect(readFileSync(path.join(store.dir, aside[0]!), 'utf8')).toContain('secret text');
    expect((await store.list()).unreadable).toEqual([]);
  });
});

test('a cancel that arrives while the phase freezes leaves it FROZEN', async () => {
  const { worker, pc } = await testWorker(server, 'freeze-cancel');
  const loaded = testProtocol('freeze-cancel', oneModel);
  await worker.runUntil(async () => {
    await startPhase(pc, loaded);
    await approveAs(pc, loaded.phaseId, { by: 'demo-approver', usd: '1' });
    await reviewAs(pc, loaded.phaseId, { by: 'demo-reviewer', verdict: 'APPROVED' });
    let cancelledDuringFreeze = false;
    for (let i = 0; i < 6000 && !cancelledDuringFreeze; i++) {
      const s = await getState(pc, loaded.phaseId);
      if (s.status === 'FREEZING') {
        await server.env.client.workflow.getHandle(loaded.phaseId).cancel();
        cancelledDuringFreeze = true;
      } else if (s.status === 'FROZEN') break;
      else await new Promise((r) => setTimeout(r, 20));
    }
    expect(cancelledDuringFreeze).toBe(true);
    const final = await phaseResult(server.env.client, loaded.phaseId);
    expect(final.status).toBe('FROZEN');
    expect((await server.env.client.workflow.getHandle(loaded.phaseId).describe()).status.name).toBe('COMPLETED');
    expect((await pc.records.read(loaded.phaseId))?.state.status).toBe('FROZEN');
  });
});

async function waitUntilGone(id: string): Promise<void> {
  const { client } = server.env;
  for (let i = 0; i < 600; i++) {
    try {
      await client.workflow.getHandle(id).describe();
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) return;
      throw err;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${id} was not deleted`);
}

/** Every message down an error's cause chain, so a test can match the root reason. */
function causes(err: unknown): string {
  const out: string[] = [];
  for (let e: unknown = err; e instanceof Error; e = (e as { cause?: unknown }).cause) out.push(e.message);
  return out.join(' <- ');
}
