/**
 * The runtime process runner's heartbeat (what the preflight and scoring activities pass in): it beats while the
 * real child process runs, so that a worker killed mid-step is noticed within the heartbeat timeout, and stops
 * once the process has exited.
 */
import path from 'node:path';
import { runRuntime } from '../activities/runtime-process';
import { repoRoot } from '../common/config';

const python = path.join(repoRoot, 'runtime', '.venv', 'bin', 'python');
const runtimeSrc = path.join(repoRoot, 'runtime', 'src');

test('heartbeats every few seconds while the process runs, none after it exits', async () => {
  const beats: number[] = [];
  // A Python process that lives at least 11 s: beats at 5 and 10 s (a third only if starting it took 4 s more).
  const exit = await runRuntime({ python, runtimeSrc, module: 'timeit', args: ['-n', '1', '-r', '1', 'import time; time.sleep(11)'], heartbeat: () => beats.push(Date.now()) });
  expect(exit.code).toBe(0);
  expect(beats.length).toBeGreaterThanOrEqual(2);
  const after = beats.length;
  await new Promise((r) => setTimeout(r, 6000));
  expect(beats).toHaveLength(after);
});
