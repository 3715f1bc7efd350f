/**
 * The HTTP API: the CLI's operations as JSON over HTTP, on one Temporal client for the whole process.
 *   POST /phases {protocol: path}            GET /phases            GET /phases/:id      GET /phases/:id/plan
 *   POST /phases/:id/approve-budget {by, usd, note}   POST /phases/:id/reject-budget {by, reason}
 *   POST /phases/:id/review {by, verdict, ref, notes} POST /phases/:id/cancel  GET /phases/:id/ledger
 * Errors: 400 with {error} for invalid input or a refused decision, 404 for an unknown phase, 500 otherwise.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { Env } from '../common/config';
import { connectionSettings } from '../common/temporal-connection';
import { connectClient } from './connection';
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
  startPhase,
  submitReview,
  type PhaseClient,
} from './phases';

const startBody = z.strictObject({ protocol: z.string().min(1) });
const approveBody = z.strictObject({ by: z.string().min(1), usd: z.number().finite().positive(), note: z.string().optional() });
const rejectBody = z.strictObject({ by: z.string().min(1), reason: z.string().min(1) });
const reviewBody = z.strictObject({
  by: z.string().min(1),
  verdict: z.enum(['APPROVED', 'ADVISED', 'CHANGES_REQUESTED']),
  ref: z.string().optional(),
  notes: z.string().optional(),
});

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > 1_000_000) throw new PhaseError('body: larger than 1 MB', 2);
    chunks.push(chunk as Buffer);
  }
  if (chunks.length === 0) return {};
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new PhaseError('body: not valid JSON', 2);
  }
}

function parseBody<T>(schema: z.ZodType<T>, raw: unknown): T {
  const r = schema.safeParse(raw);
  if (!r.success) throw new PhaseError(r.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; '), 2);
  return r.data;
}

export async function route(pc: PhaseClient, method: string, url: string, body: () => Promise<unknown>): Promise<unknown> {
  const parts = url.split('?')[0]!.split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] !== 'phases') throw new PhaseError(`no route ${method} ${url}`, 2);
  const [, id, action] = parts;
  if (id === undefined) {
    if (method === 'GET') return listPhases(pc);
    if (method === 'POST') return startPhase(pc, readProtocolOrThrow(parseBody(startBody, await body()).protocol));
  } else if (action === undefined && method === 'GET') return getStatus(pc, id);
  else if (action === 'plan' && method === 'GET') return getPlan(pc, id);
  else if (action === 'ledger' && method === 'GET') {
    const s = await getState(pc, id);
    return { estimate: s.estimate, approvedUsd: s.budget.approvedUsd, ledger: s.ledger };
  } else if (method === 'POST') {
    if (action === 'approve-budget') return approveBudget(pc, id, parseBody(approveBody, await body()));
    if (action === 'reject-budget') return rejectBudget(pc, id, parseBody(rejectBody, await body()));
    if (action === 'review') return submitReview(pc, id, parseBody(reviewBody, await body()));
    if (action === 'cancel') {
      await cancelPhase(pc, id);
      return { cancelled: true };
    }
  }
  throw new PhaseError(`no route ${method} ${url}`, 2);
}

function send(res: ServerResponse, status: number, value: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(`${JSON.stringify(value)}\n`);
}

export async function runHttpServer(env: Readonly<Env>, logger: Logger): Promise<void> {
  const client = await connectClient(connectionSettings(env));
  const pc: PhaseClient = { client, taskQueue: env.PHASEGATE_TASK_QUEUE };
  const server = createServer((req, res) => {
    const method = req.method ?? 'GET';
    const url = req.url ?? '/';
    route(pc, method, url, () => readJson(req))
      .then((value) => send(res, 200, value))
      .catch((err: unknown) => {
        if (err instanceof PhaseError) {
          send(res, err.message.startsWith('no phase with id') ? 404 : err.exitCode === 2 ? 400 : 500, { error: err.message });
        } else {
          logger.error({ err, method, url }, 'request failed');
          send(res, 500, { error: err instanceof Error ? err.message : String(err) });
        }
      });
  });
  await new Promise<void>((resolve) => server.listen(env.PHASEGATE_HTTP_PORT, '127.0.0.1', resolve));
  process.stdout.write(`phasegate HTTP API on http://127.0.0.1:${env.PHASEGATE_HTTP_PORT}\n`);
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      server.close(() => resolve());
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  await client.connection.close();
}
