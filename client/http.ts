/**
 * The HTTP API: the CLI's operations as JSON over HTTP, on one Temporal client for the whole process.
 *   GET /healthz (the only route that answers without a token)
 *   POST /phases {protocol: path}            GET /phases            GET /phases/:id      GET /phases/:id/plan
 *   POST /phases/:id/approve-budget <signed decision>   POST /phases/:id/reject-budget <signed decision>
 *   POST /phases/:id/review <signed decision>           POST /phases/:id/cancel              GET /phases/:id/ledger
 *
 * Who may call: a person with a bearer token (`phasegate tokens issue NAME`). A decision must still carry that
 * person's own signature (the server holds no private key), and the token's person must be its signer.
 * Where from: only requests whose Host is this server's own (no DNS rebinding), whose Origin, if any, is the
 * same, and whose POST body is declared JSON (no cross-site form posts). Protocol files are read only from the
 * configured protocol folders. Errors map by kind (client/errors.ts) and never quote a file or a stack.
 */
import { createServer as createHttpServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { z } from 'zod';
import { LOOPBACK_HOSTS, repoRoot, type Env } from '../common/config';
import { storesFromEnv } from '../common/phase-records';
import { connectionSettings } from '../common/temporal-connection';
import { DECISION_KINDS, decisionShapeProblem, type DecisionKind, type SignedDecision } from '../domain/decisions';
import { connectClient } from './connection';
import { asPhaseError, PhaseError } from './errors';
import {
  approveBudget,
  cancelPhase,
  checkPhaseId,
  getPlan,
  getState,
  getStatus,
  listPhases,
  readProtocolOrThrow,
  rejectBudget,
  startPhase,
  submitReview,
  type PhaseClient,
} from './phases';
import { personForToken, tokenStorePath } from './tokens';

export const MAX_BODY_BYTES = 64 * 1024;

const startBody = z.strictObject({ protocol: z.string().min(1).max(4096) });

export interface HttpRequest {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: () => Promise<unknown>;
}

export interface HttpDeps {
  pc: PhaseClient;
  /** Host header values this server answers to (host:port). */
  allowedHosts: readonly string[];
  protocolRoots: readonly string[];
  tokenStore: string;
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY_BYTES) throw new PhaseError('invalid', `body: larger than ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk as Buffer);
  }
  if (chunks.length === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new PhaseError('invalid', 'body: not valid JSON');
  }
}

function parseBody<T>(schema: z.ZodType<T>, raw: unknown): T {
  const r = schema.safeParse(raw);
  if (!r.success) throw new PhaseError('invalid', r.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; '));
  return r.data;
}

function pathParts(url: string): string[] {
  try {
    return url.split('?')[0]!.split('/').filter(Boolean).map(decodeURIComponent);
  } catch {
    throw new PhaseError('invalid', 'url: malformed percent-encoding');
  }
}

const header = (headers: IncomingHttpHeaders, name: string): string | undefined => {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
};

/** Host, Origin and Content-Type: the checks that keep a browser tab on another site out. */
function checkOrigin(deps: HttpDeps, req: HttpRequest): void {
  const host = header(req.headers, 'host');
  if (host === undefined || !deps.allowedHosts.includes(host.toLowerCase())) throw new PhaseError('forbidden', 'host: this server does not answer to that Host');
  const origin = header(req.headers, 'origin');
  if (origin !== undefined) {
    let originHost: string;
    try {
      originHost = new URL(origin).host.toLowerCase();
    } catch {
      throw new PhaseError('forbidden', 'origin: not a valid origin');
    }
    if (!deps.allowedHosts.includes(originHost)) throw new PhaseError('forbidden', 'origin: cross-site requests are refused');
  }
  if (req.method === 'POST' && !/^application\/json(;|$)/i.test(header(req.headers, 'content-type') ?? '')) {
    throw new PhaseError('invalid', 'content-type: must be application/json');
  }
}

/** The person whose bearer token came with the request; 401 without a valid one. */
function authenticate(deps: HttpDeps, req: HttpRequest): string {
  const auth = header(req.headers, 'authorization');
  const m = auth === undefined ? null : /^Bearer ([A-Za-z0-9_-]{10,200})$/.exec(auth);
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

export async function handleRequest(deps: HttpDeps, req: HttpRequest): Promise<unknown> {
  const parts = pathParts(req.url);
  if (req.method === 'GET' && parts.length === 1 && parts[0] === 'healthz') return { ok: true };
  checkOrigin(deps, req);
  const person = authenticate(deps, req);
  const pc = deps.pc;
  if (parts[0] !== 'phases' || parts.length > 3) throw new PhaseError('notFound', 'no such route');
  const [, rawId, action] = parts;
  if (rawId === undefined) {
    if (req.method === 'GET') return listPhases(pc);
    if (req.method === 'POST') return startPhase(pc, readProtocolOrThrow(parseBody(startBody, await req.body()).protocol, { roots: deps.protocolRoots }));
    throw new PhaseError('notFound', 'no such route');
  }
  const id = checkPhaseId(rawId);
  if (req.method === 'GET') {
    if (action === undefined) return getStatus(pc, id);
    if (action === 'plan') return getPlan(pc, id);
    if (action === 'ledger') {
      const s = await getState(pc, id);
      return { estimate: s.estimate, approvedUsd: s.budget.approvedUsd, ledger: s.ledger };
    }
  } else if (req.method === 'POST' && action !== undefined) {
    if (action === 'cancel') {
      await cancelPhase(pc, id);
      return { cancelled: true, by: person };
    }
    const kind = (DECISION_KINDS as readonly string[]).includes(action) ? (action as DecisionKind) : undefined;
    if (kind !== undefined) {
      const body = await req.body();
      if (kind === 'approve-budget') return approveBudget(pc, signedDecision(body, kind, id, person));
      if (kind === 'reject-budget') return rejectBudget(pc, signedDecision(body, kind, id, person));
      return submitReview(pc, signedDecision(body, kind, id, person));
    }
  }
  throw new PhaseError('notFound', 'no such route');
}

function send(res: ServerResponse, status: number, value: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' });
  res.end(`${JSON.stringify(value)}\n`);
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

/** Serves one request: every error becomes the status of its kind and a message; unexpected ones are logged, not echoed. */
export function requestListener(deps: HttpDeps, logger: Logger): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    const method = req.method ?? 'GET';
    const url = req.url ?? '/';
    handleRequest(deps, { method, url, headers: req.headers, body: () => readJson(req) })
      .then((value) => send(res, 200, value))
      .catch((thrown: unknown) => {
        const err = asPhaseError(thrown);
        if (err instanceof PhaseError) send(res, err.httpStatus, { error: err.message, kind: err.kind });
        else {
          logger.error({ err, method, url: url.slice(0, 200) }, 'request failed');
          send(res, 500, { error: 'internal error (logged by the server)', kind: 'internal' });
        }
      });
  };
}

export async function runHttpServer(env: Readonly<Env>, logger: Logger): Promise<void> {
  const settings = connectionSettings(env);
  const client = await connectClient(settings).catch((err: unknown) => {
    throw new PhaseError('unavailable', `cannot reach Temporal at ${settings.address}: ${(err as Error).message}`);
  });
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
  process.stdout.write(`phasegate HTTP API on ${tls ? 'https' : 'http'}://${env.PHASEGATE_HTTP_HOST}:${env.PHASEGATE_HTTP_PORT}\n`);
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      server.close(() => resolve());
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  await client.connection.close();
}
