/**
 * `bin/phasegate`: start phases, decide at their gates (each decision signed with the person's own key), query,
 * wait, verify. Exit codes (client/errors.ts): 0 success, 2 invalid input or a refused decision (the message
 * names the field or says why), 1 anything else. No error ever prints a stack trace.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { readFileSync } from 'node:fs';
import { ConfigError, parseEnv, type Env } from '../common/config';
import { storesFromEnv } from '../common/phase-records';
import { childRef } from '../common/artifact-store';
import { asPhaseError } from './errors';
import { createLogger } from '../common/logger';
import { connectionSettings } from '../common/temporal-connection';
import { ACTIVE_STATUSES, TERMINAL_STATUSES, type PhaseStatus, type ReviewVerdict } from '../workflows/definitions';
import { decisionShapeProblem, type DecisionContent, type DecisionKind, type SignedDecision } from '../domain/decisions';
import { parseUsd } from '../domain/money';
import { connectClient } from './connection';
import { defaultKeysDir, loadPrivateKey, newKey, showKey, signDecision } from './keys';
import { issueToken, revokeToken, tokenStorePath } from './tokens';
import { renderLedger, renderPlan, renderStatus } from './render';
import {
  approveBudget,
  cancelPhase,
  checkPhaseId,
  decisionTarget,
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
  verifyFrozenDir,
  verifyPhase,
  waitForStatus,
  type PhaseClient,
  type PhaseVerification,
} from './phases';

const USAGE = `usage: phasegate <command> [options]

  server [--state-dir DIR]                      embedded Temporal dev server + worker (foreground)
  worker                                        worker only, against TEMPORAL_ADDRESS
  http [--port N]                               HTTP API
  start --protocol FILE [--json]                start a phase (idempotent); prints the phase id last
  id --protocol FILE                            the phase id a protocol file gives (validates it; no server)
  keys new NAME                                 make NAME's Ed25519 key pair; prints the public key last
  keys show NAME                                print NAME's public key
  tokens issue NAME | tokens revoke NAME        NAME's bearer token for the HTTP API (printed once, stored hashed)
  approve-budget ID --usd N --by NAME [--note T]          (each decision is signed with NAME's key)
  reject-budget ID --by NAME --reason T
  review ID --verdict approved|advised|changes-requested --by NAME [--ref T] [--notes T]
  plan ID [--json]                              the run plan a reviewer reads
  status ID [--json] [--watch]
  wait ID --for STATE [--timeout S]
  ledger ID [--json]
  report ID                                     print the closeout report of a frozen phase
  verify ID | verify --dir DIR                  check a frozen phase: manifest and every signed decision
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
  dir: { type: 'string' },
  'state-dir': { type: 'string' },
  port: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} satisfies ParseArgsConfig['options'];

type Values = ReturnType<typeof parseArgs<{ options: typeof options; allowPositionals: true }>>['values'];

const usage = (why: string): PhaseError => new PhaseError('invalid', `${why}\n\n${USAGE}`);

type StringOption = { [K in keyof typeof options]: (typeof options)[K]['type'] extends 'string' ? K : never }[keyof typeof options];

function required(values: Values, name: StringOption): string {
  const v = values[name];
  if (typeof v !== 'string' || v.trim() === '') throw usage(`--${name} is required`);
  return v;
}

function phaseIdArg(positionals: string[]): string {
  const id = positionals[1];
  if (id === undefined) throw usage(`${positionals[0] ?? 'command'}: the phase ID is required`);
  return checkPhaseId(id);
}

function nameArg(positionals: string[]): string {
  const name = positionals[2];
  if (name === undefined) throw usage(`${positionals[0]} ${positionals[1]}: NAME is required`);
  return name;
}

function usdArg(raw: string): string {
  const usd = parseUsd(raw);
  if ('error' in usd) throw new PhaseError('invalid', `--usd: ${usd.error}`);
  return raw;
}

/**
 * Signs a decision with NAME's key and sends it. The key is read before anything is sent, so a missing or
 * exposed key stops the command with exit 2; the phase's protocol hash comes from the phase itself.
 */
async function signAndSend<K extends DecisionKind>(
  env: Readonly<Env>,
  withClient: WithClient,
  kind: K,
  phaseId: string,
  by: string,
  content: DecisionContent[K],
  send: (pc: PhaseClient, d: SignedDecision<K>) => Promise<{ applied: boolean; status: string; approvedUsd: number }>,
): Promise<{ applied: boolean; status: string; approvedUsd: number }> {
  const key = loadPrivateKey(env.PHASEGATE_KEYS_DIR ?? defaultKeysDir(), by);
  return withClient(async (pc) => {
    const target = await decisionTarget(pc, phaseId);
    const decision = signDecision(key, { kind, ...target, by, content });
    const problem = decisionShapeProblem(decision, kind);
    if (problem !== null) throw new PhaseError('invalid', problem);
    return send(pc, decision);
  });
}

const VERDICTS: Record<string, ReviewVerdict> = { approved: 'APPROVED', advised: 'ADVISED', 'changes-requested': 'CHANGES_REQUESTED' };
const STATUSES: readonly string[] = [...ACTIVE_STATUSES, ...TERMINAL_STATUSES];

/** Runs `fn` on a Temporal client for this one command, closed afterwards. */
type WithClient = <T>(fn: (pc: PhaseClient) => Promise<T>) => Promise<T>;

function clientRunner(env: Readonly<Env>, connect: CliIo['connect']): WithClient {
  return async (fn) => {
    const settings = connectionSettings(env);
    const client = await connect(settings).catch((err: unknown) => {
      throw new PhaseError('unavailable', `cannot reach Temporal at ${settings.address}: ${(err as Error).message}. Is \`bin/phasegate server\` running?`);
    });
    try {
      return await fn({ client, taskQueue: env.PHASEGATE_TASK_QUEUE, ...storesFromEnv(env) });
    } finally {
      await client.connection.close();
    }
  };
}

/** Where a command reads its environment, connects and writes: the process by default, something else in tests. */
export interface CliIo {
  environment: NodeJS.ProcessEnv;
  connect: typeof connectClient;
  stdout: (text: string) => void;
}

const processIo: CliIo = { environment: process.env, connect: connectClient, stdout: (text) => process.stdout.write(text) };

export async function main(argv: string[], io: CliIo = processIo): Promise<number> {
  const print = (line: string): void => io.stdout(`${line}\n`);
  const printJson = (value: unknown): void => print(JSON.stringify(value, null, 2));
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
  const env = parseEnv({
    ...io.environment,
    ...(values['state-dir'] !== undefined ? { PHASEGATE_STATE_DIR: values['state-dir'] } : {}),
    ...(values.port !== undefined ? { PHASEGATE_HTTP_PORT: values.port } : {}),
  });
  const withClient = clientRunner(env, io.connect);
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
      const result = await withClient((pc) => startPhase(pc, loaded));
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
    case 'keys': {
      const dir = env.PHASEGATE_KEYS_DIR ?? defaultKeysDir();
      const sub = positionals[1];
      if (sub === 'new') {
        const name = nameArg(positionals);
        const publicKey = newKey(dir, name);
        process.stderr.write(`private key written to ${dir}/${name}.key (mode 0600); name ${name} with this public key in a protocol's people:\n`);
        print(publicKey);
        return 0;
      }
      if (sub === 'show') {
        print(showKey(dir, nameArg(positionals)));
        return 0;
      }
      throw usage('keys: use `keys new NAME` or `keys show NAME`');
    }
    case 'tokens': {
      const store = tokenStorePath(env);
      const sub = positionals[1];
      if (sub === 'issue') {
        const name = nameArg(positionals);
        const token = issueToken(store, name);
        process.stderr.write(`bearer token for ${name} (shown once; only its hash is kept in ${store}):\n`);
        print(token);
        return 0;
      }
      if (sub === 'revoke') {
        const name = nameArg(positionals);
        print(revokeToken(store, name) ? `revoked the token of ${name}` : `${name} had no token`);
        return 0;
      }
      throw usage('tokens: use `tokens issue NAME` or `tokens revoke NAME`');
    }
    case 'approve-budget': {
      const id = phaseIdArg(positionals);
      const usd = usdArg(required(values, 'usd'));
      const r = await signAndSend(env, withClient, 'approve-budget', id, required(values, 'by'), { usd, note: values.note ?? '' }, (pc, d) => approveBudget(pc, d));
      print(r.applied ? `budget approved: $${r.approvedUsd.toFixed(2)} (phase ${r.status})` : `already applied: budget $${r.approvedUsd.toFixed(2)} (phase ${r.status})`);
      return 0;
    }
    case 'reject-budget': {
      const id = phaseIdArg(positionals);
      const r = await signAndSend(env, withClient, 'reject-budget', id, required(values, 'by'), { reason: required(values, 'reason') }, (pc, d) => rejectBudget(pc, d));
      print(r.applied ? 'budget rejected' : 'already applied: budget rejected');
      return 0;
    }
    case 'review': {
      const id = phaseIdArg(positionals);
      const verdict = VERDICTS[required(values, 'verdict').toLowerCase()];
      if (verdict === undefined) throw new PhaseError('invalid', `--verdict: must be one of ${Object.keys(VERDICTS).join(', ')}`);
      const content = { verdict, ref: values.ref ?? '', notes: values.notes ?? '' };
      const r = await signAndSend(env, withClient, 'review', id, required(values, 'by'), content, (pc, d) => submitReview(pc, d));
      print(r.applied ? `review recorded: ${verdict}` : `already applied: review ${verdict}`);
      return 0;
    }
    case 'plan': {
      const id = phaseIdArg(positionals);
      const plan = await withClient((pc) => getPlan(pc, id));
      print(values.json ? JSON.stringify(plan, null, 2) : renderPlan(plan));
      return 0;
    }
    case 'status': {
      const id = phaseIdArg(positionals);
      return withClient(async (pc) => {
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
      if (!STATUSES.includes(target)) throw new PhaseError('invalid', `--for: must be one of ${STATUSES.join(', ')}`);
      const timeout = values.timeout === undefined ? 3600 : /^[0-9]{1,7}$/.test(values.timeout) ? Number(values.timeout) : Number.NaN;
      if (!(timeout > 0)) throw new PhaseError('invalid', '--timeout: must be a whole number of seconds, 1 to 9999999');
      let last = '';
      await withClient((pc) =>
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
      const state = await withClient((pc) => getState(pc, id));
      print(values.json ? JSON.stringify({ estimate: state.estimate, approvedUsd: state.budget.approvedUsd, ledger: state.ledger }, null, 2) : renderLedger(state));
      return 0;
    }
    case 'report': {
      const id = phaseIdArg(positionals);
      const state = await withClient((pc) => getState(pc, id));
      if (state.freeze === null) throw new PhaseError('refused', `phase ${id} is ${state.status}: the report is written when it freezes`);
      let report: string;
      try {
        report = readFileSync(state.freeze.reportPath, 'utf8');
      } catch (err) {
        throw new PhaseError('failed', `the report of ${id} cannot be read at ${state.freeze.reportPath} (${(err as NodeJS.ErrnoException).code ?? 'error'}); \`phasegate verify ${id}\` checks the frozen folder`);
      }
      print(report);
      return 0;
    }
    case 'verify': {
      let report: PhaseVerification;
      let label: string;
      if (values.dir !== undefined) {
        // Offline: no Temporal, the folder alone (the manifest's own sha256 is then not checked against history).
        report = verifyFrozenDir(values.dir);
        label = values.dir;
      } else {
        label = phaseIdArg(positionals);
        report = await withClient((pc) => verifyPhase(pc, label));
      }
      for (const f of report.changed) print(`CHANGED    ${childRef(report.dir, f)}`);
      for (const f of report.missing) print(`MISSING    ${childRef(report.dir, f)}`);
      for (const f of report.unexpected) print(`UNEXPECTED ${childRef(report.dir, f)}`);
      for (const problem of report.decisions.problems) print(`DECISION   ${problem}`);
      print(
        report.ok
          ? `OK: ${report.checked} files match the manifest in ${report.dir}; ${report.decisions.checked} signed decision(s) verified`
          : `FAILED: the artifacts of ${label} no longer match their manifest or signatures`,
      );
      return report.ok ? 0 : 1;
    }
    case 'reopen': {
      const id = phaseIdArg(positionals);
      const result = await withClient((pc) => reopenPhase(pc, id, required(values, 'defect')));
      print(`reopened ${id} as a new phase`);
      print(result.phaseId);
      return 0;
    }
    case 'cancel': {
      const id = phaseIdArg(positionals);
      await withClient((pc) => cancelPhase(pc, id));
      print(`cancellation requested for ${id}`);
      return 0;
    }
    case 'list': {
      const phases = await withClient((pc) => listPhases(pc));
      if (values.json) printJson(phases);
      else for (const p of phases) print(`${p.phaseId.padEnd(48)} ${p.status.padEnd(18)} ${p.workflowStatus.padEnd(10)} ${p.startTime}`);
      return 0;
    }
    default:
      throw usage(`unknown command "${command}"`);
  }
}

/** What the person sees of an error: its message and the exit code of its kind; a stack trace only with LOG_LEVEL=debug. */
export function reportError(thrown: unknown, write: (line: string) => void = (l) => process.stderr.write(l)): 1 | 2 {
  const err = asPhaseError(thrown);
  if (err instanceof PhaseError) {
    write(`phasegate: ${err.message}\n`);
    return err.exitCode;
  }
  if (err instanceof ConfigError) {
    write(`phasegate: ${err.message}\n`);
    return 2;
  }
  const message = err instanceof Error ? err.message : String(err);
  write(`phasegate: unexpected error: ${message.split('\n')[0]}\n`);
  if (process.env.LOG_LEVEL === 'debug' && err instanceof Error && err.stack) write(`${err.stack}\n`);
  return 1;
}

if (require.main === module) {
  main(process.argv.slice(2))
    .then((code) => {
      process.exitCode = code;
    })
    .catch((err: unknown) => {
      process.exitCode = reportError(err);
    });
}
