/**
 * The CLI as a user runs it (bin/phasegate, a real subprocess) against a real dev server: exit codes 0 / 2 / 1,
 * errors that name the field, idempotent start, the documented `status --json` shape. Also the HTTP routes.
 */
import { execFile } from 'node:child_process';
import { writeFileSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chmodSync, copyFileSync, mkdirSync, statSync } from 'node:fs';
import { repoRoot } from '../common/config';
import { testKeys } from './helpers/decisions';
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
  const vars = { TEMPORAL_ADDRESS: server.env.address, PHASEGATE_TASK_QUEUE: taskQueue, PHASEGATE_KEYS_DIR: testKeys().dir };
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
    for (const usd of ['ten', '0x10', '1e308', '5e-324', '-1']) {
      const r = await cli(['approve-budget', id, `--usd=${usd}`, '--by', 'demo-approver'], vars);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('--usd: must be a decimal amount in dollars');
    }
    const overCap = await cli(['approve-budget', id, '--usd', '150', '--by', 'demo-approver'], vars);
    expect(overCap.code).toBe(2);
    expect(overCap.stderr).toContain("exceeds the protocol's budget.cap_usd $5.00; the cap is a protocol field");
    const stranger = await cli(['approve-budget', id, '--usd', '1', '--by', 'mallory'], vars);
    expect(stranger.code).toBe(2);
    expect(stranger.stderr).toContain('approver "mallory" is not listed');
    const keyless = await cli(['approve-budget', id, '--usd', '1', '--by', 'nobody'], vars);
    expect(keyless.code).toBe(2);
    expect(keyless.stderr).toContain(`no key for nobody in ${testKeys().dir}`);
    for (const args of [['approve-budget', '', '--usd', '1', '--by', 'demo-approver'], ['status', '../x'], ['approve-budget', id, '--usd', '1', '--by', '../../etc/passwd']]) {
      const r = await cli(args, vars);
      expect(r.code).toBe(2);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
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

test('keys: new writes a 0600 key and prints the public key last; an exposed key file is refused', async () => {
  const dir = path.join(mkdtempSync(path.join(os.tmpdir(), 'phasegate-clikeys-')), 'keys');
  const env = { PHASEGATE_KEYS_DIR: dir, TEMPORAL_ADDRESS: '127.0.0.1:1' };
  const made = await cli(['keys', 'new', 'alice'], env);
  expect(made.code).toBe(0);
  const publicKey = made.stdout.trim().split('\n').pop()!;
  expect(publicKey).toMatch(/^ed25519:[A-Za-z0-9+/]{43}=$/);
  expect(statSync(path.join(dir, 'alice.key')).mode & 0o777).toBe(0o600);
  expect((await cli(['keys', 'show', 'alice'], env)).stdout.trim()).toBe(publicKey);
  const again = await cli(['keys', 'new', 'alice'], env);
  expect(again.code).toBe(2);
  expect(again.stderr).toContain('a key for alice already exists');
  expect((await cli(['keys', 'new', '../evil'], env)).code).toBe(2);

  // A copy that others can read is refused before anything is sent.
  const exposed = path.join(path.dirname(dir), 'exposed');
  mkdirSync(exposed);
  copyFileSync(path.join(dir, 'alice.key'), path.join(exposed, 'alice.key'));
  chmodSync(path.join(exposed, 'alice.key'), 0o644);
  const refused = await cli(['approve-budget', 'some-phase-0123456789ab', '--usd', '1', '--by', 'alice'], { ...env, PHASEGATE_KEYS_DIR: exposed });
  expect(refused.code).toBe(2);
  expect(refused.stderr).toContain('can be read by others (mode 644); refusing to use it');
});
