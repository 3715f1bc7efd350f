/**
 * There is no Docker engine on the development machine, so docker-compose.yml is checked for structure only (the
 * native cluster test, test/cluster/, runs the same topology for real): the plain Temporal server behind one-shot
 * schema and namespace jobs, MinIO as the artifact store, workers that point at both with variables the config
 * schema knows, and a stop grace period longer than the worker's own shutdown grace.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { envSchema, repoRoot } from '../common/config';
import { searchAttributes } from '../workflows/definitions';
import { WORKER_SHUTDOWN_GRACE_SECONDS } from '../worker/worker';

interface Service {
  image?: string;
  build?: string;
  command?: string[] | string;
  environment?: Record<string, string>;
  depends_on?: Record<string, { condition: string }>;
  stop_grace_period?: string;
  restart?: string;
}

// Compose applies YAML merge keys (<<), as does this parse.
const compose = parse(readFileSync(path.join(repoRoot, 'docker-compose.yml'), 'utf8'), { merge: true }) as { services: Record<string, Service> };
const services = compose.services;
const script = (s: Service | undefined): string => [s?.command ?? []].flat().join('\n');

test('the plain Temporal server on PostgreSQL, after a schema job, with no auto-setup image', () => {
  expect(Object.keys(services).sort()).toEqual(['minio', 'minio-bucket', 'phasegate-worker', 'postgresql', 'temporal', 'temporal-namespace', 'temporal-schema', 'temporal-ui']);
  for (const s of Object.values(services)) expect(s.image ?? '').not.toMatch(/auto-setup/);
  expect(services.temporal?.image).toMatch(/^temporalio\/server:/);
  expect(services.temporal?.environment?.DB).toBe('postgres12');
  expect(services.temporal?.depends_on?.['temporal-schema']?.condition).toBe('service_completed_successfully');
  expect(services['temporal-schema']?.image).toMatch(/^temporalio\/admin-tools:/);
  expect(services['temporal-schema']?.depends_on?.postgresql?.condition).toBe('service_healthy');
  expect(script(services['temporal-schema'])).toMatch(/temporal-sql-tool[\s\S]*setup-schema[\s\S]*update-schema/);
});

test('a namespace job creates the namespace with an explicit retention and every search attribute phasegate uses', () => {
  const job = services['temporal-namespace'];
  expect(job?.image).toMatch(/^temporalio\/admin-tools:/);
  expect(script(job)).toMatch(/namespace create -n "\$\$NAMESPACE" --retention "\$\$RETENTION"/);
  expect(job?.environment?.RETENTION).toMatch(/^\$\{TEMPORAL_RETENTION:-\d+h\}$/);
  for (const key of Object.values(searchAttributes)) expect(script(job)).toContain(key.name);
  expect(services['temporal-ui']?.environment?.TEMPORAL_ADDRESS).toBe('temporal:7233');
});

test('workers share MinIO as the artifact store and outlast their shutdown grace, with variables the schema accepts', () => {
  const worker = services['phasegate-worker']!;
  expect(worker.command).toEqual(['bin/phasegate', 'worker']);
  expect(worker.environment?.TEMPORAL_ADDRESS).toBe('temporal:7233');
  expect(worker.environment?.PHASEGATE_ARTIFACT_STORE).toBe('s3');
  expect(worker.environment?.PHASEGATE_S3_ENDPOINT).toBe('http://minio:9000');
  expect(worker.depends_on?.['temporal-namespace']?.condition).toBe('service_completed_successfully');
  expect(worker.depends_on?.['minio-bucket']?.condition).toBe('service_completed_successfully');
  expect(Number(/^(\d+)s$/.exec(worker.stop_grace_period ?? '')?.[1])).toBeGreaterThan(WORKER_SHUTDOWN_GRACE_SECONDS);
  const known = new Set([...Object.keys(envSchema.shape), 'MODAL_TOKEN_ID', 'MODAL_TOKEN_SECRET', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY']);
  for (const name of Object.keys(worker.environment ?? {})) expect(known).toContain(name);
});

test('the worker image runs as a non-root user and installs no torch', () => {
  const dockerfile = readFileSync(path.join(repoRoot, 'Dockerfile'), 'utf8');
  const finalStage = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
  expect(finalStage).toMatch(/^USER node$/m);
  expect(dockerfile).toMatch(/--prune torch/);
  expect(finalStage).not.toMatch(/setup\.sh|uv sync/);
});
