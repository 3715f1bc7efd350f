/**
 * `phasegate server`: the embedded stack in one foreground process. Starts the Temporal dev server (SQLite in the
 * state folder) unless TEMPORAL_ADDRESS points at a cluster, registers the search attributes, and runs the worker.
 * SIGINT/SIGTERM stop the worker (letting a running attempt stop cleanly) and then the server.
 */
import type { Client } from '@temporalio/client';
import { msToTs } from '@temporalio/common/lib/time';
import { NativeConnection } from '@temporalio/worker';
import path from 'node:path';
import { PhaseError } from '../client/errors';
import type { Logger } from 'pino';
import { connectClient, ensureSearchAttributes } from '../client/connection';
import { startHttpServer } from '../client/http';
import { artifactStoreFromEnv } from '../common/artifact-store';
import { notifyConfig, resolvePaths, type Env } from '../common/config';
import { connectionSettings } from '../common/temporal-connection';
import { startDevServer, type DevServer } from './dev-server';
import { forwardTemporalLogs } from './temporal-logging';
import { createPhaseWorker } from './worker';
import { modelRunQueue, preflightQueue } from '../workflows/definitions';

export async function runServer(env: Readonly<Env>, logger: Logger, options: { withDevServer: boolean }): Promise<void> {
  const paths = resolvePaths(env);
  const settings = connectionSettings(env);
  forwardTemporalLogs(logger, env.PHASEGATE_WORKER_METRICS_ADDRESS !== undefined ? { metricsAddress: env.PHASEGATE_WORKER_METRICS_ADDRESS } : {});
  if (env.PHASEGATE_WORKER_METRICS_ADDRESS !== undefined) process.stdout.write(`Temporal worker metrics: http://${env.PHASEGATE_WORKER_METRICS_ADDRESS}/metrics\n`);

  let devServer: DevServer | null = null;
  if (options.withDevServer && !settings.external) {
    logger.info({ stateDir: paths.stateDir }, 'starting the embedded Temporal dev server');
    devServer = await startDevServer({
      temporalBin: paths.temporalBin,
      stateDir: paths.stateDir,
      port: env.PHASEGATE_DEV_PORT,
      uiPort: env.PHASEGATE_UI_PORT,
      namespace: settings.namespace,
    });
    process.stdout.write(`Temporal dev server at ${devServer.address}, state in ${devServer.dbFile}\nTemporal UI: ${devServer.uiUrl}\n`);
  } else {
    process.stdout.write(`Using Temporal at ${settings.address} (namespace ${settings.namespace})\n`);
  }

  const client = await connectClient(settings);
  const added = await ensureSearchAttributes(client, settings.namespace);
  if (added.length > 0) logger.info({ added }, 'registered search attributes');
  // The embedded server's namespace keeps closed histories for an explicit time (the dev server's default is a
  // day); what must outlive any retention is in the phase records. A cluster's retention is its operator's.
  if (devServer !== null) await setRetention(client, settings.namespace, env.PHASEGATE_RETENTION_DAYS);
  // The HTTP API and the gate console, on this client. A port already taken stops the console, not the worker.
  const http = await startHttpServer(env, logger, client).catch((err: unknown) => {
    logger.error({ err: (err as Error).message }, 'the HTTP API and console are not served');
    return null;
  });

  const connection = await NativeConnection.connect({
    address: settings.address,
    ...(settings.tls !== undefined ? { tls: settings.tls } : {}),
    ...(settings.apiKey !== undefined ? { apiKey: settings.apiKey } : {}),
  });
  const store = artifactStoreFromEnv(env, paths.stateDir);
  const worker = await createPhaseWorker({
    connection,
    namespace: settings.namespace,
    taskQueue: env.PHASEGATE_TASK_QUEUE,
    paths,
    logger,
    store,
    modalPollSeconds: env.PHASEGATE_MODAL_POLL_SECONDS,
    modelRuns: env.PHASEGATE_MODEL_RUNS,
    preflights: env.PHASEGATE_PREFLIGHTS,
    notify: notifyConfig(env),
  });

  const stop = (signal: string): void => {
    logger.info({ signal }, 'stopping worker');
    // The SDK's runtime also shuts workers down on these signals; whichever comes second finds it stopping.
    if (worker.getState() === 'RUNNING') worker.shutdown();
  };
  process.once('SIGINT', () => stop('SIGINT'));
  process.once('SIGTERM', () => stop('SIGTERM'));
  // The embedded server dying under a running worker must not go unnoticed: stop the worker and exit non-zero.
  let serverDied: string | null = null;
  devServer?.process.once('exit', (code, signal) => {
    if (worker.getState() !== 'RUNNING') return;
    serverDied = `the embedded Temporal dev server exited unexpectedly (${code ?? signal}); see ${path.join(paths.stateDir, 'temporal-server.log')}`;
    logger.error(serverDied);
    worker.shutdown();
  });
  process.stdout.write(`phasegate worker on task queue "${env.PHASEGATE_TASK_QUEUE}" (model runs on "${modelRunQueue(env.PHASEGATE_TASK_QUEUE)}", ${env.PHASEGATE_MODEL_RUNS} at once; preflights on "${preflightQueue(env.PHASEGATE_TASK_QUEUE)}", ${env.PHASEGATE_PREFLIGHTS} at once); artifacts on ${store.location}; Ctrl-C stops it\n`);
  try {
    await worker.run();
  } finally {
    await http?.close();
    await client.connection.close();
    await connection.close();
    if (devServer !== null) {
      logger.info('stopping the Temporal dev server');
      await devServer.stop();
    }
  }
  if (serverDied !== null) throw new PhaseError('unavailable', `${serverDied as string}; the worker stopped. Start \`phasegate server\` again: phases resume from the same state`);
}

async function setRetention(client: Client, namespace: string, days: number): Promise<void> {
  await client.workflowService.updateNamespace({ namespace, config: { workflowExecutionRetentionTtl: msToTs(`${days} days`) } });
}
