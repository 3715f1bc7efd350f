/**
 * Replay of recorded phase histories against the current workflow bundle: a change to the workflow that would
 * break phases already in flight (non-determinism) fails here. Record new histories with RECORD_HISTORIES=1.
 */
import { Worker } from '@temporalio/worker';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { bundle, quietTemporalRuntime } from './helpers/temporal';

const dir = path.join(__dirname, 'histories');
const files = readdirSync(dir).filter((f) => f.endsWith('.json'));

test('recorded histories exist', () => {
  expect(files.length).toBeGreaterThan(0);
});

test.each(files)('replays %s without non-determinism', async (file) => {
  quietTemporalRuntime();
  const history: unknown = JSON.parse(readFileSync(path.join(dir, file), 'utf8'));
  await Worker.runReplayHistory({ workflowBundle: await bundle() }, history, path.basename(file, '.json'));
});
