/** One Temporal client per process, and the registration of phasegate's search attributes on a cluster. */
import { Client, Connection } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import type { ConnectionSettings } from '../common/temporal-connection';
import { searchAttributes } from '../workflows/definitions';

export async function connectClient(s: ConnectionSettings): Promise<Client> {
  const connection = await Connection.connect({
    address: s.address,
    ...(s.tls !== undefined ? { tls: s.tls } : {}),
    ...(s.apiKey !== undefined ? { apiKey: s.apiKey } : {}),
    connectTimeout: 5000,
  });
  return new Client({ connection, namespace: s.namespace });
}

/** Adds the search attributes this cluster lacks (idempotent); the dev server gets them as start flags instead. */
export async function ensureSearchAttributes(client: Client, namespace: string): Promise<string[]> {
  const existing = await client.connection.operatorService.listSearchAttributes({ namespace });
  const known = new Set(Object.keys(existing.customAttributes ?? {}));
  const missing = Object.values(searchAttributes).filter((k) => !known.has(k.name));
  if (missing.length === 0) return [];
  await client.connection.operatorService.addSearchAttributes({
    namespace,
    searchAttributes: Object.fromEntries(missing.map((k) => [k.name, temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD])),
  });
  return missing.map((k) => k.name);
}
