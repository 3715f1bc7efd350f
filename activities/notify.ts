/**
 * Sends one notification (workflows/notify.ts) to every configured webhook: a Slack-compatible incoming-webhook
 * message with a link to the phase's console page, and a generic JSON body signed with HMAC-SHA256.
 *
 * At least once: a target that fails makes the activity fail, and Temporal retries it; targets already reached
 * are remembered in the heartbeat details and skipped on the retry, and every delivery carries the idempotency
 * key (`Idempotency-Key` header, `idempotencyKey` field), so a receiver drops what it has already seen.
 * Errors name the target by kind and position, never by URL: a Slack URL is a secret, and errors enter history.
 *
 * Generic webhook signature: `X-Phasegate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
 */
import { createHmac } from 'node:crypto';
import { ApplicationFailure } from '@temporalio/common';
import type { NotifyConfig } from '../common/config';
import type { Notification } from '../workflows/definitions';

export const SIGNATURE_HEADER = 'x-phasegate-signature';

export function signBody(secret: string, body: string, unixSeconds: number): string {
  return `t=${unixSeconds},v1=${createHmac('sha256', secret).update(`${unixSeconds}.${body}`).digest('hex')}`;
}

const HEADLINES: Record<Notification['event'], (n: Notification) => string> = {
  'gate-opened': (n) => `${n.phaseName}: the ${n.gate ?? ''} gate waits for a decision`,
  reminder: (n) => `${n.phaseName}: the ${n.gate ?? ''} decision is overdue`,
  'budget-hold': (n) => `${n.phaseName}: on BUDGET_HOLD, needs a larger approval`,
  frozen: (n) => `${n.phaseName}: FROZEN`,
  failed: (n) => `${n.phaseName}: FAILED`,
};

export function phaseUrl(config: NotifyConfig, phaseId: string): string {
  return `${config.consoleUrl}/phases/${encodeURIComponent(phaseId)}`;
}

/** Slack's mrkdwn needs &, < and > escaped in text. */
const slackEscape = (text: string): string => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

export function slackMessage(config: NotifyConfig, n: Notification): { text: string } {
  return { text: `*${slackEscape(HEADLINES[n.event](n))}*\n${slackEscape(n.message.slice(0, 500))}\n<${phaseUrl(config, n.phaseId)}|Open ${slackEscape(n.phaseId)} in the phasegate console>` };
}

export function jsonMessage(config: NotifyConfig, n: Notification): Record<string, unknown> {
  return { idempotencyKey: n.key, event: n.event, phaseId: n.phaseId, phaseName: n.phaseName, status: n.status, gate: n.gate, message: n.message, at: n.at, url: phaseUrl(config, n.phaseId), headline: HEADLINES[n.event](n) };
}

interface Target {
  id: string;
  url: string;
  body: string;
  headers: Record<string, string>;
}

function targets(config: NotifyConfig, n: Notification, now: Date): Target[] {
  const slack = JSON.stringify(slackMessage(config, n));
  const json = JSON.stringify(jsonMessage(config, n));
  const t = Math.floor(now.getTime() / 1000);
  return [
    ...config.slackUrls.map((url, i) => ({ id: `slack#${i + 1}`, url, body: slack, headers: { 'idempotency-key': n.key } })),
    ...config.jsonUrls.map((url, i) => ({ id: `json#${i + 1}`, url, body: json, headers: { 'idempotency-key': n.key, [SIGNATURE_HEADER]: signBody(config.secret ?? '', json, t) } })),
  ];
}

export interface NotifyContext {
  /** Targets reached by an earlier attempt of this activity. */
  delivered: string[];
  /** Records the targets reached so far (a heartbeat), for the next attempt. */
  record: (delivered: string[]) => void;
  fetch?: typeof fetch;
}

export async function sendNotification(config: NotifyConfig, n: Notification, ctx: NotifyContext): Promise<{ delivered: string[] }> {
  const delivered = [...ctx.delivered];
  const failed: string[] = [];
  const post = ctx.fetch ?? fetch;
  for (const t of targets(config, n, new Date())) {
    if (delivered.includes(t.id)) continue;
    try {
      const res = await post(t.url, { method: 'POST', headers: { 'content-type': 'application/json', ...t.headers }, body: t.body, signal: AbortSignal.timeout(15_000), redirect: 'error' });
      await res.arrayBuffer().catch(() => undefined);
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      delivered.push(t.id);
      ctx.record(delivered);
    } catch (err) {
      failed.push(`${t.id}: ${err instanceof Error && /^HTTP \d+$/.test(err.message) ? err.message : 'unreachable'}`);
    }
  }
  if (failed.length > 0) throw ApplicationFailure.retryable(`webhook delivery of ${n.event} failed (${failed.join('; ')}); retried`, 'WebhookFailed');
  return { delivered };
}
