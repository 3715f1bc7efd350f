/**
 * The HTTP API as a client on this machine meets it: a real HTTP server on a loopback port over a real dev
 * server. Nothing answers without a bearer token but the health check; a foreign Host or Origin (DNS rebinding,
 * a browser tab on another site) is refused; a protocol outside the configured folders is never read; a
 * decision must carry its sender's own signature; errors map to statuses by kind and never quote a file.
 */
import { request as httpRequest, createServer, type Server } from 'node:http';
import { mkdtempSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { requestListener, type HttpDeps } from '../client/http';
import { decisionTarget, getState } from '../client/phases';
import { issueToken, revokeToken } from '../client/tokens';
import { decisionMessage } from '../domain/decisions';
import { sign } from './helpers/decisions';
import { quietLogger, serverPerFile, testProtocol, testWorker, waitFor } from './helpers/temporal';

const server = serverPerFile();

interface Reply {
  status: number;
  body: { error?: string; kind?: string } & Record<string, unknown>;
}

function call(port: number, method: string, urlPath: string, options: { token?: string; body?: unknown; headers?: Record<string, string> } = {}): Promise<Reply> {
  const payload = options.body === undefined ? undefined : typeof options.body === 'string' ? options.body : JSON.stringify(options.body);
  const headers: Record<string, string> = {
    host: `127.0.0.1:${port}`,
    ...(payload !== undefined ? { 'content-type': 'application/json' } : {}),
    ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
    ...options.headers,
  };
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, method, path: urlPath, headers }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Reply['body'] }));
    });
    req.on('error', reject);
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

function callText(port: number, urlPath: string, token?: string): Promise<{ status: number; text: string; headers: Record<string, string | string[] | undefined> }> {
  return new Promise((resolve, reject) => {
    const headers = { host: `127.0.0.1:${port}`, ...(token ? { authorization: `Bearer ${token}` } : {}) };
    const req = httpRequest({ host: '127.0.0.1', port, method: 'GET', path: urlPath, headers }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text, headers: res.headers }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('authentication, origin checks, protocol roots and signed decisions over HTTP', async () => {
  const { worker, pc } = await testWorker(server, 'http');
  const loaded = testProtocol('http');
  const tokenStore = path.join(mkdtempSync(path.join(os.tmpdir(), 'phasegate-tokens-')), 'http-tokens.json');
  const approverToken = issueToken(tokenStore, 'demo-approver');
  const reviewerToken = issueToken(tokenStore, 'demo-reviewer');
  let http: Server | undefined;
  await worker.runUntil(async () => {
    http = createServer();
    await new Promise<void>((r) => http!.listen(0, '127.0.0.1', r));
    const port = (http.address() as AddressInfo).port;
    const deps: HttpDeps = { pc, allowedHosts: [`127.0.0.1:${port}`, `localhost:${port}`], protocolRoots: [path.dirname(loaded.protocolPath)], tokenStore };
    http.on('request', requestListener(deps, quietLogger));

    // Only the health check answers without a token.
    expect(await call(port, 'GET', '/healthz')).toEqual({ status: 200, body: { ok: true } });
    expect((await call(port, 'GET', '/phases')).status).toBe(401);
    expect((await call(port, 'GET', '/phases', { token: 'pgt_not-a-real-token-at-all' })).status).toBe(401);
    expect((await call(port, 'GET', '/phases', { token: approverToken })).status).toBe(200);
    // The OpenAPI document, the metrics and the console's data need a token too; only the console's static shell does not.
    expect((await call(port, 'GET', '/openapi.json')).status).toBe(401);
    const doc = await call(port, 'GET', '/openapi.json', { token: approverToken });
    expect(doc.status).toBe(200);
    expect(Object.keys(doc.body.paths as object)).toEqual(expect.arrayContaining(['/phases', '/phases/{id}/approve-budget', '/phases/{id}/review', '/decisions/message']));
    expect(JSON.stringify(doc.body)).toContain('"pattern":"^[0-9a-f]{64}$"');
    expect((await call(port, 'GET', '/metrics')).status).toBe(401);
    expect((await call(port, 'GET', '/fragments/phases')).status).toBe(401);
    expect((await callText(port, '/console')).status).toBe(200);
    expect((await callText(port, '/console/assets/console.js')).headers['content-security-policy']).toContain("script-src 'self'");
    expect((await callText(port, '/console/assets/../../etc/passwd')).status).not.toBe(200);
    expect((await callText(port, '/fragments/phases/Not_An_Id', approverToken)).status).toBe(400);
    expect((await callText(port, '/fragments/phases?waiting=you', approverToken)).status).toBe(400);
    expect((await callText(port, '/phases/no-such-phase/artifacts/secrets.txt', approverToken)).status).toBe(404);

    // Another site's page, or a rebound DNS name, cannot drive it.
    expect((await call(port, 'GET', '/phases', { token: approverToken, headers: { host: 'evil.example:80' } })).body.kind).toBe('forbidden');
    expect((await call(port, 'GET', '/phases', { token: approverToken, headers: { origin: 'http://evil.example' } })).status).toBe(403);
    expect((await call(port, 'GET', '/phases', { token: approverToken, headers: { origin: `http://localhost:${port}` } })).status).toBe(200);
    const form = await call(port, 'POST', '/phases', { token: approverToken, body: 'protocol=x', headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    expect(form).toMatchObject({ status: 400, body: { error: 'content-type: must be application/json' } });
    expect((await call(port, 'GET', '/phases/%E0%A4%A', { token: approverToken })).status).toBe(400);
    expect((await call(port, 'GET', '/nothing', { token: approverToken })).status).toBe(404);
    expect((await call(port, 'GET', '/phases/no-such-phase', { token: approverToken })).status).toBe(404);

    // Protocol files only from the configured folders, never quoted.
    const outside = await call(port, 'POST', '/phases', { token: approverToken, body: { protocol: '/etc/passwd' } });
    expect(outside.status).toBe(400);
    expect(outside.body.error).toContain('not inside a configured protocol folder');
    expect(outside.body.error).not.toContain('root:');
    expect((await call(port, 'POST', '/phases', { token: approverToken, body: '{"protocol": ' })).body.error).toBe('body: not valid JSON');

    const started = await call(port, 'POST', '/phases', { token: approverToken, body: { protocol: loaded.protocolPath } });
    expect(started).toMatchObject({ status: 200, body: { phaseId: loaded.phaseId, started: true } });
    const phaseId = loaded.phaseId;
    await waitFor(async () => (await getState(pc, phaseId)).estimate !== null);
    const target = await decisionTarget(pc, phaseId);
    const decision = sign('demo-approver', { kind: 'approve-budget', ...target, content: { usd: '1', note: 'over http' } });

    // The server never signs: an unsigned body is refused, and a token may only send its own person's decisions.
    const unsigned = await call(port, 'POST', `/phases/${phaseId}/approve-budget`, { token: approverToken, body: { by: 'demo-approver', usd: 1 } });
    expect(unsigned).toMatchObject({ status: 400, body: { kind: 'invalid' } });
    const relayed = await call(port, 'POST', `/phases/${phaseId}/approve-budget`, { token: reviewerToken, body: decision });
    expect(relayed).toMatchObject({ status: 403, body: { kind: 'forbidden' } });
    expect(relayed.body.error).toContain("the token is demo-reviewer's");
    const forged = sign('demo-approver', { kind: 'approve-budget', ...target, content: { usd: '1', note: '' } }, 'mallory');
    const refused = await call(port, 'POST', `/phases/${phaseId}/approve-budget`, { token: approverToken, body: forged });
    expect(refused).toMatchObject({ status: 409, body: { kind: 'refused' } });
    expect(refused.body.error).toContain("does not verify with demo-approver's key");

    // The bytes the console signs are the CLI's: the server's message is the domain's, for the token's own person only.
    const { signature: _signature, ...unsignedDecision } = decision;
    const message = await call(port, 'POST', '/decisions/message', { token: approverToken, body: unsignedDecision });
    expect(message.body.message).toBe(Buffer.from(decisionMessage(unsignedDecision)).toString('base64'));
    expect((await call(port, 'POST', '/decisions/message', { token: reviewerToken, body: unsignedDecision })).status).toBe(403);

    const approved = await call(port, 'POST', `/phases/${phaseId}/approve-budget`, { token: approverToken, body: decision });
    expect(approved).toMatchObject({ status: 200, body: { applied: true, status: 'AWAITING_REVIEW' } });
    const view = await call(port, 'GET', `/phases/${phaseId}`, { token: reviewerToken });
    expect(view.body).toMatchObject({ status: 'AWAITING_REVIEW', approvedUsd: 1 });
    expect(((await call(port, 'GET', '/phases?waiting=me', { token: reviewerToken })).body as unknown as { phaseId: string }[]).map((p) => p.phaseId)).toEqual([phaseId]);
    expect((await call(port, 'GET', '/phases?waiting=me', { token: approverToken })).body).toEqual([]);
    await waitFor(async () => (await callText(port, '/metrics', reviewerToken)).text.includes(`phasegate_gate_waiting_seconds{phase_id="${phaseId}",gate="review"}`));
    const metrics = (await callText(port, '/metrics', reviewerToken)).text;
    expect(metrics).toContain('phasegate_phases{status="AWAITING_REVIEW"} 1');
    expect(metrics).toContain(`phasegate_budget_approved_usd{phase_id="${phaseId}"} 1`);

    // A revoked token stops working at once.
    revokeToken(tokenStore, 'demo-reviewer');
    expect((await call(port, 'GET', `/phases/${phaseId}`, { token: reviewerToken })).status).toBe(401);
    expect((await call(port, 'POST', `/phases/${phaseId}/cancel`, { token: approverToken, body: {} })).status).toBe(200);
  });
  await new Promise<void>((r) => (http ? http.close(() => r()) : r()));
});
