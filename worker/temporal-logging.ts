/**
 * Installs the Temporal SDK's runtime: its own logs (worker, workflow `log`, activity context logs) forwarded into
 * the pino root logger, and, when an address is given, its worker metrics (task slots, poll latencies, activity
 * and workflow task outcomes...) served for Prometheus at http://<address>/metrics.
 */
import { DefaultLogger, Runtime, type LogEntry } from '@temporalio/worker';
import type { Logger } from 'pino';

const levels = { TRACE: 'trace', DEBUG: 'debug', INFO: 'info', WARN: 'warn', ERROR: 'error' } as const;
let installed = false;

const sdkLevels: Record<string, 'TRACE' | 'DEBUG' | 'INFO' | 'WARN' | 'ERROR'> = { trace: 'TRACE', debug: 'DEBUG', info: 'INFO', warn: 'WARN', error: 'ERROR', fatal: 'ERROR', silent: 'ERROR' };

export function forwardTemporalLogs(logger: Logger, options: { metricsAddress?: string } = {}): void {
  if (installed) return; // The SDK runtime is process-wide and can be installed once.
  installed = true;
  const temporal = logger.child({ source: 'temporal' });
  Runtime.install({
    logger: new DefaultLogger(sdkLevels[logger.level] ?? 'INFO', (entry: LogEntry) => {
      // Metadata is the SDK's own (workflow id, activity type, ...), never an untrusted object.
      temporal[levels[entry.level]]({ ...entry.meta }, entry.message);
    }),
    ...(options.metricsAddress !== undefined ? { telemetryOptions: { metrics: { prometheus: { bindAddress: options.metricsAddress, countersTotalSuffix: true, useSecondsForDurations: true } } } } : {}),
  });
}
