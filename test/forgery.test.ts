/**
 * The attacker's view of the gates: decisions and start inputs sent straight to Temporal with the Temporal CLI
 * (bypassing phasegate's own client, as anyone who can reach the server could), against a real dev server and
 * the real workflow. Every forged decision must be refused by the update validator, with its reason, before it
 * enters history; every crafted start input must end the run before any gate opens or any activity runs.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cancelPhase, decisionTarget, getState, PhaseError, startPhase, waitForStatus } from '../client/phases';
import { sign as nodeSign } from 'node:crypto';
import { decisionMessage } from '../domain/decisions';
import { approveBudgetUpdate } from '../workflows/definitions';
import { phaseInputOf } from '../protocols/load';
import { initialState } from '../workflows/phase-logic';
import { approveAs, keyOf, sign } from './helpers/decisions';
import { historyEvents, scheduledActivities, updateAcceptedEvents } from './helpers/history';
import { repoPaths, serverPerFile, testProtocol, testWorker, waitFor } from './helpers/temporal';
import { rejection } from './helpers/errors';

const server = serverPerFile();

interface Run {
  code: number;
  out: string;
}

/** The Temporal CLI, as an attacker on the same machine would run it. */
function temporalCli(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(repoPaths.temporalBin, [...args, '--address', server.env.address], (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr });
    });
  });
}

const scratch = mkdtempSync(path.join(os.tmpdir(), 'phasegate-forge-'));
let inputs = 0;
/** The CLI's --input-file: a 900 KB argument would exceed the kernel's limit for one argv entry. */
function inputFile(value: unknown): string {
  const file = path.join(scratch, `input-${(inputs += 1)}.json`);
  writeFileSync(file, JSON.stringify(value));
  return file;
}

const updateWithCli = (phaseId: string, input: unknown): Promise<Run> =>
  temporalCli(['workflow', 'update', 'execute', '--workflow-id', phaseId, '--name', approveBudgetUpdate.name, '--input-file', inputFile(input)]);

test('forged approvals sent straight to Temporal are refused 100%, each with its reason, and never enter history', async () => {
  const { worker, pc } = await testWorker(server, 'forge');
  const loaded = testProtocol('forge');
  const other = testProtocol('forge-other');
  await worker.runUntil(async () => {
    const { phaseId } = await startPhase(pc, loaded);
    await waitFor(async () => (await getState(pc, phaseId)).estimate !== null);
    const target = await decisionTarget(pc, phaseId);
    const good = sign('demo-approver', { kind: 'approve-budget', ...target, content: { usd: '1', note: '' } });
    const { signature: _, ...unsigned } = good;
    const forgeries: [string, unknown, RegExp][] = [
      ['the old unsigned form', { by: 'demo-approver', usd: 1e9 }, /decision: unknown field "usd"/],
      ['unsigned', unsigned, /signature: missing/],
      ["signed with another person's key", sign('demo-approver', { kind: 'approve-budget', ...target, content: { usd: '1', note: '' } }, 'mallory'), /does not verify with demo-approver's key/],
      ['amount altered after signing', { ...good, content: { ...good.content, usd: '5' } }, /does not verify/],
      ["another phase's signature replayed", sign('demo-approver', { kind: 'approve-budget', phaseId: other.phaseId, protocolHash: other.protocolHash, run: target.run, content: { usd: '1', note: '' } }), /signed for phase test-forge-other/],
      ['retargeted at this phase', { ...sign('demo-approver', { kind: 'approve-budget', phaseId: other.phaseId, protocolHash: other.protocolHash, run: target.run, content: { usd: '1', note: '' } }), phaseId, protocolHash: target.protocolHash }, /does not verify/],
      ['an approver named in no protocol', sign('mallory', { kind: 'approve-budget', ...target, content: { usd: '1', note: '' } }), /approver "mallory" is not listed/],
      ['a 900 KB signer name', { ...good, by: 'x'.repeat(900_000) }, /by: must be a person's name/],
    ];
    for (const [what, input, reason] of forgeries) {
      const r = await updateWithCli(phaseId, input);
      expect({ what, code: r.code }).toEqual({ what, code: 1 });
      expect({ what, matches: reason.test(r.out) }).toEqual({ what, matches: true });
    }
    const events = await historyEvents(server.env.client, phaseId);
    expect(updateAcceptedEvents(events, 'approveBudget')).toHaveLength(0);
    expect((await getState(pc, phaseId)).budget.approvals).toHaveLength(0);

    // The genuine decision, sent the same way, passes: the CLI path is not special.
    const genuine = await updateWithCli(phaseId, good);
    expect(genuine.code).toBe(0);
    const state = await waitForStatus(pc, phaseId, 'AWAITING_REVIEW', 30);
    expect(state.budget.approvals[0]?.signature.signed.signature).toBe(good.signature);
    // Sent again, it is acknowledged and not applied twice.
    expect((await updateWithCli(phaseId, good)).code).toBe(0);
    expect((await getState(pc, phaseId)).budget.approvals).toHaveLength(1);
  });
});

test("a phase started again after a cancel refuses its earlier run's signed decisions, replayed by someone without a key", async () => {
  // An adversarial probe: the decisions of a cancelled run are readable (status, the record, history) and were
  // for the same phase id and protocol hash, so before decisions were bound to a run, replaying them straight to
  // Temporal approved and reviewed the new run, and its GPU work ran without a new yes.
  const { worker, pc } = await testWorker(server, 'restart-replay');
  const loaded = testProtocol('restart-replay');
  await worker.runUntil(async () => {
    const { phaseId } = await startPhase(pc, loaded);
    await approveAs(pc, phaseId, { by: 'demo-approver', usd: 1 });
    const firstRun = (await decisionTarget(pc, phaseId)).run;
    await cancelPhase(pc, phaseId);
    const cancelled = await waitForStatus(pc, phaseId, 'CANCELLED', 120);
    const oldApproval = cancelled.budget.approvals[0]!.signature.signed;
    await rejection(server.env.client.workflow.getHandle(phaseId).result(), Error);

    expect((await startPhase(pc, loaded)).started).toBe(true);
    await waitFor(async () => (await getState(pc, phaseId)).estimate !== null);
    const target = await decisionTarget(pc, phaseId);
    expect(target.run).not.toBe(firstRun);
    const replayed = await updateWithCli(phaseId, oldApproval);
    expect(replayed.code).toBe(1);
    expect(replayed.out).toMatch(/run: the decision was signed for another run of phase/);
    // A version 1 decision (bound to no run) is refused too, even freshly signed with the right key.
    const v1 = { ...sign('demo-approver', { kind: 'approve-budget', ...target, content: { usd: '1', note: '' } }) };
    const { run: _run, ...unbound } = { ...v1, v: 1 as const };
    const v1Signed = { ...unbound, signature: nodeSign(null, decisionMessage(unbound), keyOf('demo-approver')).toString('base64') };
    const old = await updateWithCli(phaseId, v1Signed);
    expect(old.code).toBe(1);
    expect(old.out).toMatch(/v: must be 2: this decision is not bound to a run/);
    expect(updateAcceptedEvents(await historyEvents(server.env.client, phaseId), 'approveBudget')).toHaveLength(0);
    expect((await getState(pc, phaseId)).status).toBe('AWAITING_BUDGET');
    // The approver's new yes, for this run, is accepted.
    await approveAs(pc, phaseId, { by: 'demo-approver', usd: 1 });
    expect((await getState(pc, phaseId)).status).toBe('AWAITING_REVIEW');
    await cancelPhase(pc, phaseId);
  });
});

test('a crafted start input (a resumed RUNNING state, a foreign roster under a real phase id) runs nothing', async () => {
  const { worker, pc, taskQueue } = await testWorker(server, 'crafted');
  const loaded = testProtocol('crafted');
  const input = phaseInputOf(loaded);
  const resume = { ...initialState(input, new Date().toISOString()), status: 'RUNNING', budget: { approvedUsd: 1e9, approvedMicros: 1e15, approvals: [], rejection: null } };
  const start = (id: string, i: unknown): Promise<Run> =>
    temporalCli(['workflow', 'start', '--type', 'phaseWorkflow', '--task-queue', taskQueue, '--workflow-id', id, '--input-file', inputFile(i)]);
  await worker.runUntil(async () => {
    // 1. The probe's attack: a start carrying a resumed RUNNING state with a billion dollars approved.
    expect((await start(`${loaded.phaseId}`, { ...input, resume })).code).toBe(0);
    const failed = await rejection(server.env.client.workflow.getHandle(loaded.phaseId).result(), Error);
    expect(String((failed as { cause?: Error }).cause?.message)).toMatch(/refused start input: resume: a resumed state is accepted only from the phase's own continue-as-new/);
    const events = await historyEvents(server.env.client, loaded.phaseId);
    expect(scheduledActivities(events)).toHaveLength(0);

    // 2. Someone else's roster under the real phase id: the hash no longer matches what it claims.
    const hijack = { ...input, people: { ...input.people, 'demo-approver': input.people['demo-reviewer'] } };
    const hijackId = `${loaded.phaseId}`;
    expect((await start(hijackId, hijack)).code).toBe(0);
    const hijacked = await rejection(server.env.client.workflow.getHandle(hijackId).result(), Error);
    expect(String((hijacked as { cause?: Error }).cause?.message)).toMatch(/protocolHash: does not match/);

    // The genuine start still works afterwards (a refused run failed, so the id may be reused), and the forged
    // runs carried no spend into it.
    const started = await startPhase(pc, loaded);
    expect(started.started).toBe(true);
    await approveAs(pc, loaded.phaseId, { by: 'demo-approver', usd: '1' });
    const state = await waitForStatus(pc, loaded.phaseId, 'AWAITING_REVIEW', 30);
    expect(state.ledger).toHaveLength(0);
    expect(state.budget.approvedUsd).toBe(1);
    await server.env.client.workflow.getHandle(loaded.phaseId).cancel();
  });
});

test('a cron start carrying a resumed state is refused on every run, and runs nothing', async () => {
  const { worker, taskQueue } = await testWorker(server, 'cron');
  const loaded = testProtocol('cron');
  const input = phaseInputOf(loaded);
  // A cron run carries the previous run's id, as a continue-as-new does: that alone must not make a resume trusted.
  const resume = { ...initialState(input, new Date().toISOString()), status: 'RUNNING', budget: { approvedUsd: 1e6, approvedMicros: 1e12, approvals: [], rejection: null } };
  await worker.runUntil(async () => {
    const r = await temporalCli(['workflow', 'start', '--type', 'phaseWorkflow', '--task-queue', taskQueue, '--workflow-id', loaded.phaseId, '--cron', '@every 2s', '--input-file', inputFile({ ...input, resume })]);
    expect(r.code).toBe(0);
    await new Promise((res) => setTimeout(res, 7000));
    const runs: string[] = [];
    for await (const wf of server.env.client.workflow.list({ query: `WorkflowId = '${loaded.phaseId}'` })) runs.push(wf.runId);
    expect(runs.length).toBeGreaterThanOrEqual(2);
    for (const runId of runs) {
      const history = await server.env.client.workflow.getHandle(loaded.phaseId, runId).fetchHistory();
      expect(scheduledActivities(history.events ?? [])).toHaveLength(0);
    }
    await server.env.client.workflow.getHandle(loaded.phaseId).terminate('test over');
  });
});

test('a decision through phasegate\'s client with a wrong key is refused as a PhaseError of kind refused', async () => {
  const { worker, pc } = await testWorker(server, 'wrongkey');
  const loaded = testProtocol('wrongkey');
  await worker.runUntil(async () => {
    const { phaseId } = await startPhase(pc, loaded);
    await waitFor(async () => (await getState(pc, phaseId)).estimate !== null);
    const target = await decisionTarget(pc, phaseId);
    const { approveBudget } = await import('../client/phases');
    const err = await rejection(approveBudget(pc, sign('demo-approver', { kind: 'approve-budget', ...target, content: { usd: '1', note: '' } }, 'mallory')), PhaseError);
    expect(err.kind).toBe('refused');
    expect(err.exitCode).toBe(2);
    expect(err.message).toContain("does not verify with demo-approver's key");
    await server.env.client.workflow.getHandle(phaseId).cancel();
  });
});
