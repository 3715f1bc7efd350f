/**
 * Environment configuration, parsed once by one zod schema. Every bad variable is reported with its name and
 * the reason; values are coerced explicitly (the string "false" is false, not a truthy string).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';

const booleanFromEnv = z
  .enum(['true', 'false', '1', '0', 'yes', 'no', ''])
  .transform((v) => v === 'true' || v === '1' || v === 'yes');

const portFromEnv = z.coerce.number().int().min(1).max(65535);

export const envSchema = z.object({
  /** When set, phasegate talks to this Temporal cluster and starts no dev server. */
  TEMPORAL_ADDRESS: z.string().min(1).optional(),
  TEMPORAL_NAMESPACE: z.string().min(1).default('default'),
  TEMPORAL_TLS: booleanFromEnv.default(false),
  TEMPORAL_TLS_CERT_PATH: z.string().min(1).optional(),
  TEMPORAL_TLS_KEY_PATH: z.string().min(1).optional(),
  TEMPORAL_API_KEY: z.string().min(1).optional(),
  PHASEGATE_TASK_QUEUE: z.string().min(1).default('phasegate'),
  /** State folder of the embedded server: SQLite database, artifacts, runtime work folders. */
  PHASEGATE_STATE_DIR: z.string().min(1).default('.phasegate'),
  PHASEGATE_DEV_PORT: portFromEnv.default(7233),
  PHASEGATE_UI_PORT: portFromEnv.default(8233),
  PHASEGATE_HTTP_PORT: portFromEnv.default(8787),
  /** Days the embedded server keeps a closed phase's history (phase records keep the rest for good). */
  PHASEGATE_RETENTION_DAYS: z.coerce.number().int().min(1).max(3650).default(30),
  /** Where the HTTP API listens: loopback unless TLS is configured. */
  PHASEGATE_HTTP_HOST: z.string().min(1).default('127.0.0.1'),
  /** Extra Host header values the HTTP API answers to (comma-separated), e.g. the name a proxy forwards. */
  PHASEGATE_HTTP_ALLOWED_HOSTS: z.string().default(''),
  PHASEGATE_HTTP_TLS_CERT_PATH: z.string().min(1).optional(),
  PHASEGATE_HTTP_TLS_KEY_PATH: z.string().min(1).optional(),
  /** Folders (colon-separated) the HTTP API may read protocol files from; default: the repository's protocols/. */
  PHASEGATE_PROTOCOL_ROOTS: z.string().min(1).optional(),
  /** Each person's private keys (the CLI signs decisions with them); default ~/.config/phasegate/keys. */
  PHASEGATE_KEYS_DIR: z.string().min(1).optional(),
  /** Seconds the Modal launcher waits on a remote call per poll (each poll is a heartbeat of progress). */
  PHASEGATE_MODAL_POLL_SECONDS: z.coerce.number().positive().default(30),
  /** Model runs a worker runs at once, on their own task queue (a runtime process or a Modal launcher each). */
  PHASEGATE_MODEL_RUNS: z.coerce.number().int().min(1).max(256).default(2),
  /** Preflights a worker runs at once, on their own task queue (a runtime process on its CPU each). */
  PHASEGATE_PREFLIGHTS: z.coerce.number().int().min(1).max(256).default(2),
  /** Slack-compatible incoming webhooks (comma-separated URLs) told when a gate opens or is overdue, a phase holds, freezes or fails. */
  PHASEGATE_SLACK_WEBHOOK_URLS: z.string().default(''),
  /** Generic JSON webhooks (comma-separated URLs) told the same, each POST signed with PHASEGATE_WEBHOOK_SECRET. */
  PHASEGATE_WEBHOOK_URLS: z.string().default(''),
  /** The HMAC-SHA256 key of the generic webhooks' X-Phasegate-Signature header (at least 16 characters). */
  PHASEGATE_WEBHOOK_SECRET: z.string().min(16, 'must be at least 16 characters').optional(),
  /** The console's address as people reach it, for links in notifications; default http://127.0.0.1:<HTTP port>/console. */
  PHASEGATE_CONSOLE_URL: z.url({ protocol: /^https?$/ }).optional(),
  /** Where the worker serves the Temporal SDK's own Prometheus metrics (host:port); unset: not served. */
  PHASEGATE_WORKER_METRICS_ADDRESS: z.string().regex(/^[0-9a-zA-Z.:[\]-]+:[0-9]{1,5}$/, 'must be host:port').optional(),
  /**
   * Where activities leave files for each other, frozen artifacts and phase records (common/artifact-store.ts):
   * `local` (this host's state folder; the embedded default) or `s3` (an S3-compatible bucket every worker
   * reaches: workers on several hosts). With `s3`, credentials come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.
   */
  PHASEGATE_ARTIFACT_STORE: z.enum(['local', 's3']).default('local'),
  /** An S3-compatible endpoint (e.g. MinIO's http://127.0.0.1:9000); unset for AWS S3 itself. */
  PHASEGATE_S3_ENDPOINT: z.url({ protocol: /^https?$/ }).optional(),
  PHASEGATE_S3_BUCKET: z
    .string()
    .regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'an S3 bucket name: 3-63 lower-case letters, digits, dots, hyphens')
    .optional(),
  /** A key prefix inside the bucket (several deployments may share one bucket). */
  PHASEGATE_S3_PREFIX: z
    .string()
    .regex(/^([A-Za-z0-9][A-Za-z0-9._-]*(\/[A-Za-z0-9][A-Za-z0-9._-]*)*)?$/, 'path segments without leading or trailing slashes')
    .default(''),
  PHASEGATE_S3_REGION: z.string().min(1).default('us-east-1'),
  /** Path-style URLs (host/bucket/key), which MinIO and most S3-compatible servers need. */
  PHASEGATE_S3_FORCE_PATH_STYLE: booleanFromEnv.default(true),
  PHASEGATE_TEMPORAL_BIN: z.string().min(1).optional(),
  PHASEGATE_PYTHON: z.string().min(1).optional(),
  LOG_LEVEL: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  LOG_FORMAT: z.enum(['json', 'pretty', 'auto']).default('auto'),
});

export type Env = z.infer<typeof envSchema>;

export const LOOPBACK_HOSTS = ['127.0.0.1', 'localhost', '::1'];

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

/** Parses the environment; throws a ConfigError listing every bad variable. */
export function parseEnv(source: NodeJS.ProcessEnv = process.env): Readonly<Env> {
  const result = envSchema.safeParse(source);
  if (!result.success) {
    const lines = result.error.issues.map((issue) => `  ${issue.path.join('.')}: ${issue.message}`);
    throw new ConfigError(`invalid environment:\n${lines.join('\n')}`);
  }
  const env = result.data;
  if ((env.TEMPORAL_TLS_CERT_PATH === undefined) !== (env.TEMPORAL_TLS_KEY_PATH === undefined)) {
    throw new ConfigError('invalid environment:\n  TEMPORAL_TLS_CERT_PATH/TEMPORAL_TLS_KEY_PATH: set both or neither');
  }
  if ((env.PHASEGATE_HTTP_TLS_CERT_PATH === undefined) !== (env.PHASEGATE_HTTP_TLS_KEY_PATH === undefined)) {
    throw new ConfigError('invalid environment:\n  PHASEGATE_HTTP_TLS_CERT_PATH/PHASEGATE_HTTP_TLS_KEY_PATH: set both or neither');
  }
  if (env.PHASEGATE_ARTIFACT_STORE === 's3' && env.PHASEGATE_S3_BUCKET === undefined) {
    throw new ConfigError('invalid environment:\n  PHASEGATE_S3_BUCKET: required when PHASEGATE_ARTIFACT_STORE is s3');
  }
  if (!LOOPBACK_HOSTS.includes(env.PHASEGATE_HTTP_HOST) && env.PHASEGATE_HTTP_TLS_CERT_PATH === undefined) {
    throw new ConfigError('invalid environment:\n  PHASEGATE_HTTP_HOST: a non-loopback address needs TLS (PHASEGATE_HTTP_TLS_CERT_PATH and PHASEGATE_HTTP_TLS_KEY_PATH)');
  }
  if (env.PHASEGATE_WEBHOOK_URLS.trim() !== '' && env.PHASEGATE_WEBHOOK_SECRET === undefined) {
    throw new ConfigError('invalid environment:\n  PHASEGATE_WEBHOOK_SECRET: required when PHASEGATE_WEBHOOK_URLS is set (receivers check each POST with it)');
  }
  for (const name of ['PHASEGATE_SLACK_WEBHOOK_URLS', 'PHASEGATE_WEBHOOK_URLS'] as const) {
    const bad = urlList(env[name]).find((u) => !/^https?:\/\/[^\s]+$/.test(u));
    if (bad !== undefined) throw new ConfigError(`invalid environment:\n  ${name}: every entry must be an http(s) URL`);
  }
  return Object.freeze(env);
}

const urlList = (text: string): string[] => text.split(',').map((u) => u.trim()).filter(Boolean);

/** Where notifications go and how they are signed and linked (activities/notify.ts). */
export interface NotifyConfig {
  slackUrls: string[];
  jsonUrls: string[];
  secret: string | null;
  consoleUrl: string;
}

export function notifyConfig(env: Readonly<Env>): NotifyConfig {
  return {
    slackUrls: urlList(env.PHASEGATE_SLACK_WEBHOOK_URLS),
    jsonUrls: urlList(env.PHASEGATE_WEBHOOK_URLS),
    secret: env.PHASEGATE_WEBHOOK_SECRET ?? null,
    consoleUrl: (env.PHASEGATE_CONSOLE_URL ?? `http://127.0.0.1:${env.PHASEGATE_HTTP_PORT}/console`).replace(/\/+$/, ''),
  };
}

/**
 * The repository root: everything (protocols, runtime, state) is resolved from here. Source files live one
 * folder below it and compiled files two (lib/common), so look for the folder that holds the runtime.
 */
export const repoRoot = findRepoRoot(__dirname);

function findRepoRoot(start: string): string {
  for (let dir = start; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, 'runtime', 'pyproject.toml')) && existsSync(path.join(dir, 'package.json'))) {
      return dir;
    }
  }
  throw new ConfigError(`cannot find the phasegate repository root above ${start}`);
}

export interface Paths {
  stateDir: string;
  artifactsDir: string;
  workDir: string;
  /** The phase records (common/phase-records.ts): what outlives Temporal's retention. */
  recordsDir: string;
  temporalBin: string;
  testServerBin: string;
  python: string;
  runtimeSrc: string;
}

export function resolvePaths(env: Readonly<Env>): Paths {
  const stateDir = path.resolve(repoRoot, env.PHASEGATE_STATE_DIR);
  const venvBin = path.join(repoRoot, 'runtime', '.venv', 'bin');
  return {
    stateDir,
    artifactsDir: path.join(stateDir, 'artifacts'),
    workDir: path.join(stateDir, 'work'),
    recordsDir: path.join(stateDir, 'records'),
    temporalBin: env.PHASEGATE_TEMPORAL_BIN ?? path.join(venvBin, 'temporal'),
    testServerBin: path.join(venvBin, 'temporal-test-server'),
    python: env.PHASEGATE_PYTHON ?? path.join(venvBin, 'python'),
    runtimeSrc: path.join(repoRoot, 'runtime', 'src'),
  };
}
