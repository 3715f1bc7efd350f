/**
 * Malformed input, generated (fast-check): 10,000 protocols, decision payloads, CLI invocations and HTTP requests.
 * Each must be refused with an error that names its field, with no crash, no stack trace and no phase started.
 *
 *   3,000 protocols       mutations of the demo protocol (a field replaced, removed or added; numbers at the
 *                         edges; long strings), loaded from files; what loads must be a start input the workflow
 *                         accepts, with every wait and timeout finite and bounded
 *   3,000 decisions       genuine signed decisions with one field mutated, plus arbitrary values, checked by the
 *                         workflow's own validators: none may pass, none may throw
 *   2,000 CLI invocations `main()` in-process (a subprocess each would take 15 minutes); a client is never made
 *   2,000 HTTP requests   a real HTTP server over a real dev server, with a valid token; none may start a phase
 */
import fc from 'fast-check';
import { request as httpRequest, createServer, type Server } from 'node:http';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { main, reportError, type CliIo } from '../client/cli';
import { requestListener } from '../client/http';
import { issueToken } from '../client/tokens';
import { repoRoot } from '../common/config';
import { loadProtocol, phaseInputOf, ProtocolError } from '../protocols/load';
import { PHASE_WORKFLOW_TYPE } from '../workflows/definitions';
import { gateContext, initialState, MAX_RETRY_DELAY_SECONDS, retryDelaySeconds, startInputProblem, validateApproveBudget, validateRejectBudget, validateSubmitReview } from '../workflows/phase-logic';
import { sign, TEST_RUN, testKeys } from './helpers/decisions';
import { quietLogger, serverPerFile, testProtocol, testWorker, protocolFolder } from './helpers/temporal';

const protocolsDir = path.join(repoRoot, 'protocols');
const demo = JSON.parse(readFileSync(path.join(protocolsDir, 'demo.json'), 'utf8')) as Record<string, unknown>;
/** An issue names its field: a path (or "(file)"/"(root)"), then a colon. */
const NAMES_A_FIELD = /^[A-Za-z_(][\w.()[\]/-]*: \S/;


/** Values at the edges: what the probe used to get past the loader. */
const edgeValue = fc.oneof(
  fc.constantFrom(0, -1, 1e-7, 1e21, 1e308, -1e308, 5e-324, 0.5, 2 ** 31, 2 ** 53, Number.MAX_SAFE_INTEGER, '', ' ', '0x10', 'NaN', null, true, [], {}),
  fc.string({ maxLength: 300 }),
  fc.string({ minLength: 3000, maxLength: 5000 }),
  fc.double(),
  fc.integer(),
  fc.jsonValue({ maxDepth: 2 }),
);

/** Every path to a leaf or object in a JSON value. */
function paths(value: unknown, prefix: (string | number)[] = []): (string | number)[][] {
  if (value === null || typeof value !== 'object') return [prefix];
  const keys: (string | number)[] = Array.isArray(value) ? value.map((_, i) => i) : Object.keys(value);
  return [prefix, ...keys.flatMap((k) => paths((value as Record<string | number, unknown>)[k], [...prefix, k]))];
}
const demoPaths = paths(demo).filter((p) => p.length > 0);

function mutate(base: unknown, at: (string | number)[], op: 'set' | 'delete' | 'add', value: unknown): unknown {
  const copy = structuredClone(base) as Record<string | number, unknown>;
  let node = copy;
  for (const k of at.slice(0, -1)) node = node[k] as Record<string | number, unknown>;
  const last = at[at.length - 1]!;
  if (op === 'delete') delete node[last];
  else if (op === 'add') node[`${String(last)}_extra`] = value;
  else node[last] = value;
  return copy;
}

describe('3,000 mutated protocols', () => {
  const dir = protocolFolder();
  test('are refused with every issue naming its field, or load as a start the workflow accepts with bounded waits', () => {
    let n = 0;
    let loaded = 0;
    fc.assert(
      fc.property(fc.constantFrom(...demoPaths), fc.constantFrom('set', 'set', 'set', 'delete', 'add'), edgeValue, (at, op, value) => {
        const file = path.join(dir, `p${(n += 1)}.json`);
        writeFileSync(file, JSON.stringify(mutate(demo, at, op, value)));
        try {
          const l = loadProtocol(file);
          loaded += 1;
          const input = phaseInputOf(l);
          expect(startInputProblem(input, false)).toBeNull();
          const p = l.protocol;
          for (let a = 2; a <= p.retry.max_attempts + 1; a++) {
            const d = retryDelaySeconds(p.retry, a);
            expect(Number.isFinite(d) && d >= 0 && d <= MAX_RETRY_DELAY_SECONDS).toBe(true);
          }
          for (const m of p.models) expect(m.timeout_minutes * 60).toBeLessThanOrEqual(86_400);
          for (const h of [p.budget.deadline_hours, p.review.deadline_hours]) if (h !== null) expect(h * 3_600_000).toBeLessThan(2 ** 31 * 1000);
          expect(p.steering.alpha).not.toBe(0);
          expect(JSON.stringify(input).length).toBeLessThan(512 * 1024);
        } catch (err) {
          if (!(err instanceof ProtocolError)) throw err;
          expect(err.issues.length).toBeGreaterThan(0);
          for (const issue of err.issues) expect(issue).toMatch(NAMES_A_FIELD);
        }
      }),
      { numRuns: 3000, seed: 20261130 },
    );
    // The generator reaches both sides.
    expect(loaded).toBeGreaterThan(50);
    expect(loaded).toBeLessThan(2500);
  });
});

describe('3,000 decision payloads', () => {
  const loaded = testProtocol('fuzz-decisions');
  const input = phaseInputOf(loaded);
  const ctx = gateContext(input, TEST_RUN);
  const target = { phaseId: input.phaseId, protocolHash: input.protocolHash, run: TEST_RUN };
  const genuine = {
    'approve-budget': sign('demo-approver', { kind: 'approve-budget', ...target, content: { usd: '1', note: 'n' } }),
    'reject-budget': sign('demo-approver', { kind: 'reject-budget', ...target, content: { reason: 'r' } }),
    review: sign('demo-reviewer', { kind: 'review', ...target, content: { verdict: 'APPROVED', ref: 'x', notes: 'y' } }),
  } as const;
  const validators = { 'approve-budget': validateApproveBudget, 'reject-budget': validateRejectBudget, review: validateSubmitReview } as const;

  test('one mutated field, or any value at all: refused, never thrown, the reason naming a field', () => {
    const kind = fc.constantFrom<keyof typeof genuine>('approve-budget', 'reject-budget', 'review');
    const mutated = kind.chain((k) =>
      fc.tuple(fc.constant(k), fc.oneof(
        fc.tuple(fc.constantFrom(...paths(genuine[k]).filter((p) => p.length > 0)), fc.constantFrom('set', 'delete', 'add'), edgeValue).map(([at, op, v]) => mutate(genuine[k], at, op as 'set', v)),
        fc.anything({ maxDepth: 2 }),
      )),
    );
    fc.assert(
      fc.property(mutated, ([k, payload]) => {
        // A mutation that happens to reproduce the genuine decision is the genuine decision.
        if (JSON.stringify(payload) === JSON.stringify(genuine[k])) return;
        const state = { ...initialState(input, '2026-01-01T00:00:00.000Z'), estimate: { models: [], totalUsd: 0.1 } };
        if (k === 'review') state.status = 'AWAITING_REVIEW';
        const reason = validators[k](ctx, state, payload);
        expect(reason).toMatch(NAMES_A_FIELD);
      }),
      { numRuns: 3000, seed: 20261130 },
    );
  });
});

/** The first line of every exit-2 message: it starts by naming what was wrong. */
const CLI_REFUSAL = /^phasegate: (invalid protocol \S+:$|invalid environment:$|(--[\w-]+|NAME|ID|COMMAND|by|content\.\w+)[: ]|no key for \S+ in |a key for \S+ already exists|\w+: use `|[\w-]+: the phase ID is required|--[\w-]+ is required|unknown command '|unknown option '|missing required argument '|too many arguments for '|option '|required option '|refused: )/;

describe('2,000 CLI invocations', () => {
  const keys = testKeys();
  const dir = protocolFolder();
  test('exit 2 with the field named, or 1 "cannot reach Temporal"; never a stack trace, never a client', async () => {
    const commands = ['start', 'id', 'approve-budget', 'reject-budget', 'review', 'plan', 'status', 'wait', 'ledger', 'report', 'verify', 'reopen', 'cancel', 'list', 'keys', 'tokens', 'frobnicate', ''];
    const option = fc.oneof(
      fc.constantFrom('--usd', '--by', '--note', '--reason', '--verdict', '--ref', '--notes', '--for', '--timeout', '--defect', '--protocol', '--json', '--dir', '--bogus', '-h'),
      fc.string({ maxLength: 12 }).map((s) => `--${s}`),
    );
    const value = fc.oneof(edgeValue.map((v) => (typeof v === 'string' ? v : JSON.stringify(v) ?? '')), fc.constantFrom('demo-approver', 'mallory', '../../etc/passwd', 'approved', 'FROZEN', path.join(dir, 'people', 'demo.json'), '/dev/zero', 'x'.repeat(900_000)));
    const argv = fc.tuple(fc.constantFrom(...commands), fc.array(fc.oneof(option, value), { maxLength: 6 })).map(([c, rest]) => (c === '' ? rest : [c, ...rest]));
    let connects = 0;
    const io: CliIo = {
      environment: { PHASEGATE_KEYS_DIR: keys.dir, PHASEGATE_STATE_DIR: mkdtempSync(path.join(os.tmpdir(), 'phasegate-fuzz-state-')), LOG_LEVEL: 'silent' },
      connect: () => {
        connects += 1;
        return Promise.reject(new Error('connection refused (fuzz)'));
      },
      stdout: () => undefined,
    };
    let codes = { 0: 0, 1: 0, 2: 0 };
    await fc.assert(
      fc.asyncProperty(argv, async (args) => {
        // `server`, `worker` and `http` run until stopped; they are not generated.
        let code: number;
        const lines: string[] = [];
        try {
          code = await main(args, io);
        } catch (err) {
          code = reportError(err, (l) => lines.push(l));
          const text = lines.join('');
          expect(text).not.toMatch(/\n\s+at /);
          // Exit 2 names what was wrong: an option, a field path, NAME or ID, or the protocol file with its issues.
          if (code === 2) expect(text.split('\n')[0]).toMatch(CLI_REFUSAL);
          else expect(text).toMatch(/^phasegate: cannot reach Temporal/);
        }
        codes = { ...codes, [code]: (codes[code as 0] ?? 0) + 1 };
      }),
      { numRuns: 2000, seed: 20261130 },
    );
    expect(codes[2]).toBeGreaterThan(1000);
    // Only exit-1 outcomes touched Temporal (the fuzz client refuses every connection), so none started a phase;
    // the others are answers such as `verify --dir` of a folder that is no frozen phase.
    expect(connects).toBeLessThanOrEqual(codes[1]);
  }, 600_000);
});

describe('2,000 HTTP requests', () => {
  const server = serverPerFile();
  test('a real server answers each with a status of its kind and never a 500; none starts a phase', async () => {
    const { worker, pc, taskQueue } = await testWorker(server, 'fuzz-http');
    const tokenStore = path.join(mkdtempSync(path.join(os.tmpdir(), 'phasegate-fuzz-tokens-')), 't.json');
    const token = issueToken(tokenStore, 'demo-approver');
    const roots = protocolFolder();
    let http: Server | undefined;
    await worker.runUntil(async () => {
      http = createServer();
      await new Promise<void>((r) => http!.listen(0, '127.0.0.1', r));
      const port = (http.address() as AddressInfo).port;
      http.on('request', requestListener({ pc, allowedHosts: [`127.0.0.1:${port}`], protocolRoots: [roots], tokenStore }, quietLogger));
      const phaseIdish = fc.oneof(fc.constantFrom('demo-tooling-parity-000000000000', 'x', '%E0%A4%A', '..', '%2e%2e%2fetc'), fc.string({ maxLength: 30 }).map(encodeURIComponent));
      const pathArb = fc.oneof(
        fc.constant('/phases'),
        phaseIdish.map((id) => `/phases/${id}`),
        fc.tuple(phaseIdish, fc.constantFrom('approve-budget', 'reject-budget', 'review', 'cancel', 'plan', 'ledger', 'nope')).map(([id, a]) => `/phases/${id}/${a}`),
        fc.string({ maxLength: 40 }).map((s) => `/${encodeURIComponent(s)}`),
      );
      const body = fc.oneof(
        fc.constantFrom('{"protocol":"/etc/passwd"}', '{"protocol":"/dev/zero"}', `{"protocol":${JSON.stringify(path.join(roots, 'people', 'demo.json'))}}`, '{', '', 'null', '[]'),
        fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)),
        fc.record({ protocol: fc.string({ maxLength: 50 }) }).map((v) => JSON.stringify(v)),
      );
      const headers = fc.record(
        { host: fc.constantFrom(`127.0.0.1:${port}`, `127.0.0.1:${port}`, 'evil.example'), origin: fc.constantFrom(undefined, 'http://evil.example', `http://127.0.0.1:${port}`, 'not a url'), contentType: fc.constantFrom('application/json', 'text/plain', undefined), auth: fc.constantFrom(`Bearer ${token}`, `Bearer ${token}`, 'Bearer nope-nope-nope', undefined) },
        { requiredKeys: [] },
      );
      const statuses: Record<number, number> = {};
      await fc.assert(
        fc.asyncProperty(fc.constantFrom('GET', 'POST', 'PUT', 'DELETE'), pathArb, body, headers, async (method, urlPath, payload, h) => {
          const reply = await send(port, method, urlPath, payload, h);
          statuses[reply.status] = (statuses[reply.status] ?? 0) + 1;
          expect([200, 400, 401, 403, 404, 409]).toContain(reply.status);
          if (reply.status !== 200) {
            const error = JSON.parse(reply.text) as { error?: unknown; kind?: unknown };
            expect([typeof error.error, typeof error.kind]).toEqual(['string', 'string']);
          }
          expect(reply.text).not.toContain('root:');
        }),
        { numRuns: 2000, seed: 20261130 },
      );
      expect(statuses[500]).toBeUndefined();
      let started = 0;
      for await (const _ of server.env.client.workflow.list({ query: `WorkflowType = '${PHASE_WORKFLOW_TYPE}' AND TaskQueue = '${taskQueue}'` })) started += 1;
      expect(started).toBe(0);
    });
    await new Promise<void>((r) => (http ? http.close(() => r()) : r()));
  }, 600_000);
});

function send(port: number, method: string, urlPath: string, payload: string, h: { host?: string; origin?: string | undefined; contentType?: string | undefined; auth?: string | undefined }): Promise<{ status: number; text: string }> {
  const headers: Record<string, string> = { host: h.host ?? `127.0.0.1:${port}` };
  if (h.origin !== undefined) headers.origin = h.origin;
  if (h.contentType !== undefined) headers['content-type'] = h.contentType;
  if (h.auth !== undefined) headers.authorization = h.auth;
  // Framed explicitly: Node sends a DELETE body unframed, which a server reads as the next request.
  if (method !== 'GET') headers['content-length'] = String(Buffer.byteLength(payload));
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, method, path: urlPath, headers }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error(`no answer to ${method} ${urlPath} in 10 s`)));
    if (method !== 'GET') req.write(payload);
    req.end();
  });
}
