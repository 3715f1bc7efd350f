/**
 * Load on the native cluster (scripts/cluster/up.sh): N phases parked at their budget gate plus M small phases
 * (one tiny model, two libraries, one repeat) run to FROZEN, with two `phasegate worker` processes that share only Temporal and
 * the MinIO artifact store. Reports failures, wall times, and each worker's peak memory (its own VmHWM, and the
 * peak sampled RSS of the worker with its runtime children). Not a test: run it by hand, e.g.
 *
 *   make build cluster-build && node lib/bench/cluster-bench.js --parked 1000 --small 100 --out bench/results/cluster
 *
 * It starts its own cluster in a temporary folder (PORT_BASE 28600 by default) and stops it at the end.
 */
import { Client, Connection } from '@temporalio/client';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { getState, startPhase, type PhaseClient } from '../client/phases';
import { benchPeople } from './bench-people';
import { S3ArtifactStore } from '../common/artifact-store';
import { repoRoot } from '../common/config';
import { StoredPhaseRecords } from '../common/phase-records';
import { loadProtocol, type LoadedProtocol } from '../protocols/load';
import type { PhaseStatus } from '../workflows/definitions';

const { values: args } = parseArgs({
  options: {
    parked: { type: 'string', default: '1000' },
    small: { type: 'string', default: '100' },
    concurrency: { type: 'string', default: '16' },
    'port-base': { type: 'string', default: '28600' },
    'timeout-minutes': { type: 'string', default: '120' },
    out: { type: 'string' },
  },
});
const PARKED = Number(args.parked);
const SMALL = Number(args.small);
const CONCURRENCY = Number(args.concurrency);
const deadline = Date.now() + Number(args['timeout-minutes']) * 60_000;

const runTag = `b${Date.now().toString(36)}`;
const people = benchPeople('bench');

/** A small protocol (one tiny model, one repeat, a few tokens) in a folder of its own: a distinct phase per tag. */
function benchProtocol(tag: string): LoadedProtocol {
  const src = path.join(repoRoot, 'protocols');
  const demo = JSON.parse(readFileSync(path.join(src, 'demo.json'), 'utf8')) as Record<string, unknown>;
  const dir = path.join(os.tmpdir(), `phasegate-bench-protocols-${runTag}`, tag);
  mkdirSync(dir, { recursive: true });
  for (const f of ['harmful.txt', 'harmless.txt', 'demo-eval.txt']) copyFileSync(path.join(src, 'prompts', f), path.join(dir, f));
  copyFileSync(path.join(src, 'pricing', 'modal-gpu.json'), path.join(dir, 'pricing.json'));
  const protocol = {
    ...demo,
    phase: `bench-${runTag}-${tag}`,
    models: [{ key: 'tiny-qwen2', id: 'tiny:qwen2', gpu: 'cpu', dtype: 'float32', expected_gpu_seconds: 30, timeout_minutes: 15, tiny_seed: 0 }],
    // Two libraries, as in the cluster test: the load is the topology's, and pyvene's import is ~10 s of CPU a run.
    methods: ['nnsight', 'hooks'],
    repeats: 1,
    sampling: { decode: 'greedy', max_new_tokens: 6, batch_size: 8 },
    prompts: { harmful: 'harmful.txt', harmless: 'harmless.txt', eval: 'demo-eval.txt' },
    pricing: 'pricing.json',
    people: people.roster,
    budget: { cap_usd: 1, approvers: ['demo-approver'], deadline_hours: null },
  };
  const file = path.join(dir, 'protocol.json');
  writeFileSync(file, JSON.stringify(protocol, null, 2));
  return loadProtocol(file);
}

interface Worker {
  name: string;
  child: ChildProcess;
  peakTreeRssKiB: number;
}

function startWorker(clusterDir: string, env: Record<string, string>, name: string, taskQueue: string): Worker {
  const stateDir = mkdtempSync(path.join(os.tmpdir(), `phasegate-bench-${name}-`));
  const log = openSync(path.join(clusterDir, 'logs', `phasegate-${name}.log`), 'a');
  const child = spawn(process.execPath, [path.join(repoRoot, 'lib', 'client', 'cli.js'), 'worker'], {
    env: { ...process.env, ...env, PHASEGATE_STATE_DIR: stateDir, PHASEGATE_TASK_QUEUE: taskQueue, LOG_LEVEL: 'warn', LOG_FORMAT: 'json' },
    stdio: ['ignore', log, log],
  });
  return { name, child, peakTreeRssKiB: 0 };
}

/** KiB from a /proc/<pid>/status line (VmRSS, VmHWM); 0 once the process is gone. */
function statusKiB(pid: number, field: string): number {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** The worker's RSS plus its descendants' (the runtime processes it starts). */
function treeRssKiB(root: number): number {
  const children = new Map<number, number[]>();
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const ppid = Number(/^PPid:\s+(\d+)/m.exec(readFileSync(`/proc/${e}/status`, 'utf8'))?.[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(e)]);
    } catch {
      // gone
    }
  }
  let total = 0;
  for (const stack = [root]; stack.length > 0; ) {
    const pid = stack.pop()!;
    total += statusKiB(pid, 'VmRSS');
    stack.push(...(children.get(pid) ?? []));
  }
  return total;
}

/** Runs `fn` over `items`, `limit` at a time; returns the failures. */
async function pool<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<{ item: T; error: string }[]> {
  const failures: { item: T; error: string }[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: limit }, async () => {
      while (next < items.length) {
        const item = items[next++]!;
        await fn(item).catch((err: unknown) => failures.push({ item, error: err instanceof Error ? err.message : String(err) }));
      }
    }),
  );
  return failures;
}

/** Waits until every phase's record shows its estimate (the phase ran its first activities and waits at the gate). */
async function untilParked(pc: PhaseClient, ids: string[], sample: () => void): Promise<number> {
  let waiting = ids;
  while (waiting.length > 0 && Date.now() < deadline) {
    sample();
    const records = await Promise.all(waiting.map((id) => pc.records.read(id)));
    waiting = waiting.filter((_, i) => !(records[i]?.state.status === 'AWAITING_BUDGET' && records[i]?.state.estimate !== null));
    if (waiting.length > 0) await new Promise((r) => setTimeout(r, 2000));
  }
  return ids.length - waiting.length;
}

async function countWithStatus(client: Client, taskQueue: string, status: PhaseStatus): Promise<number> {
  const { count } = await client.workflow.count(`TaskQueue = '${taskQueue}' AND PhaseStatus = '${status}'`);
  return count;
}

async function untilCount(client: Client, taskQueue: string, status: PhaseStatus, n: number, sample: () => void): Promise<number> {
  for (;;) {
    sample();
    const c = await countWithStatus(client, taskQueue, status);
    if (c >= n || Date.now() > deadline) return c;
    await new Promise((r) => setTimeout(r, 2000));
  }
}

async function main(): Promise<void> {
  const clusterDir = mkdtempSync(path.join(os.tmpdir(), 'phasegate-bench-cluster-'));
  const t0 = Date.now();
  execFileSync(path.join(repoRoot, 'scripts', 'cluster', 'up.sh'), [clusterDir], { env: { ...process.env, PORT_BASE: args['port-base'] }, stdio: 'inherit' });
  const clusterUpS = (Date.now() - t0) / 1000;
  const env = Object.fromEntries(
    readFileSync(path.join(clusterDir, 'cluster.env'), 'utf8')
      .split('\n')
      .filter((l) => l.includes('='))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );
  Object.assign(process.env, { AWS_ACCESS_KEY_ID: env.AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: env.AWS_SECRET_ACCESS_KEY });
  const taskQueue = `bench-${runTag}`;
  const workers = [startWorker(clusterDir, env, 'worker-a', taskQueue), startWorker(clusterDir, env, 'worker-b', taskQueue)];
  const sample = (): void => {
    for (const w of workers) if (w.child.pid !== undefined) w.peakTreeRssKiB = Math.max(w.peakTreeRssKiB, treeRssKiB(w.child.pid));
  };
  const timer = setInterval(sample, 1000);
  const connection = await Connection.connect({ address: env.TEMPORAL_ADDRESS! });
  const client = new Client({ connection, namespace: env.TEMPORAL_NAMESPACE! });
  const store = new S3ArtifactStore({ bucket: env.PHASEGATE_S3_BUCKET!, prefix: '', endpoint: env.PHASEGATE_S3_ENDPOINT!, region: 'us-east-1', forcePathStyle: true });
  const pc: PhaseClient = { client, taskQueue, records: new StoredPhaseRecords(store), store };
  const report: Record<string, unknown> = { parked: PARKED, small: SMALL, concurrency: CONCURRENCY, clusterUpS, machine: `${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB` };
  try {
    // 1. N phases started and parked at the budget gate (estimate done, record written, waiting on a person).
    const parkedProtocols = Array.from({ length: PARKED }, (_, i) => benchProtocol(`p${i}`));
    let t = Date.now();
    const startFailures = await pool(parkedProtocols, CONCURRENCY, async (p) => void (await startPhase(pc, p)));
    report.parkedStartS = (Date.now() - t) / 1000;
    const failed = new Set(startFailures.map((f) => f.item.phaseId));
    const parked = await untilParked(pc, parkedProtocols.map((p) => p.phaseId).filter((id) => !failed.has(id)), sample);
    report.parkedAllAtGateS = (Date.now() - t) / 1000;
    report.parkedAtGate = parked;
    report.parkedStartFailures = startFailures.slice(0, 5);
    report.parkedStartFailureCount = startFailures.length;
    console.log(JSON.stringify(report));

    // 2. M small phases, beside the parked ones, approved and reviewed, run to FROZEN by the two workers.
    const small = Array.from({ length: SMALL }, (_, i) => benchProtocol(`s${i}`));
    t = Date.now();
    const smallFailures = await pool(small, CONCURRENCY, async (p) => {
      await startPhase(pc, p);
      await people.passGates(pc, p.phaseId, '0.5');
    });
    report.smallDecidedS = (Date.now() - t) / 1000;
    const frozen = await untilCount(client, taskQueue, 'FROZEN', SMALL - smallFailures.length, sample);
    report.smallAllFrozenS = (Date.now() - t) / 1000;
    report.smallFrozen = frozen;
    report.smallDecisionFailureCount = smallFailures.length;
    report.smallDecisionFailures = smallFailures.slice(0, 5).map((f) => ({ phase: f.item.phaseId, error: f.error }));
    const states = await Promise.all(small.map((p) => getState(pc, p.phaseId).catch(() => null)));
    report.smallNotFrozen = states.filter((s) => s?.status !== 'FROZEN').length;
    report.smallFailed = states.filter((s) => s?.status === 'FAILED').length;
    report.smallRetriedAttempts = states.reduce((n, s) => n + (s?.ledger.filter((e) => e.outcome !== 'succeeded').length ?? 0), 0);
    report.parkedStillAtGate = await countWithStatus(client, taskQueue, 'AWAITING_BUDGET');
  } finally {
    clearInterval(timer);
    sample();
    report.workers = workers.map((w) => ({ name: w.name, peakRssMiB: Math.round(statusKiB(w.child.pid!, 'VmHWM') / 1024), peakWithRuntimesMiB: Math.round(w.peakTreeRssKiB / 1024), alive: w.child.exitCode === null }));
    for (const w of workers) w.child.kill('SIGTERM');
    await connection.close();
    store.destroy();
    await new Promise((r) => setTimeout(r, 3000));
    execFileSync(path.join(repoRoot, 'scripts', 'cluster', 'down.sh'), [clusterDir, ...(process.env.KEEP_CLUSTER === '1' ? [] : ['--purge'])]);
    people.dispose();
  }
  report.totalS = (Date.now() - t0) / 1000;
  const text = JSON.stringify(report, null, 2);
  console.log(text);
  if (args.out !== undefined) {
    mkdirSync(args.out, { recursive: true });
    writeFileSync(path.join(args.out, `cluster-bench-${PARKED}-${SMALL}.json`), `${text}\n`);
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
