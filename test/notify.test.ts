/**
 * The webhook sender on its own (no server): what each kind of target receives, the signature, that a retry skips
 * the targets an earlier attempt reached, and that an error names a target without its URL (errors enter history).
 */
import { createHmac } from 'node:crypto';
import { ApplicationFailure } from '@temporalio/common';
import { jsonMessage, sendNotification, SIGNATURE_HEADER, slackMessage } from '../activities/notify';
import type { NotifyConfig } from '../common/config';
import type { Notification } from '../workflows/definitions';
import { rejection } from './helpers/errors';

const config: NotifyConfig = { slackUrls: ['https://hooks.slack.example/services/SECRET-PATH'], jsonUrls: ['https://ops.example/hook'], secret: 'a-webhook-secret-of-length', consoleUrl: 'https://pg.example/console' };
const n: Notification = { key: 'p-1--20260101-gate-opened-budget-0-0', event: 'gate-opened', phaseId: 'p-1', phaseName: 'demo <b>&', status: 'AWAITING_BUDGET', gate: 'budget', message: 'the budget gate waits', at: '2026-01-01T00:00:00.000Z' };

interface Sent {
  url: string;
  headers: Record<string, string>;
  body: string;
}

function fakeFetch(sent: Sent[], failing: (url: string) => boolean): typeof fetch {
  return ((url: string, init: { headers: Record<string, string>; body: string }) => {
    sent.push({ url, headers: init.headers, body: init.body });
    return Promise.resolve(new Response('', { status: failing(url) ? 503 : 200 }));
  }) as unknown as typeof fetch;
}

test('a Slack message links to the phase page; the JSON body is signed over its timestamp and raw body', async () => {
  const sent: Sent[] = [];
  const recorded: string[][] = [];
  const r = await sendNotification(config, n, { delivered: [], record: (d) => recorded.push([...d]), fetch: fakeFetch(sent, () => false) });
  expect(r.delivered).toEqual(['slack#1', 'json#1']);
  expect(JSON.parse(sent[0]!.body)).toEqual(slackMessage(config, n));
  expect(slackMessage(config, n).text).toContain('<https://pg.example/console/phases/p-1|Open p-1 in the phasegate console>');
  expect(slackMessage(config, n).text).toContain('demo &lt;b&gt;&amp;');
  const json = sent[1]!;
  expect(JSON.parse(json.body)).toEqual(jsonMessage(config, n));
  expect(json.headers['idempotency-key']).toBe(n.key);
  const [, t, v1] = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(json.headers[SIGNATURE_HEADER]!)!;
  expect(v1).toBe(createHmac('sha256', config.secret!).update(`${t}.${json.body}`).digest('hex'));
  expect(recorded).toEqual([['slack#1'], ['slack#1', 'json#1']]);
});

test('a failing target fails the attempt without its URL; the retry posts only to the targets not yet reached', async () => {
  const sent: Sent[] = [];
  const err = await rejection(sendNotification(config, n, { delivered: [], record: () => undefined, fetch: fakeFetch(sent, (u) => u.includes('slack')) }), ApplicationFailure);
  expect(err.type).toBe('WebhookFailed');
  expect(err.message).toContain('slack#1: HTTP 503');
  expect(err.message).not.toContain('SECRET-PATH');
  const retry: Sent[] = [];
  await sendNotification(config, n, { delivered: ['json#1'], record: () => undefined, fetch: fakeFetch(retry, () => false) });
  expect(retry.map((s) => s.url)).toEqual([config.slackUrls[0]]);
});
