/**
 * The embedded Temporal: `temporal server start-dev` with SQLite persistence in the state folder. Starting it
 * again on the same folder reuses the persisted state, so phases started before a restart finish after it.
 */
import { Connection } from '@temporalio/client';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, openSync } from 'node:fs';
import path from 'node:path';
import { dieWithParent, plainEnv } from '../common/child-process';
import { searchAttributes } from '../workflows/definitions';

export interface DevServerOptions {
  temporalBin: string;
  stateDir: string;
  port: number;
  uiPort: number;
  namespace: string;
  /** Seconds to wait until the frontend answers. */
  startTimeoutSeconds?: number;
}

export interface DevServer {
  address: string;
  uiUrl: string;
  dbFile: string;
  process: ChildProcess;
  stop(): Promise<void>;
}

/** The project's search attributes as `start-dev --search-attribute` flags (the dev server registers them). */
export function searchAttributeFlags(): string[] {
  return Object.values(searchAttributes).flatMap((key) => ['--search-attribute', `${key.name}=Keyword`]);
}

export async function startDevServer(o: DevServerOptions): Promise<DevServer> {
  mkdirSync(o.stateDir, { recursive: true });
  const dbFile = path.join(o.stateDir, 'temporal.sqlite');
  const log = openSync(path.join(o.stateDir, 'temporal-server.log'), 'a');
  const args = [
    'server', 'start-dev',
    '--db-filename', dbFile,
    '--ip', '127.0.0.1',
    '--port', String(o.port),
    '--ui-port', String(o.uiPort),
    '--namespace', o.namespace,
    '--log-level', 'warn',
    ...searchAttributeFlags(),
  ];
  // A killed `phasegate server` must not leave the dev server holding the port and the SQLite file.
  const guarded = dieWithParent(o.temporalBin, args);
  // The dev server gets no credentials: it needs none, and what it never holds it cannot leak.
  const child = spawn(guarded.file, guarded.args, { stdio: ['ignore', log, log], env: plainEnv() });
  const address = `127.0.0.1:${o.port}`;
  const exited = new Promise<never>((_, reject) => {
    child.once('error', reject);
    child.once('exit', (code, signal) =>
      reject(new Error(`temporal dev server exited during start (${code ?? signal}); see ${path.join(o.stateDir, 'temporal-server.log')}`)),
    );
  });
  try {
    await Promise.race([waitHealthy(address, o.namespace, (o.startTimeoutSeconds ?? 60) * 1000), exited]);
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  exited.catch(() => undefined); // After start, an exit is reported by stop() and by the caller's connection.
  return {
    address,
    uiUrl: `http://127.0.0.1:${o.uiPort}`,
    dbFile,
    process: child,
    stop: () => stopProcess(child),
  };
}

async function waitHealthy(address: string, namespace: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const connection = await Connection.connect({ address, connectTimeout: 1000 });
      try {
        await connection.workflowService.describeNamespace({ namespace });
        return;
      } finally {
        await connection.close();
      }
    } catch (err) {
      last = err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  throw new Error(`temporal dev server at ${address} not healthy after ${timeoutMs / 1000}s: ${String(last)}`);
}

function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill('SIGTERM');
  });
}
