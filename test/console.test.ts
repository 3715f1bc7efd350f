/**
 * The gate console as its people use it: a real headless Chromium (Debian's `chromium`, driven by playwright-core;
 * nothing downloaded) on the real HTTP server, over a real dev server and worker running a phase on tiny models.
 * The approver and the reviewer each sign in with their own token and import their own key file into their own
 * browser; each decision is signed in the browser (WebCrypto Ed25519) and checked by the workflow. A decision
 * from the wrong person is refused, and the page shows the validator's reason. The phase reaches FROZEN on the
 * page without a reload; the report opens; `verify`'s answer is shown. A local webhook receiver checks every
 * notification (gate opened, frozen), its signature, and the de-duplication of a retried delivery.
 */
import { copyFileSync, existsSync, mkdtempSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { requestListener } from '../client/http';
import { getState, startPhase } from '../client/phases';
import { issueToken } from '../client/tokens';
import { repoRoot } from '../common/config';
import { testKeys } from './helpers/decisions';
import { freePort, quietLogger, serverPerFile, testProtocol, testWorker, waitFor } from './helpers/temporal';
import { webhookReceiver } from './helpers/webhooks';
import { signBody } from '../activities/notify';

const server = serverPerFile();
const CHROMIUM = process.env.PHASEGATE_CHROMIUM ?? '/usr/bin/chromium';

let browser: Browser;
beforeAll(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
});
afterAll(async () => {
  await browser?.close();
});

/** A person's own browser (its own sessionStorage and IndexedDB), signed in with their token. */
async function signedIn(base: string, token: string): Promise<Page> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(`${base}/console`);
  await page.fill('#token', token);
  await page.click('#login-form button');
  await page.waitForSelector('#phase-list table');
  return page;
}

async function importKey(page: Page, person: string): Promise<void> {
  await page.setInputFiles('#key-file', path.join(testKeys().dir, `${person}.key`));
  await page.waitForSelector(`#key-status:has-text("Key for ${person} loaded")`);
}

async function submitDecision(page: Page, kind: string, fields: Record<string, string>): Promise<string> {
  const form = `form.decision[data-kind="${kind}"]`;
  for (const [name, value] of Object.entries(fields)) {
    if (name === 'verdict') await page.selectOption(`${form} [name=verdict]`, value);
    else await page.fill(`${form} [name=${name}]`, value);
  }
  await page.click(`${form} button[type=submit]`);
  await page.waitForSelector('#decision-result.ok, #decision-result.refused', { timeout: 120_000 });
  return (await page.textContent('#decision-result')) ?? '';
}

test('approve and review from the page, signed in the browser; a wrong person is refused with the reason; the phase freezes on the page', async () => {
  // Notifications: Slack-compatible, signed JSON, a JSON receiver that fails once per key (so a retry must be
  // de-duplicated), and a dead webhook, which must not hold the phase.
  const secret = 'console-test-webhook-secret';
  const receiver = await webhookReceiver(secret);
  const consoleBase = 'http://console.example/console';
  const notify = { slackUrls: [`${receiver.url}/slack`], jsonUrls: [`${receiver.url}/json-flaky`, `http://127.0.0.1:${await freePort()}/dead`], secret, consoleUrl: consoleBase };
  const { worker, pc } = await testWorker(server, 'console', { notify });
  const loaded = testProtocol('console');
  const tokenStore = path.join(mkdtempSync(path.join(os.tmpdir(), 'phasegate-console-tokens-')), 'http-tokens.json');
  const tokens = { approver: issueToken(tokenStore, 'demo-approver'), reviewer: issueToken(tokenStore, 'demo-reviewer') };
  let http: Server | undefined;
  await worker.runUntil(async () => {
    http = createServer();
    await new Promise<void>((r) => http!.listen(0, '127.0.0.1', r));
    const port = (http.address() as AddressInfo).port;
    http.on('request', requestListener({ pc, allowedHosts: [`127.0.0.1:${port}`], protocolRoots: [path.dirname(loaded.protocolPath)], tokenStore }, quietLogger));
    const base = `http://127.0.0.1:${port}`;

    const { phaseId } = await startPhase(pc, loaded);
    await waitFor(async () => (await getState(pc, phaseId)).estimate !== null);

    // The approver's list: the phase waits for them.
    const approver = await signedIn(base, tokens.approver);
    await approver.check('#filter-mine');
    await approver.waitForSelector(`#phase-list a[href="/console/phases/${phaseId}"]`);
    expect(await approver.textContent('#phase-list')).toContain('waiting for demo-approver');
    await approver.selectOption('#filter-status', 'FROZEN');
    await approver.waitForSelector('#phase-list td.empty');
    await approver.selectOption('#filter-status', '');

    // The reviewer, on the same phase, tries to approve the budget: the workflow refuses, the page says why.
    const reviewer = await signedIn(base, tokens.reviewer);
    await reviewer.goto(`${base}/console/phases/${phaseId}`);
    await reviewer.waitForSelector('form.decision[data-kind="approve-budget"]');
    expect(await reviewer.textContent('#decide')).toContain('the phase will refuse your decision');
    await importKey(reviewer, 'demo-reviewer');
    const refused = await submitDecision(reviewer, 'approve-budget', { usd: '0.05', note: 'not mine to give' });
    expect(refused).toContain('approver "demo-reviewer" is not listed');
    expect((await getState(pc, phaseId)).budget.approvals).toHaveLength(0);

    // The approver opens the phase from the list, reads it, imports their key and approves.
    await approver.click(`#phase-list a[href="/console/phases/${phaseId}"]`);
    await approver.waitForSelector('#protocol');
    const page = (await approver.textContent('#phase-body')) ?? '';
    for (const fact of [loaded.protocol.title, loaded.protocolHash, 'tiny-qwen2', 'tiny:llama', 'Run plan', 'Estimate and its basis', 'cap']) expect(page).toContain(fact);
    await importKey(approver, 'demo-approver');
    expect(await submitDecision(approver, 'approve-budget', { usd: '0.05', note: 'from the console' })).toContain('accepted: the phase is AWAITING_REVIEW');
    await approver.waitForSelector('#gates .sig-ok');

    // The reviewer's page shows the review form without a reload; they review.
    await reviewer.waitForSelector('form.decision[data-kind="review"]', { timeout: 30_000 });
    expect(await submitDecision(reviewer, 'review', { verdict: 'ADVISED', ref: 'console-test', notes: 'tiny models only' })).toContain('accepted: the phase is RUNNING');

    // The approver's page follows the run to FROZEN by itself.
    await approver.waitForSelector('#phase-header [data-status="FROZEN"]', { timeout: 300_000 });
    await approver.waitForSelector('#verify.verify-ok');
    expect(await approver.textContent('#verify')).toContain('signed decision(s) verified');
    const gates = (await approver.textContent('#gates')) ?? '';
    expect(gates).toContain('approved $0.05');
    expect(gates).toContain('ADVISED');
    expect(gates.match(/signature verified/g)).toHaveLength(2);
    expect(await approver.textContent('#parity')).toContain('parity_pass');
    await waitFor(async () => (await approver.locator('#parity img[src^="blob:"]').count()) === 2);
    await approver.screenshot({ path: path.join(os.tmpdir(), `phasegate-console-${process.pid}.png`), fullPage: true });
    if (process.env.UPDATE_SCREENSHOT === '1') copyFileSync(path.join(os.tmpdir(), `phasegate-console-${process.pid}.png`), path.join(repoRoot, 'docs', 'console-phase.png'));

    await approver.click('#open-report');
    await approver.waitForSelector('#report:not([hidden]) .report h1');
    expect(await approver.textContent('#report')).toContain('Closeout');
    expect(existsSync(CHROMIUM)).toBe(true);

    // Each notification reached both live receivers; the JSON ones are signed; the retried one was dropped as a duplicate.
    const expected = ['gate-opened', 'gate-opened', 'frozen'];
    const flaky = (duplicate: boolean): number => receiver.deliveries.filter((d) => d.path === '/json-flaky' && d.duplicate === duplicate).length;
    await waitFor(async () => Promise.resolve(flaky(false) === expected.length && flaky(true) >= expected.length), 60_000);
    const json = receiver.deliveries.filter((d) => d.path === '/json-flaky');
    const unique = json.filter((d) => !d.duplicate);
    expect(unique.map((d) => d.body.event)).toEqual(expected);
    expect(unique.map((d) => d.body.gate)).toEqual(['budget', 'review', null]);
    expect(json.every((d) => d.signatureOk === true && d.key === d.body.idempotencyKey && d.body.phaseId === phaseId)).toBe(true);
    expect(json.filter((d) => d.duplicate).length).toBeGreaterThanOrEqual(expected.length);
    expect(new Set(unique.map((d) => d.key)).size).toBe(expected.length);
    const slack = receiver.deliveries.filter((d) => d.path === '/slack');
    expect(slack.filter((d) => !d.duplicate)).toHaveLength(expected.length);
    expect(slack.every((d) => !d.duplicate)).toBe(true);
    for (const d of slack) expect(String(d.body.text)).toContain(`<${consoleBase}/phases/${phaseId}|Open ${phaseId} in the phasegate console>`);
    expect(String(slack[2]!.body.text)).toContain('FROZEN');
    // A forged signature would not pass the receiver's check.
    expect(signBody('another-secret-entirely', JSON.stringify(unique[0]!.body), 1)).not.toBe(signBody(secret, JSON.stringify(unique[0]!.body), 1));
  });
  await receiver.close();
  await new Promise<void>((r) => (http ? http.close(() => r()) : r()));
}, 600_000);
