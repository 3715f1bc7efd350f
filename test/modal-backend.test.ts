/**
 * The Modal backend against the real Python launcher, with the launcher's double of the Modal SDK selected by
 * PHASEGATE_MODAL_FAKE=1 (no Modal account here). The double's state is a JSON file that every launcher
 * process of a test shares, so it can be read back: how many calls were spawned, which were cancelled.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { repoRoot } from '../common/config';
import { BackendError, type BackendContext, type BackendJob } from '../activities/backends/backend';
import { modalBackendFromEnv } from '../activities/backends/modal';
import { rejection } from './helpers/errors';
import { fakeModalEnv } from './helpers/modal';

/** Each launcher answers in well under a second here; a test that waits longer is a launcher polling forever. */
const TEST_TIMEOUT_MS = 30_000;

const python = path.join(repoRoot, 'runtime', '.venv', 'bin', 'python');
const runtimeSrc = path.join(repoRoot, 'runtime', 'src');

interface FakeState {
  spawns: string[];
  calls: Record<string, { outcome: string; cancelled: boolean; gpu: string; timeout_s: number }>;
  dict: Record<string, { call_id: string }>;
}

function setup(outcome = 'ok'): { job: BackendJob; env: NodeJS.ProcessEnv; state: () => FakeState; statePath: string } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'phasegate-modal-'));
  const specPath = path.join(dir, 'spec.json');
  writeFileSync(specPath, JSON.stringify({ phase_id: 'phase-modal', model_key: 'qwen-7b', methods: ['hooks', 'pyvene'], repeats: 1 }));
  const statePath = path.join(dir, 'fake-modal.json');
  const env = fakeModalEnv(statePath, outcome);
  const job: BackendJob = { phaseId: 'phase-modal', modelKey: 'qwen-7b', attempt: 1, gpu: 'A10G', timeoutMinutes: 20, specPath, outDir: path.join(dir, 'out') };
  return { job, env, statePath, state: () => JSON.parse(readFileSync(statePath, 'utf8')) as FakeState };
}

/**
 * `abort()` is a user's cancellation; `shutdown()` aborts the same signal the way a stopping worker does;
 * `timeout()` the way the attempt's own time limit (the budget left) does.
 */
function recorder(): { ctx: BackendContext; stages: string[]; abort: () => void; shutdown: () => void; timeout: () => void; onStage: (stage: string, f: () => void) => void } {
  const controller = new AbortController();
  const stages: string[] = [];
  const hooks: Array<[string, () => void]> = [];
  let requested = false;
  let timedOut = false;
  return {
    stages,
    abort: () => {
      requested = true;
      controller.abort();
    },
    shutdown: () => controller.abort(),
    timeout: () => {
      timedOut = true;
      controller.abort();
    },
    onStage: (stage, f) => hooks.push([stage, f]),
    ctx: {
      signal: controller.signal,
      cancelRequested: () => requested,
      timedOut: () => timedOut,
      progress: (p) => {
        if (p.stage === undefined) return;
        stages.push(p.stage);
        for (const [stage, f] of hooks.splice(0)) {
          if (stage === p.stage) f();
          else hooks.push([stage, f]);
        }
      },
    },
  };
}

function callOf(state: FakeState, id: string): FakeState['calls'][string] {
  const call = state.calls[id];
  if (call === undefined) throw new Error(`the double has no call ${id}`);
  return call;
}

function failure(promise: Promise<unknown>): Promise<BackendError> {
  return rejection(promise, BackendError);
}

/** A launcher that is killed outright after spawning, as it would be with its worker (SIGKILL, no cleanup). */
async function launcherKilledAfterSpawn(job: BackendJob, env: NodeJS.ProcessEnv): Promise<void> {
  const args = ['-m', 'phasegate_runtime.modal_launch', 'launch', '--phase', job.phaseId, '--model', job.modelKey, '--attempt', '1'];
  args.push('--gpu', job.gpu, '--timeout-minutes', '20', '--spec', job.specPath, '--out', job.outDir, '--poll-seconds', '0.05');
  const child = spawn(python, args, { env: { ...process.env, ...env, PYTHONPATH: runtimeSrc }, stdio: ['ignore', 'pipe', 'inherit'] });
  const closed = new Promise((resolve) => child.on('close', resolve));
  for await (const line of createInterface({ input: child.stdout })) {
    if (line.includes('"launched"')) break;
  }
  child.kill('SIGKILL');
  await closed;
}

describe('Modal backend (launcher with the Modal double)', () => {
  test('runs the job remotely, copies results into outDir and reports call ids and container GPU seconds', async () => {
    const { job, env, state } = setup();
    const rec = recorder();
    const result = await modalBackendFromEnv({ python, runtimeSrc }, undefined, env).run(job, rec.ctx);
    expect(result.resultPath).toBe(path.join(job.outDir, 'result.json'));
    expect(JSON.parse(readFileSync(result.resultPath, 'utf8'))).toMatchObject({ phase_id: 'phase-modal', fake_modal_call: 'fc-fake-1' });
    expect(existsSync(path.join(job.outDir, 'directions', 'pyvene_r0.npy'))).toBe(true);
    expect(result.measuredSeconds).toBe(12.5);
    expect(result.backendIds).toEqual({ backend: 'modal', app: 'ap-fake', call: 'fc-fake-1' });
    expect(rec.stages[0]).toBe('launching');
    expect(rec.stages).toContain('running');
    // The attempt's 20 minutes less the call's scale-down and stop margin (12 s) and the launcher's own start.
    expect(callOf(state(), 'fc-fake-1')).toMatchObject({ gpu: 'A10G' });
    expect(callOf(state(), 'fc-fake-1').timeout_s).toBeGreaterThanOrEqual(1200 - 12 - 5);
    expect(callOf(state(), 'fc-fake-1').timeout_s).toBeLessThanOrEqual(1200 - 12);
  }, TEST_TIMEOUT_MS);

  test('a retry after the worker died reattaches to the recorded call: no second spawn', async () => {
    const { job, env, state, statePath } = setup('hang');
    await launcherKilledAfterSpawn(job, env);
    expect(state().spawns).toEqual(['fc-fake-1']);
    const s = state();
    callOf(s, 'fc-fake-1').outcome = 'ok'; // the orphaned call finishes on Modal meanwhile
    writeFileSync(statePath, JSON.stringify(s));
    const result = await modalBackendFromEnv({ python, runtimeSrc }, undefined, env).run({ ...job, attempt: 2 }, recorder().ctx);
    expect(state().spawns).toEqual(['fc-fake-1']);
    expect(result.backendIds.call).toBe('fc-fake-1');
  }, TEST_TIMEOUT_MS);

  test('cancellation cancels the remote call', async () => {
    const { job, env, state } = setup('hang');
    const rec = recorder();
    rec.onStage('running', rec.abort);
    const err = await failure(modalBackendFromEnv({ python, runtimeSrc }, undefined, env).run(job, rec.ctx));
    expect(err.kind).toBe('cancelled');
    expect(err.message).toContain('fc-fake-1 cancelled');
    expect(callOf(state(), 'fc-fake-1').cancelled).toBe(true);
  }, TEST_TIMEOUT_MS);

  test('a worker shutdown detaches from the remote call without cancelling it', async () => {
    const { job, env, state } = setup('hang');
    const rec = recorder();
    rec.onStage('running', rec.shutdown);
    const err = await failure(modalBackendFromEnv({ python, runtimeSrc }, undefined, env).run(job, rec.ctx));
    expect(err.kind).toBe('failure');
    expect(err.message).toContain('detached');
    expect(callOf(state(), 'fc-fake-1').cancelled).toBeFalsy();
  }, TEST_TIMEOUT_MS);

  test('an attempt whose time limit (the budget left) runs out stops the remote call, which gets no longer limit', async () => {
    const { job, env, state } = setup('hang');
    const rec = recorder();
    rec.onStage('running', rec.timeout);
    const err = await failure(modalBackendFromEnv({ python, runtimeSrc }, undefined, env).run({ ...job, timeoutMinutes: 32.5 }, rec.ctx));
    expect(err.kind).toBe('failure');
    expect(err.message).toContain('time limit ran out');
    expect(callOf(state(), 'fc-fake-1').cancelled).toBe(true);
    // The call itself was spawned with the attempt's limit, so Modal stops it there even if nothing else does.
    expect(callOf(state(), 'fc-fake-1').timeout_s).toBeGreaterThanOrEqual(1950 - 12 - 5);
    expect(callOf(state(), 'fc-fake-1').timeout_s).toBeLessThanOrEqual(1950 - 12);
  }, TEST_TIMEOUT_MS);

  test('a failed call is a retryable failure with its GPU seconds, and the retry spawns a new call', async () => {
    const { job, env, state } = setup('fail');
    const err = await failure(modalBackendFromEnv({ python, runtimeSrc }, undefined, env).run(job, recorder().ctx));
    expect(err.kind).toBe('failure');
    expect(err.message).toContain('fake failure');
    expect(err.measuredSeconds).toBe(3);
    expect(err.backendIds.call).toBe('fc-fake-1');
    const retried = await modalBackendFromEnv({ python, runtimeSrc }, undefined, { ...env, PHASEGATE_MODAL_FAKE_OUTCOME: 'ok' }).run({ ...job, attempt: 2 }, recorder().ctx);
    expect(retried.backendIds.call).toBe('fc-fake-2');
    expect(state().spawns).toEqual(['fc-fake-1', 'fc-fake-2']);
  }, TEST_TIMEOUT_MS);

  test('missing credentials: fails at once, not retryable, with how to set them, and spawns nothing', async () => {
    const { job, env, statePath } = setup();
    const started = Date.now();
    const noCreds = { ...env, MODAL_TOKEN_ID: '', MODAL_TOKEN_SECRET: '', MODAL_CONFIG_PATH: path.join(os.tmpdir(), 'phasegate-no-such-modal.toml') };
    const err = await failure(modalBackendFromEnv({ python, runtimeSrc }, undefined, noCreds).run(job, recorder().ctx));
    expect(err.kind).toBe('missing_credentials');
    expect(err.message).toMatch(/MODAL_TOKEN_ID and MODAL_TOKEN_SECRET/);
    expect(err.message).toMatch(/modal token new/);
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(existsSync(statePath)).toBe(false);
  }, TEST_TIMEOUT_MS);
});

test('phasegate modal check: one smoke call on the GPU type, what it got printed; without credentials, what to do', () => {
  const { env } = setup();
  const cli = (args: string[], extra: NodeJS.ProcessEnv): { status: number | null; stdout: string; stderr: string } => {
    const r = spawnSync(process.execPath, [path.join(repoRoot, 'lib', 'client', 'cli.js'), ...args], { env: { ...process.env, ...extra }, encoding: 'utf8' });
    return { status: r.status, stdout: r.stdout, stderr: r.stderr };
  };
  const ok = cli(['modal', 'check', '--gpu', 'H100'], env);
  expect(ok.status).toBe(0);
  expect(ok.stdout).toMatch(/^modal check H100: ok \(gpu NVIDIA H100, driver \S+, cuda \S+, torch \S+; [0-9.]+ s\)/);
  const noCredentials = cli(['modal', 'check', '--gpu', 'H100'], { ...env, MODAL_TOKEN_ID: '', MODAL_TOKEN_SECRET: '', MODAL_CONFIG_PATH: path.join(os.tmpdir(), 'phasegate-none.toml') });
  expect(noCredentials.status).toBe(1);
  expect(noCredentials.stderr).toContain('MODAL_TOKEN_ID');
  const bad = cli(['modal', 'check', '--gpu', 'A10G; rm -rf /'], env);
  expect(bad.status).toBe(2);
  expect(bad.stderr).toContain('--gpu');
}, TEST_TIMEOUT_MS);
