/**
 * `bin/phasegate`: start phases, decide at their gates (each decision signed with the person's own key), query,
 * wait, verify. The commands and their options are declared with commander, which also writes `--help`.
 * Exit codes (client/errors.ts): 0 success, 2 invalid input or a refused decision (the message names the field
 * or says why), 1 anything else. No error ever prints a stack trace.
 */
import { Command, CommanderError, Option } from 'commander';
import { readFileSync } from 'node:fs';
import { ConfigError, parseEnv, resolvePaths, type Env } from '../common/config';
import { storesFromEnv } from '../common/phase-records';
import { childRef } from '../common/artifact-store';
import { asPhaseError } from './errors';
import { createLogger } from '../common/logger';
import { connectionSettings } from '../common/temporal-connection';
import { ACTIVE_STATUSES, TERMINAL_STATUSES, type PhaseState, type PhaseStatus, type ReviewVerdict } from '../workflows/definitions';
import { decisionShapeProblem, type DecisionContent, type DecisionKind, type SignedDecision } from '../domain/decisions';
import { parseUsd } from '../domain/money';
import { BackendError } from '../activities/backends/backend';
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


/** An option's value: required and not blank. */
function required(value: string | undefined, name: string): string {
  if (value === undefined || value.trim() === '') throw new PhaseError('invalid', `--${name} is required`);
  return value;
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

/** What every command's action gets: the environment (with the global options applied), a client runner, output. */
interface Run {
  env: Readonly<Env>;
  withClient: WithClient;
  logger: () => ReturnType<typeof createLogger>;
  print: (line: string) => void;
  printJson: (value: unknown) => void;
}

/** A phase ID argument, checked before anything is sent. */
const phaseId = (id: string): string => checkPhaseId(id);

/** The commands, declared once: commander parses them and writes the help from these declarations. */
function buildProgram(io: CliIo, setExit: (code: number) => void): Command {
  const program = new Command('phasegate')
    .description('Durable research phases on Temporal: budget and review gates, GPU runs, parity scoring, freeze.\nExit codes: 0 success, 2 invalid input or a refused decision, 1 anything else.')
    .option('--state-dir <dir>', 'state folder (PHASEGATE_STATE_DIR)')
    .option('--port <n>', 'HTTP API port (PHASEGATE_HTTP_PORT)')
    .showHelpAfterError('(phasegate --help lists the commands; phasegate COMMAND --help its options)')
    .exitOverride()
    .configureOutput({ writeOut: (text) => io.stdout(text), writeErr: () => undefined, outputError: () => undefined });
  let memo: Run | null = null;
  const run = (): Run => {
    if (memo !== null) return memo;
    const globals = program.opts<{ stateDir?: string; port?: string }>();
    const env = parseEnv({
      ...io.environment,
      ...(globals.stateDir !== undefined ? { PHASEGATE_STATE_DIR: globals.stateDir } : {}),
      ...(globals.port !== undefined ? { PHASEGATE_HTTP_PORT: globals.port } : {}),
    });
    const print = (line: string): void => io.stdout(`${line}\n`);
    memo = { env, withClient: clientRunner(env, io.connect), logger: () => createLogger({ level: env.LOG_LEVEL, format: env.LOG_FORMAT }), print, printJson: (v) => print(JSON.stringify(v, null, 2)) };
    return memo;
  };
  const json = new Option('--json', 'print JSON');

  program.command('server').description('embedded Temporal dev server + worker + HTTP API and console (foreground)').action(async () => {
    const { runServer } = await import('../worker/server');
    await runServer(run().env, run().logger(), { withDevServer: true });
  });
  program.command('worker').description('worker only, against TEMPORAL_ADDRESS (with the HTTP API and console)').action(async () => {
    const { runServer } = await import('../worker/server');
    await runServer(run().env, run().logger(), { withDevServer: false });
  });
  program.command('http').description('HTTP API and gate console').action(async () => {
    const { runHttpServer } = await import('./http');
    await runHttpServer(run().env, run().logger());
  });
  program
    .command('start')
    .description('start a phase (idempotent); prints the phase id last')
    .requiredOption('--protocol <file>', 'protocol file')
    .addOption(json)
    .action(async (o: { protocol: string; json?: boolean }) => {
      const { withClient, print, printJson } = run();
      const loaded = readProtocolOrThrow(required(o.protocol, 'protocol'));
      const result = await withClient((pc) => startPhase(pc, loaded));
      if (o.json) printJson(result);
      else {
        print(result.started ? `started phase ${result.phaseId} (protocol ${result.protocolHash.slice(0, 12)})` : `phase already running: ${result.phaseId}`);
        print(result.phaseId);
      }
    });
  program
    .command('id')
    .description('the phase id a protocol file gives (validates it; no server)')
    .requiredOption('--protocol <file>', 'protocol file')
    .action((o: { protocol: string }) => run().print(readProtocolOrThrow(required(o.protocol, 'protocol')).phaseId));

  const keys = program.command('keys').description("each person's Ed25519 signing key");
  const keysDir = (): string => run().env.PHASEGATE_KEYS_DIR ?? defaultKeysDir();
  keys
    .command('new')
    .description("make NAME's key pair (private key mode 0600); prints the public key last")
    .argument('<NAME>')
    .action((name: string) => {
      const publicKey = newKey(keysDir(), name);
      process.stderr.write(`private key written to ${keysDir()}/${name}.key (mode 0600); name ${name} with this public key in a protocol's people:\n`);
      run().print(publicKey);
    });
  keys.command('show').description("print NAME's public key").argument('<NAME>').action((name: string) => run().print(showKey(keysDir(), name)));

  const tokens = program.command('tokens').description('bearer tokens for the HTTP API and console (printed once, stored hashed)');
  tokens
    .command('issue')
    .description("issue NAME's token (replacing an earlier one)")
    .argument('<NAME>')
    .action((name: string) => {
      const store = tokenStorePath(run().env);
      const token = issueToken(store, name);
      process.stderr.write(`bearer token for ${name} (shown once; only its hash is kept in ${store}):\n`);
      run().print(token);
    });
  tokens
    .command('revoke')
    .description("revoke NAME's token")
    .argument('<NAME>')
    .action((name: string) => run().print(revokeToken(tokenStorePath(run().env), name) ? `revoked the token of ${name}` : `${name} had no token`));

  program
    .command('approve-budget')
    .description("approve a budget, signed with NAME's key")
    .argument('<ID>', 'phase id', phaseId)
    .requiredOption('--usd <amount>', 'decimal dollars, at most 6 decimals')
    .requiredOption('--by <NAME>', 'the approver (their key signs)')
    .option('--note <text>', 'note', '')
    .action(async (id: string, o: { usd: string; by: string; note: string }) => {
      const usd = usdArg(required(o.usd, 'usd'));
      const r = await signAndSend(run().env, run().withClient, 'approve-budget', id, required(o.by, 'by'), { usd, note: o.note }, (pc, d) => approveBudget(pc, d));
      run().print(r.applied ? `budget approved: $${r.approvedUsd.toFixed(2)} (phase ${r.status})` : `already applied: budget $${r.approvedUsd.toFixed(2)} (phase ${r.status})`);
    });
  program
    .command('reject-budget')
    .description("reject a budget, signed with NAME's key")
    .argument('<ID>', 'phase id', phaseId)
    .requiredOption('--by <NAME>', 'the approver (their key signs)')
    .requiredOption('--reason <text>', 'why')
    .action(async (id: string, o: { by: string; reason: string }) => {
      const r = await signAndSend(run().env, run().withClient, 'reject-budget', id, required(o.by, 'by'), { reason: required(o.reason, 'reason') }, (pc, d) => rejectBudget(pc, d));
      run().print(r.applied ? 'budget rejected' : 'already applied: budget rejected');
    });
  program
    .command('review')
    .description("record a review verdict, signed with NAME's key")
    .argument('<ID>', 'phase id', phaseId)
    .requiredOption('--verdict <verdict>', `one of ${Object.keys(VERDICTS).join(', ')}`)
    .requiredOption('--by <NAME>', 'the reviewer (their key signs)')
    .option('--ref <text>', 'a reference (thread, document)', '')
    .option('--notes <text>', 'notes', '')
    .action(async (id: string, o: { verdict: string; by: string; ref: string; notes: string }) => {
      const verdict = VERDICTS[required(o.verdict, 'verdict').toLowerCase()];
      if (verdict === undefined) throw new PhaseError('invalid', `--verdict: must be one of ${Object.keys(VERDICTS).join(', ')}`);
      const r = await signAndSend(run().env, run().withClient, 'review', id, required(o.by, 'by'), { verdict, ref: o.ref, notes: o.notes }, (pc, d) => submitReview(pc, d));
      run().print(r.applied ? `review recorded: ${verdict}` : `already applied: review ${verdict}`);
    });
  program
    .command('plan')
    .description('the run plan a reviewer reads')
    .argument('<ID>', 'phase id', phaseId)
    .addOption(json)
    .action(async (id: string, o: { json?: boolean }) => {
      const plan = await run().withClient((pc) => getPlan(pc, id));
      run().print(o.json ? JSON.stringify(plan, null, 2) : renderPlan(plan));
    });
  program
    .command('status')
    .description("a phase's status, gates, budget and models")
    .argument('<ID>', 'phase id', phaseId)
    .addOption(json)
    .option('--watch', 'print again every 2 s while the phase runs')
    .action(async (id: string, o: { json?: boolean; watch?: boolean }) => {
      const { withClient, print, printJson } = run();
      await withClient(async (pc) => {
        for (;;) {
          const view = await getStatus(pc, id);
          if (o.json) printJson(view);
          else print(renderStatus(view));
          if (!o.watch || view.workflowStatus !== 'RUNNING') return;
          await new Promise((r) => setTimeout(r, 2000));
          if (!o.json) print('');
        }
      });
    });
  program
    .command('wait')
    .description('wait until the phase reaches STATE (progress on stderr)')
    .argument('<ID>', 'phase id', phaseId)
    .requiredOption('--for <STATE>', `one of ${STATUSES.join(', ')}`)
    .option('--timeout <seconds>', 'give up after this many seconds', '3600')
    .action(async (id: string, o: { for: string; timeout: string }) => {
      const target = required(o.for, 'for').toUpperCase();
      if (!STATUSES.includes(target)) throw new PhaseError('invalid', `--for: must be one of ${STATUSES.join(', ')}`);
      const timeout = /^[0-9]{1,7}$/.test(o.timeout) ? Number(o.timeout) : Number.NaN;
      if (!(timeout > 0)) throw new PhaseError('invalid', '--timeout: must be a whole number of seconds, 1 to 9999999');
      await run().withClient((pc) => waitForStatus(pc, id, target as PhaseStatus, timeout, progressPrinter(pc, id)));
      run().print(`${id} is ${target}`);
    });
  const modal = program.command('modal').description('the Modal backend (docs/modal.md)');
  modal
    .command('check')
    .description('one short call on a GPU type before a paid phase: driver, CUDA, torch and the GPU it got (costs seconds of it)')
    .requiredOption('--gpu <type>', "Modal's GPU type, as a protocol names it (A10G, A100-40GB, H100, ...)")
    .action(async (o: { gpu: string }) => {
      const gpu = required(o.gpu, 'gpu');
      if (!/^[A-Za-z0-9][A-Za-z0-9:+-]{0,31}$/.test(gpu)) throw new PhaseError('invalid', '--gpu: must be a Modal GPU type such as A10G or H100');
      const { modalBackendFromEnv } = await import('../activities/backends/modal');
      const paths = resolvePaths(run().env);
      try {
        run().print(await modalBackendFromEnv({ python: paths.python, runtimeSrc: paths.runtimeSrc }).check(gpu));
      } catch (err) {
        if (err instanceof BackendError) throw new PhaseError(err.kind === 'missing_credentials' ? 'unavailable' : 'failed', err.message);
        throw err;
      }
    });
  program
    .command('ledger')
    .description('estimate, approval and one line per attempt')
    .argument('<ID>', 'phase id', phaseId)
    .addOption(json)
    .action(async (id: string, o: { json?: boolean }) => {
      const state = await run().withClient((pc) => getState(pc, id));
      run().print(o.json ? JSON.stringify({ estimate: state.estimate, approvedUsd: state.budget.approvedUsd, ledger: state.ledger }, null, 2) : renderLedger(state));
    });
  program
    .command('report')
    .description('print the closeout report of a frozen phase')
    .argument('<ID>', 'phase id', phaseId)
    .action(async (id: string) => {
      const state = await run().withClient((pc) => getState(pc, id));
      if (state.freeze === null) throw new PhaseError('refused', `phase ${id} is ${state.status}: the report is written when it freezes`);
      let report: string;
      try {
        report = readFileSync(state.freeze.reportPath, 'utf8');
      } catch (err) {
        throw new PhaseError('failed', `the report of ${id} cannot be read at ${state.freeze.reportPath} (${(err as NodeJS.ErrnoException).code ?? 'error'}); \`phasegate verify ${id}\` checks the frozen folder`);
      }
      run().print(report);
    });
  program
    .command('verify')
    .description('check a frozen phase: manifest and every signed decision (offline with --dir)')
    .argument('[ID]', 'phase id', phaseId)
    .option('--dir <dir>', 'a frozen folder, checked without Temporal')
    .action(async (id: string | undefined, o: { dir?: string }) => {
      let report: PhaseVerification;
      let label: string;
      if (o.dir !== undefined) {
        // Offline: no Temporal, the folder alone (the manifest's own sha256 is then not checked against history).
        report = verifyFrozenDir(o.dir);
        label = o.dir;
      } else {
        if (id === undefined) throw new PhaseError('invalid', 'verify: the phase ID is required (or --dir DIR)');
        label = id;
        report = await run().withClient((pc) => verifyPhase(pc, id));
      }
      const { print } = run();
      for (const f of report.changed) print(`CHANGED    ${childRef(report.dir, f)}`);
      for (const f of report.missing) print(`MISSING    ${childRef(report.dir, f)}`);
      for (const f of report.unexpected) print(`UNEXPECTED ${childRef(report.dir, f)}`);
      for (const problem of report.decisions.problems) print(`DECISION   ${problem}`);
      print(
        report.ok
          ? `OK: ${report.checked} files match the manifest in ${report.dir}; ${report.decisions.checked} signed decision(s) verified`
          : `FAILED: the artifacts of ${label} no longer match their manifest or signatures`,
      );
      if (!report.ok) setExit(1);
    });
  program
    .command('reopen')
    .description('start a new phase linked to a frozen one')
    .argument('<ID>', 'phase id', phaseId)
    .requiredOption('--defect <text>', 'the defect that justifies a rerun')
    .action(async (id: string, o: { defect: string }) => {
      const result = await run().withClient((pc) => reopenPhase(pc, id, required(o.defect, 'defect')));
      run().print(`reopened ${id} as a new phase`);
      run().print(result.phaseId);
    });
  program
    .command('cancel')
    .description('cancel a phase')
    .argument('<ID>', 'phase id', phaseId)
    .action(async (id: string) => {
      await run().withClient((pc) => cancelPhase(pc, id));
      run().print(`cancellation requested for ${id}`);
    });
  program
    .command('list')
    .description('phases, newest first')
    .addOption(json)
    .action(async (o: { json?: boolean }) => {
      const phases = await run().withClient((pc) => listPhases(pc));
      if (o.json) run().printJson(phases);
      else for (const p of phases) run().print(`${p.phaseId.padEnd(48)} ${p.status.padEnd(18)} ${p.workflowStatus.padEnd(10)} ${p.startTime}`);
    });
  return program;
}

/** `wait`'s progress: one stderr line per change; while a model runs, its units come from the attempt's heartbeat. */
function progressPrinter(pc: PhaseClient, id: string): (s: PhaseState) => Promise<void> {
  let last = '';
  return async (s) => {
    const running = s.models.find((m) => m.status === 'running');
    const progress = running ? (await getStatus(pc, id)).models.find((m) => m.modelKey === running.modelKey)?.progress : null;
    const done = s.models.filter((m) => m.status === 'succeeded').length;
    const line = running
      ? `${s.status} ${running.modelKey} (model ${done + 1}/${s.models.length}, attempt ${running.attempts})${progress ? ` units ${progress.unitsDone}/${progress.unitsTotal}${progress.lastUnit ? ` ${progress.lastUnit}` : ''}` : ''}`
      : s.status;
    if (line !== last) process.stderr.write(`${id}: ${line}\n`);
    last = line;
  };
}

/** A parse error from commander, as a refusal that names what was wrong (bounded: arguments may be huge). */
function parseProblem(err: CommanderError): PhaseError {
  const message = err.message.replace(/^error: /, '');
  const bounded = message.length > 300 ? `${message.slice(0, 300)}…` : message;
  return new PhaseError('invalid', `${bounded}\n(phasegate --help lists the commands; phasegate COMMAND --help their options)`);
}

export async function main(argv: string[], io: CliIo = processIo): Promise<number> {
  let exit = 0;
  const program = buildProgram(io, (code) => (exit = code));
  if (argv.length === 0) {
    io.stdout(program.helpInformation());
    return 2;
  }
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (!(err instanceof CommanderError)) throw err;
    // Help asked for (`-h`, `help`) is an answer; a bare command group (`keys`) is bad input.
    if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return 0;
    if (err.code === 'commander.help') {
      const group = program.commands.find((c) => c.name() === argv[0]);
      throw new PhaseError('invalid', group ? `${group.name()}: use \`phasegate ${group.name()} --help\` for its subcommands` : 'COMMAND: use `phasegate --help` for the commands');
    }
    throw parseProblem(err);
  }
  return exit;
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
