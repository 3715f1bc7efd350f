/**
 * A phase's wall time with its models one at a time against side by side (issue 16, item 3), on the embedded
 * stack: a Temporal dev server, one worker, the real runtime. Two phases, each run with the worker's model-run
 * slots at 1 (the models then run one after the other, as the workflow did before they ran side by side) and at
 * 2 (both at once):
 *
 * - `demo`: protocols/demo.json as `make demo` runs it (two tiny models, three libraries, this machine's CPU);
 * - `modal`: the same two tiny models on the Modal backend against the double, whose `execute` outcome runs the
 *   real container body in a child process per call and holds each call for at least --modal-run-s seconds (a
 *   stand-in for a GPU run's length: on Modal each model has a GPU of its own).
 *
 * Reports, per phase and setting, the model stage (first attempt start to last attempt end, from the ledger) and
 * the whole phase (start to FROZEN). Not a test: run it by hand, e.g.
 *
 *   make build && node lib/bench/phase-wall.js --runs 2 --modal-run-s 60 --out bench/results/phase-wall
 */
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { bundleWorkflowCode, DefaultLogger, Runtime } from '@temporalio/worker';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { startPhase, type PhaseClient } from '../client/phases';
import { benchPeople } from './bench-people';
import { parseEnv, repoRoot, resolvePaths, type Paths } from '../common/config';
import { PhaseRecordStore } from '../common/phase-records';
import { loadProtocol, type LoadedProtocol } from '../protocols/load';
import { searchAttributes } from '../workflows/definitions';
import type { phaseWorkflow } from '../workflows/phase';
import { createPhaseWorker, workflowsPath } from '../worker/worker';

const { values: args } = parseArgs({
  options: {
    runs: { type: 'string', default: '1' },
    'modal-run-s': { type: 'string', default: '60' },
    phases: { type: 'string', default: 'demo,modal' },
    out: { type: 'string' },
  },
});
const RUNS = Number(args.runs);
const MODAL_RUN_S = Number(args['modal-run-s']);
const PHASES = args.phases.split(',') as ('demo' | 'modal')[];

const runTag = `w${Date.now().toString(36)}`;
const people = benchPeople('wall');

/** protocols/demo.json with this run's people, a phase name of its own, and (modal) the Modal backend. */
function protocolFor(kind: 'demo' | 'modal', tag: string): LoadedProtocol {
  const src = path.join(repoRoot, 'protocols');
  const demo = JSON.parse(readFileSync(path.join(src, 'demo.json'), 'utf8')) as Record<string, unknown> & { models: Record<string, unknown>[] };
  const dir = path.join(os.tmpdir(), `phasegate-wall-protocols-${runTag}`, tag);
  mkdirSync(path.join(dir, 'prompts'), { recursive: true });
  mkdirSync(path.join(dir, 'pricing'), { recursive: true });
  for (const f of ['harmful.txt', 'harmless.txt', 'demo-eval.txt']) copyFileSync(path.join(src, 'prompts', f), path.join(dir, 'prompts', f));
  copyFileSync(path.join(src, 'pricing', 'modal-gpu.json'), path.join(dir, 'pricing', 'modal-gpu.json'));
  const modal = kind === 'modal' ? { backend: 'modal', models: demo.models.map((m) => ({ ...m, gpu: 'A10G' })) } : {};
  const protocol = { ...demo, phase: `wall-${runTag}-${tag}`, people: people.roster, budget: { cap_usd: 1, approvers: ['demo-approver'], deadline_hours: null }, ...modal };
  const file = path.join(dir, 'protocol.json');
  writeFileSync(file, JSON.stringify(protocol, null, 2));
  return loadProtocol(file);
}

interface Measurement {
  phase: 'demo' | 'modal';
  modelRuns: number;
  run: number;
  status: string;
  modelStageS: number;
  wholeS: number;
  attempts: { model: string; from: string; to: string; outcome: string }[];
}

async function main(): Promise<void> {
  Runtime.install({ logger: new DefaultLogger('WARN') });
  const repoPaths = resolvePaths(parseEnv({}));
  const env = await TestWorkflowEnvironment.createLocal({
    server: { executable: { type: 'existing-path', path: repoPaths.temporalBin }, ip: '127.0.0.1', searchAttributes: Object.values(searchAttributes), log: { format: 'json', level: 'error' } },
  });
  const workflowBundle = await bundleWorkflowCode({ workflowsPath, logger: new DefaultLogger('WARN') });
  const fakeState = path.join(mkdtempSync(path.join(os.tmpdir(), 'phasegate-wall-modal-')), 'fake-modal.json');
  Object.assign(process.env, {
    PHASEGATE_MODAL_FAKE: '1',
    PHASEGATE_MODAL_FAKE_STATE: fakeState,
    PHASEGATE_MODAL_FAKE_OUTCOME: 'execute',
    PHASEGATE_MODAL_FAKE_RUN_S: String(MODAL_RUN_S),
    MODAL_TOKEN_ID: 'ak-bench',
    MODAL_TOKEN_SECRET: 'as-bench',
  });
  const results: Measurement[] = [];
  try {
    for (let run = 1; run <= RUNS; run++) {
      for (const phase of PHASES) {
        for (const modelRuns of [1, 2]) {
          const stateDir = mkdtempSync(path.join(os.tmpdir(), `phasegate-wall-${phase}-`));
          const paths: Paths = { ...repoPaths, stateDir, artifactsDir: path.join(stateDir, 'artifacts'), workDir: path.join(stateDir, 'work'), recordsDir: path.join(stateDir, 'records') };
          const taskQueue = `wall-${runTag}-${phase}-${modelRuns}-${run}`;
          const worker = await createPhaseWorker({ connection: env.nativeConnection, namespace: 'default', taskQueue, paths, logger: pino({ level: 'warn' }), workflowBundle, modalPollSeconds: 0.5, modelRuns });
          const pc: PhaseClient = { client: env.client, taskQueue, records: new PhaseRecordStore(paths.recordsDir) };
          const loaded = protocolFor(phase, `${phase}-${modelRuns}-${run}`);
          const t0 = Date.now();
          const state = await worker.runUntil(async () => {
            await startPhase(pc, loaded);
            await people.passGates(pc, loaded.phaseId, '0.5');
            return env.client.workflow.getHandle<typeof phaseWorkflow>(loaded.phaseId).result();
          });
          const wholeS = (Date.now() - t0) / 1000;
          const from = Math.min(...state.ledger.map((e) => Date.parse(e.startedAt)));
          const to = Math.max(...state.ledger.map((e) => Date.parse(e.endedAt)));
          const m: Measurement = {
            phase,
            modelRuns,
            run,
            status: state.status,
            modelStageS: (to - from) / 1000,
            wholeS,
            attempts: state.ledger.map((e) => ({ model: e.modelKey, from: e.startedAt, to: e.endedAt, outcome: e.outcome })),
          };
          results.push(m);
          console.log(`${phase} model runs at once ${modelRuns}, run ${run}: ${m.status}, models ${m.modelStageS.toFixed(1)} s, whole ${m.wholeS.toFixed(1)} s`);
        }
      }
    }
  } finally {
    await env.teardown();
  }
  const report = { machine: `${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB`, modalRunS: MODAL_RUN_S, results };
  const text = JSON.stringify(report, null, 2);
  if (args.out !== undefined) {
    mkdirSync(args.out, { recursive: true });
    writeFileSync(path.join(args.out, 'phase-wall.json'), `${text}\n`);
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
