/**
 * Connection settings for Temporal, from the environment: the embedded dev server by default, or an external
 * cluster when TEMPORAL_ADDRESS is set (with optional mTLS or API key).
 */
import { readFileSync } from 'node:fs';
import type { Env } from './config';

export interface ConnectionSettings {
  address: string;
  namespace: string;
  external: boolean;
  tls?: { clientCertPair?: { crt: Buffer; key: Buffer } } | boolean;
  apiKey?: string;
}

export function connectionSettings(env: Readonly<Env>): ConnectionSettings {
  const external = env.TEMPORAL_ADDRESS !== undefined;
  const settings: ConnectionSettings = {
    address: env.TEMPORAL_ADDRESS ?? `127.0.0.1:${env.PHASEGATE_DEV_PORT}`,
    namespace: env.TEMPORAL_NAMESPACE,
    external,
  };
  // TLS and the API key are for an external cluster; the embedded dev server listens on loopback without either.
  if (!external) return settings;
  if (env.TEMPORAL_TLS_CERT_PATH !== undefined && env.TEMPORAL_TLS_KEY_PATH !== undefined) {
    settings.tls = { clientCertPair: { crt: readFileSync(env.TEMPORAL_TLS_CERT_PATH), key: readFileSync(env.TEMPORAL_TLS_KEY_PATH) } };
  } else if (env.TEMPORAL_TLS || env.TEMPORAL_API_KEY !== undefined) {
    settings.tls = true;
  }
  if (env.TEMPORAL_API_KEY !== undefined) settings.apiKey = env.TEMPORAL_API_KEY;
  return settings;
}
