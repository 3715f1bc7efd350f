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
  if (!LOOPBACK_HOSTS.includes(env.PHASEGATE_HTTP_HOST) && env.PHASEGATE_HTTP_TLS_CERT_PATH === undefined) {
    throw new ConfigError('invalid environment:\n  PHASEGATE_HTTP_HOST: a non-loopback address needs TLS (PHASEGATE_HTTP_TLS_CERT_PATH and PHASEGATE_HTTP_TLS_KEY_PATH)');
  }
  return Object.freeze(env);
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
