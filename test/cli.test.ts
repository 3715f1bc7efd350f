/**
 * The CLI as a user runs it (bin/phasegate, a real subprocess) against a real dev server: exit codes 0 / 2 / 1,
 * errors that name the field, idempotent start, the documented `status --json` shape. Also the HTTP routes.
 */
import { execFile } from 'node:child_process';
import { writeFileSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { route } from '../client/http';
import { PhaseError } from '../client/phases';
import { repoRoot } from '../common/config';
import { serverPerFile, testProtocol, testWorker } from './helpers/temporal';

const server = serverPerFile();

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(args: string[], extraEnv: Record<string, string>): Promise<Run> {
  return new Promise((resolve) => {
    execFile(path.join(repoRoot, 'bin', 'phasegate'), args, { env: { ...process.env, LOG_LEVEL: 'warn', ...extraEnv } }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

test('start, decide and query through bin/phasegate with the documented exit codes', async () => {
  const { worker, taskQueue } = await testWorker(server, 'cli');
  const vars = { TEMPORAL_ADDRESS: server.env.address, PHASEGATE_TASK_QUEUE: taskQueue };
  const loaded = testProtocol('cli');
  await worker.runUntil(async () => {
    const badDir = mkdtempSync(path.join(os.tmpdir(), 'phasegate-bad-'));
    const bad = path.join(badDir, 'p.json');
    writeFileSync(bad, JSON.stringify({ protocol_version: 1, phase: 'x', repeats: -1 }));
    const refused = await cli(['start', '--protocol', bad], vars);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('repeats:');
    expect(refused.stderr).toContain('title:');

    const started = await cli(['start', '--protocol', loaded.protocolPath, '--json'], vars);
    expect(started.code).toBe(0);
    expect(JSON.parse(started.stdout)).toEqual({ phaseId: loaded.phaseId, started: true, protocolHash: loaded.protocolHash });
    const again = await cli(['start', '--protocol', loaded.protocolPath], vars);
    expect(again.code).toBe(0);
    expect(again.stdout.trim().split('\n').pop()).toBe(loaded.phaseId);

    const id = loaded.phaseId;
    expect((await cli(['approve-budget', id, '--usd', 'ten', '--by', 'demo-approver'], vars)).stderr).toContain('--usd: must be a positive, finite amount');
    const stranger = await cli(['approve-budget', id, '--usd', '1', '--by', 'mallory'], vars);
    expect(stranger.code).toBe(2);
    expect(stranger.stderr).toContain('approver "mallory" is not listed');
    expect((await cli(['review', id, '--verdict', 'meh', '--by', 'demo-reviewer'], vars)).code).toBe(2);
    expect((await cli(['approve-budget', id, '--usd', '0.5', '--by', 'demo-approver', '--note', 'ok'], vars)).code).toBe(0);

    const status = await cli(['status', id, '--json'], vars);
    expect(status.code).toBe(0);
    const view = JSON.parse(status.stdout) as Record<string, unknown>;
    expect(Object.keys(view).sort()).toEqual(
      ['approvedUsd', 'artifactDir', 'estimateUsd', 'events', 'failure', 'gates', 'models', 'parityPass', 'phase', 'phaseId', 'protocolHash', 'remainingUsd', 'reportPath', 'spentUsd', 'status', 'workflowStatus'].sort(),
    );
    expect(view).toMatchObject({ status: 'AWAITING_REVIEW', approvedUsd: 0.5, spentUsd: 0 });

    const missing = await cli(['status', 'no-such-phase'], vars);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('no phase with id no-such-phase');
    expect((await cli(['frobnicate'], vars)).code).toBe(2);
    expect((await cli(['cancel', id], vars)).code).toBe(0);
  });
});

test('an unreachable server is exit 1 with a hint, not a hang', async () => {
  const r = await cli(['list'], { TEMPORAL_ADDRESS: '127.0.0.1:1' });
  expect(r.code).toBe(1);
  expect(r.stderr).toContain('cannot reach Temporal at 127.0.0.1:1');
});

test('the HTTP routes validate bodies and map to the same operations', async () => {
  const { worker, pc } = await testWorker(server, 'http');
  const loaded = testProtocol('http');
  await worker.runUntil(async () => {
    const started = (await route(pc, 'POST', '/phases', () => Promise.resolve({ protocol: loaded.protocolPath }))) as { phaseId: string };
    expect(started.phaseId).toBe(loaded.phaseId);
    const bad = await route(pc, 'POST', `/phases/${started.phaseId}/approve-budget`, () => Promise.resolve({ by: 'demo-approver', usd: -1 })).catch((e: unknown) => e);
    expect(bad).toBeInstanceOf(PhaseError);
    expect((bad as PhaseError).message).toContain('usd:');
    await route(pc, 'POST', `/phases/${started.phaseId}/approve-budget`, () => Promise.resolve({ by: 'demo-approver', usd: 1 }));
    const view = (await route(pc, 'GET', `/phases/${started.phaseId}`, () => Promise.resolve({}))) as { status: string };
    expect(view.status).toBe('AWAITING_REVIEW');
    await route(pc, 'POST', `/phases/${started.phaseId}/cancel`, () => Promise.resolve({}));
  });
});
