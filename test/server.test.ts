/**
 * `phasegate server`, the embedded stack, as a process: it sets the namespace's retention explicitly, and when
 * its Temporal dev server dies it does not run on silently: it says so and exits non-zero.
 */
import { Connection } from '@temporalio/client';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { repoRoot } from '../common/config';
import { freePort } from './helpers/temporal';


test('sets retention explicitly, and exits non-zero, saying why, when its dev server dies', async () => {
  const stateDir = mkdtempSync(path.join(os.tmpdir(), 'phasegate-server-'));
  const [devPort, uiPort, httpPort] = [await freePort(), await freePort(), await freePort()];
  const env: NodeJS.ProcessEnv = { ...process.env, PHASEGATE_STATE_DIR: stateDir, PHASEGATE_DEV_PORT: String(devPort), PHASEGATE_UI_PORT: String(uiPort), PHASEGATE_HTTP_PORT: String(httpPort), PHASEGATE_RETENTION_DAYS: '45', LOG_FORMAT: 'json' };
  delete env.TEMPORAL_ADDRESS;
  const server = spawn(path.join(repoRoot, 'bin', 'phasegate'), ['server'], { env, cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  server.stdout.on('data', (d: Buffer) => (output += d.toString()));
  server.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => server.once('exit', (code) => resolve(code)));
  try {
    for (let i = 0; i < 120 && !output.includes('phasegate worker on task queue'); i++) await new Promise((r) => setTimeout(r, 500));
    expect(output).toContain('phasegate worker on task queue');

    const connection = await Connection.connect({ address: `127.0.0.1:${devPort}` });
    const ns = await connection.workflowService.describeNamespace({ namespace: 'default' });
    await connection.close();
    expect(Number(ns.config?.workflowExecutionRetentionTtl?.seconds)).toBe(45 * 86_400);

    // The dev server is the `temporal server start-dev` process holding this state folder's database.
    const pids = execFileSync('pgrep', ['-f', '--', `start-dev --db-filename ${path.join(stateDir, 'temporal.sqlite')}`], { encoding: 'utf8' }).trim().split('\n').map(Number).filter((p) => p !== server.pid);
    expect(pids.length).toBeGreaterThan(0);
    for (const pid of pids) process.kill(pid, 'SIGKILL');
    const code = await Promise.race([exited, new Promise<'still running'>((r) => setTimeout(() => r('still running'), 60_000))]);
    expect(code).toBe(1);
    expect(output).toMatch(/the embedded Temporal dev server exited unexpectedly/);
    expect(readFileSync(path.join(stateDir, 'temporal-server.log'), 'utf8')).toBeDefined();
  } finally {
    if (server.exitCode === null) server.kill('SIGKILL');
  }
}, 180_000);
