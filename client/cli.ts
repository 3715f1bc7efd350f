/**
 * `bin/phasegate`: start phases, decide at their gates, query, wait, verify. Exit codes: 0 success, 2 invalid
 * input or a refused decision (the message says why), 1 anything else.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { ConfigError, parseEnv, type Env } from '../common/config';
import { createLogger } from '../common/logger';
import { connectionSettings } from '../common/temporal-connection';
import { ACTIVE_STATUSES, TERMINAL_STATUSES, type PhaseStatus, type ReviewVerdict } from '../workflows/definitions';
import { connectClient } from './connection';
import { renderLedger, renderPlan, renderStatus } from './render';
import {
  approveBudget,
  cancelPhase,
  getPlan,
  getState,
  getStatus,
  listPhases,
  PhaseError,
  readProtocolOrThrow,
  rejectBudget,
  reopenPhase,
  startPhase,
  submitReview,
  verifyPhase,
  waitForStatus,
  type PhaseClient,
} from './phases';

const USAGE = `usage: phasegate <command> [options]

  server [--state-dir DIR]                      embedded Temporal dev server + worker (foreground)
  worker                                        worker only, against TEMPORAL_ADDRESS
  http [--port N]                               HTTP API
  start --protocol FILE [--json]                start a phase (idempotent); prints the phase id last
  id --protocol FILE                            the phase id a protocol file gives (validates it; no server)
  approve-budget ID --usd N --by NAME [--note T]
  reject-budget ID --by NAME --reason T
  review ID --verdict approved|advised|changes-requested --by NAME [--ref T] [--notes T]
  plan ID [--json]                              the run plan a reviewer reads
  status ID [--json] [--watch]
  wait ID --for STATE [--timeout S]
  ledger ID [--json]
  report ID                                     print the closeout report of a frozen phase
  verify ID                                     recompute the manifest of a frozen phase
  reopen ID --defect T                          start a new phase linked to a frozen one
  cancel ID
  list [--json]
`;

const options = {
  protocol: { type: 'string' },
  json: { type: 'boolean' },
  watch: { type: 'boolean' },
  usd: { type: 'string' },
  by: { type: 'string' },
  note: { type: 'string' },
  reason: { type: 'string' },
  verdict: { type: 'string' },
  ref: { type: 'string' },
  notes: { type: 'string' },
  for: { type: 'string' },
  timeout: { type: 'string' },
  defect: { type: 'string' },
  'state-dir': { type: 'string' },
  port: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} satisfies ParseArgsConfig['options'];

type Values = ReturnType<typeof parseArgs<{ options: typeof options; allowPositionals: true }>>['values'];

const usage = (why: string): PhaseError => new PhaseError(`${why}\n\n${USAGE}`, 2);

type StringOption = { [K in keyof typeof options]: (typeof options)[K]['type'] extends 'string' ? K : never }[keyof typeof options];

function required(values: Values, name: StringOption): string {
  const v = values[name];
  if (typeof v !== 'string' || v.trim() === '') throw usage(`--${name} is required`);
  return v;
}

function phaseIdArg(positionals: string[]): string {
  const id = positionals[1];
  if (id === undefined) throw usage(`${positionals[0] ?? 'command'}: the phase ID is required`);
  return id;
}

function parseUsd(raw: string): number {
  const usd = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(usd) || usd <= 0) throw new PhaseError(`--usd: must be a positive, finite amount in dollars, got "${raw}"`, 2);
  return usd;
}

const VERDICTS: Record<string, ReviewVerdict> = { approved: 'APPROVED', advised: 'ADVISED', 'changes-requested': 'CHANGES_REQUESTED' };
const STATUSES: readonly string[] = [...ACTIVE_STATUSES, ...TERMINAL_STATUSES];

const print = (line: string): void => {
  process.stdout.write(`${line}\n`);
};
const printJson = (value: unknown): void => print(JSON.stringify(value, null, 2));

async function withClient<T>(env: Readonly<Env>, fn: (pc: PhaseClient) => Promise<T>): Promise<T> {
  const client = await connectClient(connectionSettings(env)).catch((err: unknown) => {
    throw new PhaseError(`cannot reach Temporal at ${connectionSettings(env).address}: ${(err as Error).message}. Is \`bin/phasegate server\` running?`, 1);
  });
  try {
    return await fn({ client, taskQueue: env.PHASEGATE_TASK_QUEUE });
  } finally {
    await client.connection.close();
  }
}

export async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw usage((err as Error).message);
  }
  const { values, positionals } = parsed;
  const command = positionals[0];
  if (values.help || command === undefined) {
    print(USAGE);
    return command === undefined && !values.help ? 2 : 0;
  }
  if (values['state-dir'] !== undefined) process.env.PHASEGATE_STATE_DIR = values['state-dir'];
  if (values.port !== undefined) process.env.PHASEGATE_HTTP_PORT = values.port;
  const env = parseEnv();
  const logger = createLogger({ level: env.LOG_LEVEL, format: env.LOG_FORMAT });

  switch (command) {
    case 'server': {
      const { runServer } = await import('../worker/server');
      await runServer(env, logger, { withDevServer: true });
      return 0;
    }
    case 'worker': {
      const { runServer } = await import('../worker/server');
      await runServer(env, logger, { withDevServer: false });
      return 0;
    }
    case 'http': {
      const { runHttpServer } = await import('./http');
      await runHttpServer(env, logger);
      return 0;
    }
    case 'start': {
      const loaded = readProtocolOrThrow(required(values, 'protocol'));
      const result = await withClient(env, (pc) => startPhase(pc, loaded));
      if (values.json) printJson(result);
      else {
        print(result.started ? `started phase ${result.phaseId} (protocol ${result.protocolHash.slice(0, 12)})` : `phase already running: ${result.phaseId}`);
        print(result.phaseId);
      }
      return 0;
    }
    case 'id': {
      print(readProtocolOrThrow(required(values, 'protocol')).phaseId);
      return 0;
    }
    case 'approve-budget': {
      const id = phaseIdArg(positionals);
      const usd = parseUsd(required(values, 'usd'));
      const r = await withClient(env, (pc) => approveBudget(pc, id, { by: required(values, 'by'), usd, note: values.note ?? '' }));
      print(r.applied ? `budget approved: $${r.approvedUsd.toFixed(2)} (phase ${r.status})` : `already applied: budget $${r.approvedUsd.toFixed(2)} (phase ${r.status})`);
      return 0;
    }
    case 'reject-budget': {
      const id = phaseIdArg(positionals);
      const r = await withClient(env, (pc) => rejectBudget(pc, id, { by: required(values, 'by'), reason: required(values, 'reason') }));
      print(r.applied ? 'budget rejected' : 'already applied: budget rejected');
      return 0;
    }
    case 'review': {
      const id = phaseIdArg(positionals);
      const verdict = VERDICTS[required(values, 'verdict').toLowerCase()];
      if (verdict === undefined) throw new PhaseError(`--verdict: must be one of ${Object.keys(VERDICTS).join(', ')}`, 2);
      const r = await withClient(env, (pc) => submitReview(pc, id, { by: required(values, 'by'), verdict, ref: values.ref ?? '', notes: values.notes ?? '' }));
      print(r.applied ? `review recorded: ${verdict}` : `already applied: review ${verdict}`);
      return 0;
    }
    case 'plan': {
      const id = phaseIdArg(positionals);
      const plan = await withClient(env, (pc) => getPlan(pc, id));
      print(values.json ? JSON.stringify(plan, null, 2) : renderPlan(plan));
      return 0;
    }
    case 'status': {
      const id = phaseIdArg(positionals);
      return withClient(env, async (pc) => {
        for (;;) {
          const view = await getStatus(pc, id);
          if (values.json) printJson(view);
          else print(renderStatus(view));
          if (!values.watch || view.workflowStatus !== 'RUNNING') return 0;
          await new Promise((r) => setTimeout(r, 2000));
          if (!values.json) print('');
        }
      });
    }
    case 'wait': {
      const id = phaseIdArg(positionals);
      const target = required(values, 'for').toUpperCase();
      if (!STATUSES.includes(target)) throw new PhaseError(`--for: must be one of ${STATUSES.join(', ')}`, 2);
      const timeout = values.timeout === undefined ? 3600 : Number(values.timeout);
      if (!Number.isFinite(timeout) || timeout <= 0) throw new PhaseError('--timeout: must be a positive number of seconds', 2);
      let last = '';
      await withClient(env, (pc) =>
        waitForStatus(pc, id, target as PhaseStatus, timeout, async (s) => {
          // While a model runs, its units come from the attempt's heartbeat (status), one line per change.
          const running = s.models.find((m) => m.status === 'running');
          const progress = running ? (await getStatus(pc, id)).models.find((m) => m.modelKey === running.modelKey)?.progress : null;
          const done = s.models.filter((m) => m.status === 'succeeded').length;
          const line = running
            ? `${s.status} ${running.modelKey} (model ${done + 1}/${s.models.length}, attempt ${running.attempts})${progress ? ` units ${progress.unitsDone}/${progress.unitsTotal}${progress.lastUnit ? ` ${progress.lastUnit}` : ''}` : ''}`
            : s.status;
          if (line !== last) process.stderr.write(`${id}: ${line}\n`);
          last = line;
        }),
      );
      print(`${id} is ${target}`);
      return 0;
    }
    case 'ledger': {
      const id = phaseIdArg(positionals);
      const state = await withClient(env, (pc) => getState(pc, id));
      print(values.json ? JSON.stringify({ estimate: state.estimate, approvedUsd: state.budget.approvedUsd, ledger: state.ledger }, null, 2) : renderLedger(state));
      return 0;
    }
    case 'report': {
      const id = phaseIdArg(positionals);
      const state = await withClient(env, (pc) => getState(pc, id));
      if (state.freeze === null) throw new PhaseError(`phase ${id} is ${state.status}: the report is written when it freezes`, 2);
      print(readFileSync(state.freeze.reportPath, 'utf8'));
      return 0;
    }
    case 'verify': {
      const id = phaseIdArg(positionals);
      const report = await withClient(env, (pc) => verifyPhase(pc, id));
      for (const f of report.changed) print(`CHANGED    ${path.join(report.dir, f)}`);
      for (const f of report.missing) print(`MISSING    ${path.join(report.dir, f)}`);
      for (const f of report.unexpected) print(`UNEXPECTED ${path.join(report.dir, f)}`);
      print(report.ok ? `OK: ${report.checked} files match the manifest in ${report.dir}` : `FAILED: the artifacts of ${id} no longer match their manifest`);
      return report.ok ? 0 : 1;
    }
    case 'reopen': {
      const id = phaseIdArg(positionals);
      const result = await withClient(env, (pc) => reopenPhase(pc, id, required(values, 'defect')));
      print(`reopened ${id} as a new phase`);
      print(result.phaseId);
      return 0;
    }
    case 'cancel': {
      const id = phaseIdArg(positionals);
      await withClient(env, (pc) => cancelPhase(pc, id));
      print(`cancellation requested for ${id}`);
      return 0;
    }
    case 'list': {
      const phases = await withClient(env, (pc) => listPhases(pc));
      if (values.json) printJson(phases);
      else for (const p of phases) print(`${p.phaseId.padEnd(48)} ${p.status.padEnd(18)} ${p.workflowStatus.padEnd(10)} ${p.startTime}`);
      return 0;
    }
    default:
      throw usage(`unknown command "${command}"`);
  }
}

if (require.main === module) {
  main(process.argv.slice(2))
    .then((code) => {
      process.exitCode = code;
    })
    .catch((err: unknown) => {
      if (err instanceof PhaseError || err instanceof ConfigError) {
        process.stderr.write(`phasegate: ${err.message}\n`);
        process.exitCode = err instanceof PhaseError ? err.exitCode : 2;
      } else {
        process.stderr.write(`phasegate: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
        process.exitCode = 1;
      }
    });
}
