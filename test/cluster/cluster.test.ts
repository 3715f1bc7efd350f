/**
 * The production topology on this machine (scripts/cluster/up.sh): the real Temporal server as separate
 * frontend, history x2, matching and worker processes on PostgreSQL, MinIO as the artifact store, and two
 * phasegate worker processes that share nothing but the store and Temporal (separate state and work folders, as
 * two hosts would). Several phases run at once; one worker and one history process are SIGKILLed mid-run; every
 * phase still reaches FROZEN, its runs made on one worker are scored and frozen by the other from the store,
 * `verify` passes from a third folder, and the ledger has one line per attempt Temporal actually scheduled.
 */
import { Client, Connection } from '@temporalio/client';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { approveAs, reviewAs } from '../helpers/decisions';
import { historyEvents, scheduledActivities } from '../helpers/history';
import { clusterUp, type Cluster } from '../helpers/cluster';
import { runProcess, testProtocol, uniqueQueue } from '../helpers/temporal';
import { getState, startPhase, verifyPhase, waitForStatus, type PhaseClient } from '../../client/phases';
import { isStoreRef, S3ArtifactStore } from '../../common/artifact-store';
import { repoRoot } from '../../common/config';
import { StoredPhaseRecords } from '../../common/phase-records';

const PHASES = 3;
// A port range of this run's own, so that a second checkout's cluster test on the same machine does not collide.
const portBase = 27200 + (process.pid % 40) * 50;

let cluster: Cluster;
let client: Client;
let pc: PhaseClient;
const taskQueue = uniqueQueue('cluster');
const workers: ChildProcess[] = [];
const stateDirs: string[] = [];
// Where the test's minutes go (printed at the end): the machine is small and shared, so it varies.
const t0 = Date.now();
const timeline: string[] = [];
const mark = (what: string): void => void timeline.push(`${what} ${((Date.now() - t0) / 1000).toFixed(0)}s`);

/** A `phasegate worker` process with a state folder of its own (its "host"), on the cluster and the shared store. */
function startWorker(name: string): { child: ChildProcess; stateDir: string; ready: () => boolean } {
  const stateDir = mkdtempSync(path.join(os.tmpdir(), `phasegate-${name}-`));
  const logFile = path.join(cluster.dir, 'logs', `phasegate-${name}.log`);
  const log = openSync(logFile, 'a');
  const child = spawn(process.execPath, [path.join(repoRoot, 'lib', 'client', 'cli.js'), 'worker'], {
    env: { ...process.env, ...cluster.env, PHASEGATE_STATE_DIR: stateDir, PHASEGATE_TASK_QUEUE: taskQueue, LOG_LEVEL: 'warn', LOG_FORMAT: 'json' },
    stdio: ['ignore', log, log],
  });
  workers.push(child);
  stateDirs.push(stateDir);
  // It says so once it has bundled the workflow code and polls the task queue.
  const ready = (): boolean => {
    if (child.exitCode !== null) throw new Error(`${name} exited (${child.exitCode}); see ${logFile}`);
    return existsSync(logFile) && readFileSync(logFile, 'utf8').includes('phasegate worker on task queue');
  };
  return { child, stateDir, ready };
}

/**
 * Runtime processes a worker started (their command line names a spec in its state folder); with `command`, only
 * those running that runtime command (`run` is a model run; `preflight` and `score` are not).
 */
function runtimesOf(stateDir: string, command?: 'run'): number[] {
  return readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e))
    .filter((pid) => {
      try {
        const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
        return cmdline.includes('phasegate_runtime') && cmdline.includes(stateDir) && (command === undefined || cmdline.includes(`\0${command}\0--spec`));
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** Whether a worker finished a model run (its result.json is in its own work folder). */
function finishedARun(stateDir: string): boolean {
  const work = path.join(stateDir, 'work');
  if (!existsSync(work)) return false;
  return readdirSync(work).some((phase) => readdirSync(path.join(work, phase)).some((model) => existsSync(path.join(work, phase, model, 'result.json'))));
}

async function until(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

beforeAll(async () => {
  cluster = clusterUp(portBase);
  mark('cluster up');
  const connection = await Connection.connect({ address: cluster.env.TEMPORAL_ADDRESS! });
  client = new Client({ connection, namespace: cluster.env.TEMPORAL_NAMESPACE! });
  // The test is a third host: it reaches the phases' records and artifacts only through the store.
  Object.assign(process.env, { AWS_ACCESS_KEY_ID: cluster.env.AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: cluster.env.AWS_SECRET_ACCESS_KEY });
  const store = new S3ArtifactStore({ bucket: cluster.env.PHASEGATE_S3_BUCKET!, prefix: '', endpoint: cluster.env.PHASEGATE_S3_ENDPOINT!, region: 'us-east-1', forcePathStyle: true });
  pc = { client, taskQueue, records: new StoredPhaseRecords(store), store };
}, 900_000);

afterAll(async () => {
  for (const w of workers) if (w.exitCode === null && w.signalCode === null) w.kill('SIGKILL');
  await client?.connection.close();
  cluster?.down();
  process.stdout.write(`cluster test timeline: ${timeline.join(', ')}\n`);
  if (process.env.KEEP_CLUSTER !== '1') for (const dir of stateDirs) rmSync(dir, { recursive: true, force: true });
});

test('two workers and a split Temporal cluster: a SIGKILLed worker and history process, every phase FROZEN and verified', async () => {
  const a = startWorker('worker-a');
  await until(a.ready, 180_000, 'worker A to poll');
  mark('A polling');
  const phaseIds: string[] = [];
  for (let i = 0; i < PHASES; i++) {
    // Two of the three methods: the topology is under test here, and pyvene's import alone is ~10 s of CPU per run.
    const loaded = testProtocol(`cluster-${i}`, { methods: ['hooks', 'nnsight'] });
    phaseIds.push((await startPhase(pc, loaded)).phaseId);
    await approveAs(pc, loaded.phaseId, { by: 'demo-approver', usd: 1 });
    await reviewAs(pc, loaded.phaseId, { by: 'demo-reviewer', verdict: 'APPROVED' });
  }
  mark(`${PHASES} phases approved`);
  // Worker A takes the first runs; B joins, and B is the host that finishes what A began.
  await until(() => runtimesOf(a.stateDir, 'run').length > 0, 300_000, 'worker A to start a model run');
  mark('A running');
  const b = startWorker('worker-b');
  await until(() => finishedARun(a.stateDir) && runtimesOf(a.stateDir, 'run').length > 0, 300_000, 'worker A to finish one run and be in the middle of another');

  a.child.kill('SIGKILL');
  process.kill(cluster.pid('history-0'), 'SIGKILL');
  mark('A and history-0 killed');
  // The runtimes die with their worker (parent-death signal): nothing of A's keeps computing.
  await until(() => runtimesOf(a.stateDir).length === 0, 15_000, "worker A's runtimes to exit");
  // B may still be starting (bundling the workflow code): the lost attempt waits out its heartbeat timeout anyway.
  await until(b.ready, 180_000, 'worker B to poll');
  mark('B polling');

  const states = await Promise.all(phaseIds.map((id) => waitForStatus(pc, id, 'FROZEN', 600)));
  mark('all FROZEN');
  expect(b.child.exitCode).toBeNull();

  for (const [i, state] of states.entries()) {
    const id = phaseIds[i]!;
    // One ledger line per attempt Temporal scheduled, numbered 1..n per model, the last one the success.
    const scheduled = scheduledActivities(await historyEvents(client, id), 'runModel');
    expect(state.ledger).toHaveLength(scheduled.length);
    for (const model of state.models) {
      const lines = state.ledger.filter((e) => e.modelKey === model.modelKey);
      expect(lines.map((e) => e.attempt)).toEqual(lines.map((_, k) => k + 1));
      expect(lines.map((e) => e.outcome).filter((o) => o === 'succeeded')).toEqual(['succeeded']);
      expect(lines[lines.length - 1]!.outcome).toBe('succeeded');
      expect(isStoreRef(model.resultPath!)).toBe(true);
    }
    // Scored from the store alone (the reference's and the native reads' directions were published too).
    expect(state.score?.models.flatMap((m) => m.failures ?? [])).toEqual([]);
    expect(state.score?.parityPass).toBe(true);
    expect(state.freeze!.dir).toBe(`s3://${cluster.env.PHASEGATE_S3_BUCKET}/frozen/${id}`);
    expect((await verifyPhase(pc, id)).ok).toBe(true);
    // The record a worker wrote to the store is the one every host reads.
    expect((await pc.records.read(id))?.state.status).toBe('FROZEN');
    expect((await getState(pc, id)).status).toBe('FROZEN');
  }
  // Runs worker A finished were scored and frozen by B, which had only the store to get them from.
  const ranOnA = readdirSync(path.join(a.stateDir, 'work')).filter((phase) => readdirSync(path.join(a.stateDir, 'work', phase)).some((m) => existsSync(path.join(a.stateDir, 'work', phase, m, 'result.json'))));
  expect(ranOnA.length).toBeGreaterThan(0);
  for (const phase of ranOnA) expect(existsSync(path.join(b.stateDir, 'artifacts', phase, 'MANIFEST.sha256'))).toBe(true);
  // The attempt that died with worker A is on its ledger, charged as observed, and was run again.
  const lost = states.flatMap((s) => s.ledger).filter((e) => e.outcome !== 'succeeded');
  expect(lost.length).toBeGreaterThanOrEqual(1);

  // `phasegate verify` on another host: nothing but the cluster's settings and an empty state folder.
  const elsewhere = mkdtempSync(path.join(os.tmpdir(), 'phasegate-host-c-'));
  const verified = await runProcess(path.join(repoRoot, 'bin', 'phasegate'), ['verify', phaseIds[0]!], { ...process.env, ...cluster.env, PHASEGATE_STATE_DIR: elsewhere, PHASEGATE_TASK_QUEUE: taskQueue });
  expect(verified.out).toContain('OK:');
  expect(verified.code).toBe(0);
});
