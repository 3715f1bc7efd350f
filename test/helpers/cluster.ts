/**
 * The native cluster for tests (scripts/cluster/): binaries from build.sh's cache, a MinIO of their own for the
 * store's tests, and the whole production shape (PostgreSQL, the split Temporal services, MinIO) for the
 * cluster test.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { repoRoot } from '../../common/config';
import { freePort } from './temporal';

/** Where build.sh cached the binaries (it builds them the first time: minutes). */
export function clusterBinaries(): { TEMPORAL_BIN: string; MINIO_BIN: string; PG_BIN: string } {
  const out = execFileSync(path.join(repoRoot, 'scripts', 'cluster', 'build.sh'), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  return parseEnvFile(out) as ReturnType<typeof clusterBinaries>;
}

/** KEY=value lines (what build.sh prints and up.sh writes to cluster.env). */
export function parseEnvFile(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (m) out[m[1]!] = m[2]!;
  }
  return out;
}

export interface Minio {
  endpoint: string;
  credentials: { AWS_ACCESS_KEY_ID: string; AWS_SECRET_ACCESS_KEY: string };
  createBucket(name: string): void;
  stop(): Promise<void>;
}

/** A MinIO of one test file, on a free loopback port, with its data in a temporary folder. */
export async function startMinio(): Promise<Minio> {
  const { MINIO_BIN } = clusterBinaries();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'phasegate-minio-'));
  const port = await freePort();
  const consolePort = await freePort();
  const credentials = { AWS_ACCESS_KEY_ID: 'phasegate-test', AWS_SECRET_ACCESS_KEY: `secret-${process.pid}-${port}` };
  const child: ChildProcess = spawn(path.join(MINIO_BIN, 'minio'), ['server', dir, '--quiet', '--address', `127.0.0.1:${port}`, '--console-address', `127.0.0.1:${consolePort}`], {
    env: { PATH: process.env.PATH, HOME: dir, MINIO_ROOT_USER: credentials.AWS_ACCESS_KEY_ID, MINIO_ROOT_PASSWORD: credentials.AWS_SECRET_ACCESS_KEY, MINIO_BROWSER: 'off' },
    stdio: 'ignore',
  });
  const endpoint = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    const ready = await fetch(`${endpoint}/minio/health/ready`).then((r) => r.ok, () => false);
    if (ready) break;
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`MinIO did not start on ${endpoint}`);
    await new Promise((r) => setTimeout(r, 250));
  }
  return {
    endpoint,
    credentials,
    createBucket: (name) => {
      execFileSync('curl', ['-sf', '-X', 'PUT', '--aws-sigv4', 'aws:amz:us-east-1:s3', '--user', `${credentials.AWS_ACCESS_KEY_ID}:${credentials.AWS_SECRET_ACCESS_KEY}`, `${endpoint}/${name}`]);
    },
    stop: async () => {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface Cluster {
  dir: string;
  /** cluster.env: TEMPORAL_ADDRESS, the PHASEGATE_S3_* store and its credentials. */
  env: Record<string, string>;
  pid(process: string): number;
  down(): void;
}

/** scripts/cluster/up.sh in a fresh folder; down() stops it and deletes the folder. */
export function clusterUp(portBase: number): Cluster {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'phasegate-cluster-'));
  const script = (name: string): string => path.join(repoRoot, 'scripts', 'cluster', name);
  try {
    execFileSync(script('up.sh'), [dir], { env: { ...process.env, PORT_BASE: String(portBase) }, stdio: ['ignore', 'inherit', 'inherit'], timeout: 900_000 });
  } catch (err) {
    execFileSync(script('down.sh'), [dir, '--purge']);
    throw err;
  }
  return {
    dir,
    env: parseEnvFile(readFileSync(path.join(dir, 'cluster.env'), 'utf8')),
    pid: (name) => Number(readFileSync(path.join(dir, 'run', `${name}.pid`), 'utf8').trim()),
    down: () => {
      execFileSync(script('down.sh'), [dir, process.env.KEEP_CLUSTER === '1' ? '' : '--purge'].filter((a) => a !== ''));
    },
  };
}
