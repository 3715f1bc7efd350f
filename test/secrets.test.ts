/**
 * Secrets stay secret: the whole demo (the real embedded server, worker, runtime and CLI, as `make demo` runs
 * them) with fake Hugging Face, Modal and Temporal credentials in the environment. Afterwards no log line,
 * command output, artifact, report, runtime work file, SQLite database or exported workflow history holds any
 * of them. The search is checked to find what it should (the phase id), so a search that reads nothing fails.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, readdirSync, readFileSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { repoRoot } from '../common/config';
import { repoPaths, freePort, runProcess } from './helpers/temporal';

const SECRETS = {
  HF_TOKEN: 'hf_FAKESECRETtokenForLeakTest0001',
  MODAL_TOKEN_ID: 'ak-FAKESECRETmodalIdForLeakTest02',
  MODAL_TOKEN_SECRET: 'as-FAKESECRETmodalSecretLeakTest03',
  TEMPORAL_API_KEY: 'FAKESECRETtemporalApiKeyLeakTest04',
};



function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = path.join(dir, name);
    const st = statSync(p);
    return st.isDirectory() ? filesUnder(p) : st.isFile() ? [p] : [];
  });
}

test('a full demo run with fake HF, Modal and Temporal secrets leaks none of them anywhere', async () => {
  const stateDir = mkdtempSync(path.join(os.tmpdir(), 'phasegate-secrets-'));
  const [devPort, uiPort, httpPort] = [await freePort(), await freePort(), await freePort()];
  const env: NodeJS.ProcessEnv = { ...process.env, ...SECRETS, PHASEGATE_STATE_DIR: stateDir, PHASEGATE_DEV_PORT: String(devPort), PHASEGATE_UI_PORT: String(uiPort), PHASEGATE_HTTP_PORT: String(httpPort), LOG_FORMAT: 'json', LOG_LEVEL: 'debug' };
  delete env.TEMPORAL_ADDRESS;
  const serverLog = path.join(stateDir, 'phasegate-server.log');
  const server = spawn(path.join(repoRoot, 'bin', 'phasegate'), ['server'], { env, cwd: repoRoot, stdio: ['ignore', openSync(serverLog, 'a'), openSync(serverLog, 'a')] });
  try {
    const address = `127.0.0.1:${devPort}`;
    for (let i = 0; i < 120 && (await runProcess(path.join(repoRoot, 'bin', 'phasegate'), ['list'], env)).code !== 0; i++) await new Promise((r) => setTimeout(r, 1000));
    const demo = await runProcess(path.join(repoRoot, 'scripts', 'demo.sh'), [], env);
    expect(demo.out).toContain('signed decision(s) verified');
    expect(demo.code).toBe(0);
    const phaseId = /== closeout report: .*\/artifacts\/([a-z0-9-]+)\/closeout\.md/.exec(demo.out)?.[1];
    expect(phaseId).toBeDefined();

    // Every history on the server, exported as the Temporal CLI shows it (without the fake key: the CLI would use it).
    const cliEnv = { PATH: process.env.PATH, HOME: process.env.HOME };
    const listed = await runProcess(repoPaths.temporalBin, ['workflow', 'list', '--address', address, '--output', 'json'], cliEnv);
    const ids = [...new Set((JSON.parse(listed.out) as { execution: { workflowId: string } }[]).map((w) => w.execution.workflowId))];
    expect(ids).toContain(phaseId);
    const histories = await Promise.all(ids.map((id) => runProcess(repoPaths.temporalBin, ['workflow', 'show', '--workflow-id', id, '--address', address, '--output', 'json'], cliEnv)));
    const historyText = histories.map((h) => h.out).join('\n');
    expect(historyText).toContain(phaseId);

    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));

    const files = filesUnder(stateDir);
    // The search reads what matters: logs, the SQLite database, artifacts and the runtime's work files.
    for (const must of ['temporal.sqlite', 'phasegate-server.log', 'closeout.md', 'phase.json', 'result.json']) {
      expect(files.some((f) => path.basename(f) === must)).toBe(true);
    }
    expect(files.some((f) => f.endsWith('temporal.sqlite') && readFileSync(f).includes(phaseId!))).toBe(true);
    for (const [name, secret] of Object.entries(SECRETS)) {
      const leaks = [
        ...files.filter((f) => readFileSync(f).includes(secret)),
        ...(demo.out.includes(secret) ? ['demo output'] : []),
        ...(historyText.includes(secret) ? ['workflow histories'] : []),
      ];
      expect({ name, leaks }).toEqual({ name, leaks: [] });
    }
  } finally {
    if (server.exitCode === null) server.kill('SIGKILL');
  }
}, 420_000);
