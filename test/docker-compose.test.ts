/**
 * There is no Docker engine on the development machine, so docker-compose.yml is checked for structure only:
 * the services exist, the worker points at the cluster instead of starting a dev server, and every variable
 * the worker reads is one the environment schema knows.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { envSchema, repoRoot } from '../common/config';

interface Service {
  image?: string;
  build?: string;
  command?: string[];
  environment?: Record<string, string>;
  depends_on?: Record<string, { condition: string }>;
}

// Compose applies YAML merge keys (<<), as does this parse.
const compose = parse(readFileSync(path.join(repoRoot, 'docker-compose.yml'), 'utf8'), { merge: true }) as { services: Record<string, Service> };

test('defines Temporal on PostgreSQL, the UI and the phasegate worker', () => {
  expect(Object.keys(compose.services).sort()).toEqual(['phasegate-worker', 'postgresql', 'temporal', 'temporal-ui']);
  expect(compose.services.temporal?.environment?.DB).toBe('postgres12');
  expect(compose.services.temporal?.depends_on?.postgresql?.condition).toBe('service_healthy');
  expect(compose.services['temporal-ui']?.environment?.TEMPORAL_ADDRESS).toBe('temporal:7233');
});

test('the worker runs `phasegate worker` against the cluster with variables the config schema accepts', () => {
  const worker = compose.services['phasegate-worker']!;
  expect(worker.command).toEqual(['bin/phasegate', 'worker']);
  expect(worker.environment?.TEMPORAL_ADDRESS).toBe('temporal:7233');
  const known = new Set([...Object.keys(envSchema.shape), 'MODAL_TOKEN_ID', 'MODAL_TOKEN_SECRET']);
  for (const name of Object.keys(worker.environment ?? {})) expect(known).toContain(name);
});
