/**
 * A local webhook receiver, as a team's chat and incident tooling would run one: a Slack-compatible endpoint and
 * a generic JSON endpoint that checks each POST's HMAC signature and drops a delivery whose idempotency key it
 * has already seen. `/json-flaky` accepts a delivery but answers 500 the first time it sees a key, so the sender
 * retries and the duplicate must be dropped.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { SIGNATURE_HEADER } from '../../activities/notify';

export interface Delivery {
  path: string;
  key: string;
  body: Record<string, unknown>;
  signatureOk: boolean | null;
  duplicate: boolean;
}

export interface Receiver {
  url: string;
  deliveries: Delivery[];
  close: () => Promise<void>;
}

function signatureOk(secret: string, header: string | undefined, raw: string): boolean {
  const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(header ?? '');
  if (!m) return false;
  const expected = createHmac('sha256', secret).update(`${m[1]}.${raw}`).digest();
  return timingSafeEqual(expected, Buffer.from(m[2]!, 'hex'));
}

export async function webhookReceiver(secret: string): Promise<Receiver> {
  const deliveries: Delivery[] = [];
  const seen = new Set<string>();
  const server: Server = createServer((req, res) => {
    let raw = '';
    req.on('data', (c: Buffer) => (raw += c.toString()));
    req.on('end', () => {
      const key = String(req.headers['idempotency-key'] ?? '');
      const path = req.url ?? '';
      const dedupeKey = `${path}|${key}`;
      const duplicate = seen.has(dedupeKey);
      seen.add(dedupeKey);
      deliveries.push({ path, key, body: JSON.parse(raw) as Record<string, unknown>, signatureOk: path.startsWith('/json') ? signatureOk(secret, req.headers[SIGNATURE_HEADER] as string | undefined, raw) : null, duplicate });
      const failFirst = path === '/json-flaky' && !duplicate;
      res.writeHead(failFirst ? 500 : 200).end(failFirst ? 'try again' : 'ok');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    deliveries,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
