/**
 * The one root pino logger. JSON lines by default (machine-readable in CI and in log shippers), pretty on a
 * terminal. Context is added with `logger.child({ phaseId, model })`; secrets are redacted by path.
 */
import pino, { type Logger } from 'pino';

export const redactPaths = [
  'token',
  'apiKey',
  'secret',
  '*.token',
  '*.apiKey',
  '*.secret',
  '*.password',
  'env.MODAL_TOKEN_ID',
  'env.MODAL_TOKEN_SECRET',
  'env.TEMPORAL_API_KEY',
  'env.HF_TOKEN',
  'env.AWS_SECRET_ACCESS_KEY',
  'env.AWS_SESSION_TOKEN',
  'headers.authorization',
];

export interface LoggerOptions {
  level?: string;
  format?: 'json' | 'pretty' | 'auto';
  /** Where log lines go; defaults to stderr so that stdout stays for command output. */
  destination?: NodeJS.WritableStream;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const format = options.format ?? 'auto';
  const pretty = format === 'pretty' || (format === 'auto' && process.stderr.isTTY === true);
  const base = { level: options.level ?? 'info', redact: { paths: redactPaths, censor: '[redacted]' } };
  if (pretty && options.destination === undefined) {
    return pino({
      ...base,
      transport: { target: 'pino-pretty', options: { destination: 2, translateTime: 'SYS:HH:MM:ss' } },
    });
  }
  return pino(base, options.destination ?? pino.destination(2));
}
