/**
 * The HTTP API and the gate console, on Hono with zod-validated routes, over one Temporal client per process.
 *   GET /healthz (the only route that answers without a token)
 *   GET /openapi.json: the API, generated from the zod schemas that validate its requests (client/api-schemas.ts)
 *   POST /phases {protocol: path}   GET /phases[?status=S&waiting=me]   GET /phases/:id   GET /phases/:id/plan
 *   POST /phases/:id/approve-budget <signed decision>   POST /phases/:id/reject-budget <signed decision>
 *   POST /phases/:id/review <signed decision>           POST /phases/:id/cancel   GET /phases/:id/ledger
 *   GET /phases/:id/report   GET /phases/:id/verify   GET /phases/:id/artifacts/:file
 *   POST /decisions/message <unsigned decision>: the exact bytes a person signs (domain/decisions.ts)
 *   GET /whoami   GET /metrics (Prometheus)
 *   GET /console, /console/phases/:id, /console/assets/*: the console's static shell (no data; see below)
 *   GET /fragments/phases, /fragments/phases/:id, /fragments/phases/:id/report: server-rendered HTML parts
 *
 * Who may call: a person with a bearer token (`phasegate tokens issue NAME`). A decision must still carry that
 * person's own signature (the server holds no private key), and the token's person must be its signer.
 * The console's shell (HTML, script, style: the same bytes for everyone, no data) is the one exception to the
 * token rule besides /healthz: a browser cannot attach a bearer header to a navigation. The person pastes their
 * token into the page once; it is kept in the tab's sessionStorage and sent as a bearer header on every data call.
 * Where from: only requests whose Host is this server's own (no DNS rebinding), whose Origin, if any, is the
 * same, and whose POST body is declared JSON (no cross-site form posts). Protocol files are read only from the
 * configured protocol folders. Errors map by kind (client/errors.ts) and never quote a file or a stack.
 */
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { getRequestListener } from '@hono/node-server';
import { createRoute, OpenAPIHono, z } from '@hono/zod-openapi';
import type { Client } from '@temporalio/client';
import type { Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import type { Logger } from 'pino';
import { LOOPBACK_HOSTS, repoRoot, type Env } from '../common/config';
import { storesFromEnv } from '../common/phase-records';
import { connectionSettings } from '../common/temporal-connection';
import { decisionMessage, decisionShapeProblem, type DecisionKind, type SignedDecision } from '../domain/decisions';
import { toBase64 } from '../domain/encoding';
import {
  anyUnsignedDecision,
  errorBody,
  listQuery,
  phaseIdParam,
  signedDecisionSchema,
  startBody,
} from './api-schemas';
import { connectClient } from './connection';
import { artifactFile, consoleAsset, phaseDetail, phaseList, reportOf, SHELL_PATHS } from './console/data';
import { renderPhaseList, renderPhasePage, renderReport } from './console/render';
import { asPhaseError, PhaseError } from './errors';
import { phaseMetrics } from './metrics';
import {
  approveBudget,
  cancelPhase,
  checkPhaseId,
  getPlan,
  getState,
  getStatus,
  readProtocolOrThrow,
  rejectBudget,
  startPhase,
  submitReview,
  verifyPhase,
  type PhaseClient,
} from './phases';
import { personForToken, tokenStorePath } from './tokens';

export const MAX_BODY_BYTES = 64 * 1024;

export interface HttpDeps {
  pc: PhaseClient;
  /** Host header values this server answers to (host:port). */
  allowedHosts: readonly string[];
  protocolRoots: readonly string[];
  tokenStore: string;
}

type Env_ = { Variables: { person: string } };

/** A zod failure as one message naming each field. */
function zodProblem(error: z.ZodError): string {
  return error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; ');
}

/** What the checks below read of a request. */
interface RequestHead {
  method: string;
  header(name: string): string | undefined;
}

/** A value checked by a schema outside the OpenAPI routes (the console's fragments): a failure is bad input. */
function valid<T>(schema: z.ZodType<T>, value: unknown): T {
  const r = schema.safeParse(value);
  if (!r.success) throw new PhaseError('invalid', zodProblem(r.error));
  return r.data;
}

/** Host, Origin and Content-Type: the checks that keep a browser tab on another site out. */
function checkOrigin(deps: HttpDeps, c: { req: RequestHead }): void {
  const host = c.req.header('host');
  if (host === undefined || !deps.allowedHosts.includes(host.toLowerCase())) throw new PhaseError('forbidden', 'host: this server does not answer to that Host');
  const origin = c.req.header('origin');
  if (origin !== undefined) {
    let originHost: string;
    try {
      originHost = new URL(origin).host.toLowerCase();
    } catch {
      throw new PhaseError('forbidden', 'origin: not a valid origin');
    }
    if (!deps.allowedHosts.includes(originHost)) throw new PhaseError('forbidden', 'origin: cross-site requests are refused');
  }
  if (c.req.method === 'POST' && !/^application\/json(;|$)/i.test(c.req.header('content-type') ?? '')) {
    throw new PhaseError('invalid', 'content-type: must be application/json');
  }
}

/** The person whose bearer token came with the request; 401 without a valid one. */
function authenticate(deps: HttpDeps, c: { req: RequestHead }): string {
  const m = /^Bearer ([A-Za-z0-9_-]{10,200})$/.exec(c.req.header('authorization') ?? '');
  const person = m ? personForToken(deps.tokenStore, m[1]!) : null;
  if (person === null) throw new PhaseError('unauthorized', 'authorization: a valid bearer token is required (`phasegate tokens issue NAME`)');
  return person;
}

/** A signed decision from the body: well-formed, for this phase, signed by the caller. The workflow checks the signature. */
function signedDecision<K extends DecisionKind>(raw: unknown, kind: K, phaseId: string, person: string): SignedDecision<K> {
  const problem = decisionShapeProblem(raw, kind);
  if (problem !== null) throw new PhaseError('invalid', problem);
  const d = raw as SignedDecision<K>;
  if (d.phaseId !== phaseId) throw new PhaseError('invalid', `phaseId: the decision is for ${d.phaseId}, not for ${phaseId}`);
  if (d.by !== person) throw new PhaseError('forbidden', `by: the decision is signed as ${d.by}, but the token is ${person}'s; each person sends their own decisions`);
  return d;
}

const json = (schema: z.ZodType, description: string) => ({ description, content: { 'application/json': { schema } } });
const errors = {
  400: json(errorBody, 'Invalid input (the message names the field)'),
  401: json(errorBody, 'No valid bearer token'),
  403: json(errorBody, 'Foreign Host or Origin, or a decision signed by someone else'),
  404: json(errorBody, 'No such phase or route'),
  409: json(errorBody, "Refused by the phase (the workflow validator's reason)"),
};
const anyJson = z.looseObject({});
const ok = (description: string) => ({ 200: json(anyJson, description), ...errors });
const withBody = <T extends z.ZodType>(schema: T) => ({ body: { content: { 'application/json': { schema } }, required: true } });

const routes = {
  list: createRoute({ method: 'get', path: '/phases', request: { query: listQuery }, responses: ok('Phases, newest first') }),
  start: createRoute({ method: 'post', path: '/phases', request: withBody(startBody), responses: ok('Started (or already running)') }),
  status: createRoute({ method: 'get', path: '/phases/{id}', request: { params: phaseIdParam }, responses: ok('Status view (the same as `status --json`)') }),
  plan: createRoute({ method: 'get', path: '/phases/{id}/plan', request: { params: phaseIdParam }, responses: ok('The run plan a reviewer reads') }),
  ledger: createRoute({ method: 'get', path: '/phases/{id}/ledger', request: { params: phaseIdParam }, responses: ok('Estimate, approval and ledger') }),
  report: createRoute({ method: 'get', path: '/phases/{id}/report', request: { params: phaseIdParam }, responses: ok('The closeout report (markdown)') }),
  verify: createRoute({ method: 'get', path: '/phases/{id}/verify', request: { params: phaseIdParam }, responses: ok("`verify`'s answer") }),
  cancel: createRoute({ method: 'post', path: '/phases/{id}/cancel', request: { params: phaseIdParam }, responses: ok('Cancellation requested') }),
  approve: createRoute({ method: 'post', path: '/phases/{id}/approve-budget', request: { params: phaseIdParam, ...withBody(signedDecisionSchema('approve-budget')) }, responses: ok('Decision result') }),
  reject: createRoute({ method: 'post', path: '/phases/{id}/reject-budget', request: { params: phaseIdParam, ...withBody(signedDecisionSchema('reject-budget')) }, responses: ok('Decision result') }),
  review: createRoute({ method: 'post', path: '/phases/{id}/review', request: { params: phaseIdParam, ...withBody(signedDecisionSchema('review')) }, responses: ok('Decision result') }),
  message: createRoute({
    method: 'post',
    path: '/decisions/message',
    description: 'The exact bytes a person signs for this decision (base64), as the CLI signs them. The server signs nothing.',
    request: withBody(anyUnsignedDecision),
    responses: ok('{message: base64, text}'),
  }),
  whoami: createRoute({ method: 'get', path: '/whoami', responses: ok('The person the bearer token belongs to') }),
};

/** Reads a POST body as JSON once (an empty body is {}), so the route's validator and handler see the same value. */
async function parseJsonBody(c: { req: { text(): Promise<string>; bodyCache: { json?: Promise<unknown> } } }): Promise<void> {
  const text = await c.req.text();
  let value: unknown = {};
  if (text.trim() !== '') {
    try {
      value = JSON.parse(text);
    } catch {
      throw new PhaseError('invalid', 'body: not valid JSON');
    }
  }
  c.req.bodyCache.json = Promise.resolve(value);
}

function sendError(c: Context, err: PhaseError): Response {
  return c.json({ error: err.message, kind: err.kind }, err.httpStatus as 400, { 'cache-control': 'no-store' });
}

export function createApp(deps: HttpDeps, logger: Logger): OpenAPIHono<Env_> {
  const pc = deps.pc;
  const app = new OpenAPIHono<Env_>({
    defaultHook: (result) => {
      if (!result.success) throw new PhaseError('invalid', zodProblem(result.error));
    },
  });
  app.onError((thrown, c) => {
    const err = asPhaseError(thrown);
    if (err instanceof PhaseError) return sendError(c, err);
    logger.error({ err, method: c.req.method, url: c.req.path.slice(0, 200) }, 'request failed');
    return c.json({ error: 'internal error (logged by the server)', kind: 'internal' }, 500);
  });
  app.notFound((c) => sendError(c, new PhaseError('notFound', 'no such route')));

  app.get('/healthz', (c) => c.json({ ok: true }));
  app.use('*', async (c, next) => {
    checkOrigin(deps, c);
    c.header('cache-control', 'no-store');
    c.header('x-content-type-options', 'nosniff');
    if (c.req.method === 'GET' && SHELL_PATHS.some((p) => p.test(c.req.path))) return next();
    c.set('person', authenticate(deps, c));
    return next();
  });
  app.use(
    '*',
    bodyLimit({
      maxSize: MAX_BODY_BYTES,
      onError: () => {
        throw new PhaseError('invalid', `body: larger than ${MAX_BODY_BYTES} bytes`);
      },
    }),
  );
  app.use('*', async (c, next) => {
    if (c.req.method === 'POST') await parseJsonBody(c);
    return next();
  });

  // ---- the API ----
  app.openapi(routes.list, async (c) => {
    const q = c.req.valid('query');
    return c.json(await phaseList(pc, { person: c.get('person'), ...(q.status ? { status: q.status } : {}), waitingForMe: q.waiting === 'me' }), 200);
  });
  app.openapi(routes.start, async (c) => c.json(await startPhase(pc, readProtocolOrThrow(c.req.valid('json').protocol, { roots: deps.protocolRoots })), 200));
  app.openapi(routes.status, async (c) => c.json(await getStatus(pc, c.req.valid('param').id), 200));
  app.openapi(routes.plan, async (c) => c.json(await getPlan(pc, c.req.valid('param').id), 200));
  app.openapi(routes.ledger, async (c) => {
    const s = await getState(pc, c.req.valid('param').id);
    return c.json({ estimate: s.estimate, approvedUsd: s.budget.approvedUsd, ledger: s.ledger }, 200);
  });
  app.openapi(routes.report, async (c) => c.json({ markdown: await reportOf(pc, c.req.valid('param').id) }, 200));
  app.openapi(routes.verify, async (c) => c.json(await verifyPhase(pc, c.req.valid('param').id), 200));
  app.openapi(routes.cancel, async (c) => {
    await cancelPhase(pc, c.req.valid('param').id);
    return c.json({ cancelled: true, by: c.get('person') }, 200);
  });
  app.openapi(routes.approve, async (c) => c.json(await approveBudget(pc, signedDecision(c.req.valid('json'), 'approve-budget', c.req.valid('param').id, c.get('person'))), 200));
  app.openapi(routes.reject, async (c) => c.json(await rejectBudget(pc, signedDecision(c.req.valid('json'), 'reject-budget', c.req.valid('param').id, c.get('person'))), 200));
  app.openapi(routes.review, async (c) => c.json(await submitReview(pc, signedDecision(c.req.valid('json'), 'review', c.req.valid('param').id, c.get('person'))), 200));
  app.openapi(routes.message, (c) => {
    const d = c.req.valid('json');
    if (d.by !== c.get('person')) throw new PhaseError('forbidden', `by: the decision is ${d.by}'s, but the token is ${c.get('person')}'s`);
    const bytes = decisionMessage(d);
    return c.json({ message: toBase64(bytes) }, 200);
  });
  app.openapi(routes.whoami, (c) => c.json({ person: c.get('person') }, 200));
  app.doc31('/openapi.json', {
    openapi: '3.1.0',
    info: { title: 'phasegate', version: '1', description: 'Phases, their gates and their signed decisions. Every route but /healthz needs `Authorization: Bearer <token>`.' },
  });
  app.openAPIRegistry.registerComponent('securitySchemes', 'bearer', { type: 'http', scheme: 'bearer' });

  app.get('/phases/:id/artifacts/:file', async (c) => {
    const { body, type } = await artifactFile(pc, checkPhaseId(c.req.param('id')), c.req.param('file'));
    return c.body(body, 200, { 'content-type': type, 'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'" });
  });
  app.get('/metrics', async (c) => {
    const registry = await phaseMetrics(pc.records);
    return c.text(await registry.metrics(), 200, { 'content-type': registry.contentType });
  });

  // ---- the console: a static shell, and HTML fragments it fetches with the person's token ----
  for (const shell of ['/console', '/console/', '/console/phases/:id']) app.get(shell, (c) => consoleAsset(c, 'index.html'));
  app.get('/console/assets/:file', (c) => consoleAsset(c, c.req.param('file')));
  app.get('/fragments/phases', async (c) => {
    const q = valid(listQuery, c.req.query());
    const phases = await phaseList(pc, { person: c.get('person'), ...(q.status ? { status: q.status } : {}), waitingForMe: q.waiting === 'me' });
    return c.html(renderPhaseList(phases, c.get('person')));
  });
  app.get('/fragments/phases/:id', async (c) => {
    const detail = await phaseDetail(pc, checkPhaseId(c.req.param('id')), c.get('person'));
    return c.json(renderPhasePage(detail));
  });
  app.get('/fragments/phases/:id/report', async (c) => c.html(renderReport(await reportOf(pc, checkPhaseId(c.req.param('id'))))));
  return app;
}

/** Serves requests with the app: every error becomes the status of its kind and a message; unexpected ones are logged, not echoed. */
export function requestListener(deps: HttpDeps, logger: Logger): (req: IncomingMessage, res: ServerResponse) => void {
  const app = createApp(deps, logger);
  const listener = getRequestListener(app.fetch, {
    errorHandler: (err) => {
      logger.error({ err }, 'request failed');
    },
  });
  return (req, res) => void listener(req, res);
}

export function httpDeps(env: Readonly<Env>, pc: PhaseClient, port: number): HttpDeps {
  const hosts = [...LOOPBACK_HOSTS.map((h) => (h.includes(':') ? `[${h}]` : h)), env.PHASEGATE_HTTP_HOST];
  const extra = env.PHASEGATE_HTTP_ALLOWED_HOSTS.split(',').map((h) => h.trim().toLowerCase()).filter(Boolean);
  return {
    pc,
    allowedHosts: [...new Set([...hosts.map((h) => `${h}:${port}`), ...extra])],
    protocolRoots: env.PHASEGATE_PROTOCOL_ROOTS?.split(':').filter(Boolean) ?? [path.join(repoRoot, 'protocols')],
    tokenStore: tokenStorePath(env),
  };
}

export interface RunningHttp {
  /** The console's address, e.g. http://127.0.0.1:8787/console */
  consoleUrl: string;
  close: () => Promise<void>;
}

/** Listens on PHASEGATE_HTTP_HOST:PORT with an existing client (`phasegate http` and `phasegate server` share this). */
export async function startHttpServer(env: Readonly<Env>, logger: Logger, client: Client): Promise<RunningHttp> {
  const pc: PhaseClient = { client, taskQueue: env.PHASEGATE_TASK_QUEUE, ...storesFromEnv(env) };
  const listener = requestListener(httpDeps(env, pc, env.PHASEGATE_HTTP_PORT), logger);
  const tls = env.PHASEGATE_HTTP_TLS_CERT_PATH !== undefined && env.PHASEGATE_HTTP_TLS_KEY_PATH !== undefined;
  const server = tls
    ? createHttpsServer({ cert: readFileSync(env.PHASEGATE_HTTP_TLS_CERT_PATH), key: readFileSync(env.PHASEGATE_HTTP_TLS_KEY_PATH) }, listener)
    : createHttpServer(listener);
  server.requestTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new PhaseError('unavailable', `cannot listen on ${env.PHASEGATE_HTTP_HOST}:${env.PHASEGATE_HTTP_PORT}: ${err.message}`)));
    server.listen(env.PHASEGATE_HTTP_PORT, env.PHASEGATE_HTTP_HOST, resolve);
  });
  const host = env.PHASEGATE_HTTP_HOST.includes(':') ? `[${env.PHASEGATE_HTTP_HOST}]` : env.PHASEGATE_HTTP_HOST;
  const base = `${tls ? 'https' : 'http'}://${host}:${env.PHASEGATE_HTTP_PORT}`;
  process.stdout.write(`phasegate HTTP API on ${base} (OpenAPI: ${base}/openapi.json)\nphasegate console: ${base}/console\n`);
  return {
    consoleUrl: `${base}/console`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export async function runHttpServer(env: Readonly<Env>, logger: Logger): Promise<void> {
  const settings = connectionSettings(env);
  const client = await connectClient(settings).catch((err: unknown) => {
    throw new PhaseError('unavailable', `cannot reach Temporal at ${settings.address}: ${(err as Error).message}`);
  });
  const http = await startHttpServer(env, logger, client);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await http.close();
  await client.connection.close();
}
