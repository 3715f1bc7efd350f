/**
 * The runtime's result, parsed at the boundary: the files its records name are what a worker uploads and a freeze
 * copies, and a result can come from a remote container, so a name that climbs out of the run's directions/ folder
 * (a worker's credentials, say) is refused before anything reads it (found by a review).
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseRuntimeResult, resultFiles } from '../activities/runtime-json';

const dir = mkdtempSync(path.join(os.tmpdir(), 'phasegate-result-'));
const unit = (method: string, repeat: number): Record<string, unknown> => ({
  method, repeat, ok: true, direction_file: `directions/${method}_r${repeat}.npy`, files: { [`directions/${method}_r${repeat}.npy`]: 'ab' },
});
function resultWith(change: (r: Record<string, unknown>) => void): string {
  const r: Record<string, unknown> = {
    result_version: 3, spec_hash: 'x', model_key: 'm', model: { id: 'tiny:llama', resolved_path: '/m' }, environment: {},
    baseline: { files: {} },
    reference: { direction_file: 'directions/reference.npy', files: { 'directions/reference.npy': 'cd' } },
    units: [unit('hooks', 0), unit('pyvene', 0)],
    native: [{ method: 'hooks', direction_file: 'directions/native_hooks_read.npy', files: { 'directions/native_hooks_read.npy': 'ef', 'directions/hooks_r0.npy': 'ab' } }],
  };
  change(r);
  const file = path.join(mkdtempSync(path.join(dir, 'r-')), 'result.json');
  writeFileSync(file, JSON.stringify(r));
  return file;
}

test('every file the records name, each once: the units, the reference and the native reads', () => {
  expect(resultFiles(parseRuntimeResult(resultWith(() => undefined)))).toEqual([
    'directions/hooks_r0.npy', 'directions/native_hooks_read.npy', 'directions/pyvene_r0.npy', 'directions/reference.npy',
  ]);
});

test.each([
  ['a files key that climbs out', (r: Record<string, unknown>) => ((r.reference as Record<string, unknown>).files = { '../../.aws/credentials': 'x' })],
  ['an absolute direction file', (r: Record<string, unknown>) => ((r.units as Record<string, unknown>[])[0]!.direction_file = '/etc/passwd')],
  ['a file outside directions/', (r: Record<string, unknown>) => ((r.native as Record<string, unknown>[])[0]!.files = { 'result.json': 'x' })],
])('a result naming %s is refused at the boundary', (_what, change) => {
  // zod names the field; for a record's key it says "Invalid key in record".
  expect(() => parseRuntimeResult(resultWith(change))).toThrow(/does not match runtime\/SPEC.md: .*(must name a \.npy file in the run's directions\/ folder|Invalid key in record)/);
});
