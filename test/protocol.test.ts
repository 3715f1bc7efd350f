/**
 * Protocol files: validation that names every bad field, bounds on every number and string, the lock (hash
 * over content, prompt files, pricing and people), and defensive reading: only regular files of bounded size,
 * named files only inside the protocol's folder, and no error that quotes a file's content.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { repoRoot } from '../common/config';
import { buildRunSpec } from '../activities/runtime-spec';
import { loadProtocol, ProtocolError } from '../protocols/load';
import { testRoster } from './helpers/decisions';
import { protocolFolder } from './helpers/temporal';

const protocolsDir = path.join(repoRoot, 'protocols');
const demo = JSON.parse(readFileSync(path.join(protocolsDir, 'demo.json'), 'utf8')) as Record<string, unknown>;


const roster = (): Record<string, string> => ({ 'demo-approver': testRoster()['demo-approver']!, 'demo-reviewer': testRoster()['demo-reviewer']! });

function write(protocol: Record<string, unknown>, dir = protocolFolder()): string {
  const file = path.join(dir, 'protocol.json');
  writeFileSync(file, JSON.stringify(protocol));
  return file;
}

function issues(protocol: Record<string, unknown> | string, dir?: string): string[] {
  try {
    if (typeof protocol === 'string') loadProtocol(protocol);
    else loadProtocol(write(protocol, dir));
  } catch (err) {
    if (err instanceof ProtocolError) return err.issues;
    throw err;
  }
  throw new Error('expected the protocol to be refused');
}

test('the shipped protocols load once their roster exists', () => {
  const dir = protocolFolder();
  copyFileSync(path.join(protocolsDir, 'phase1-tooling-parity.json'), path.join(dir, 'phase1.json'));
  expect(issues(path.join(dir, 'phase1.json'))).toEqual([expect.stringMatching(/^people: cannot read .*people\/phase1\.json: ENOENT/)]);
  writeFileSync(path.join(dir, 'people', 'phase1.json'), JSON.stringify({ sohail: testRoster()['demo-approver'], professor: testRoster()['demo-reviewer'] }));
  const phase1 = loadProtocol(path.join(dir, 'phase1.json'));
  expect(phase1.protocol.models.map((m) => [m.id, m.gpu])).toEqual([
    ['Qwen/Qwen2.5-7B-Instruct', 'A10G'],
    ['google/gemma-2-9b-it', 'A100-40GB'],
  ]);
  expect(phase1.protocol).toMatchObject({ repeats: 5, eval_prompt_count: 30, site: { layer: 15 }, steering: { alpha: 3 }, budget: { cap_usd: 15 }, separate_duties: true });
  expect(phase1.phaseId).toBe(`phase1-tooling-parity-${phase1.protocolHash.slice(0, 12)}`);
  expect(Object.keys(phase1.people).sort()).toEqual(['professor', 'sohail']);
  // Modal bills the GPU container's CPU and memory too: every second on Modal is priced with them, at their limits.
  expect(phase1.pricing.container).toEqual({ cpuCores: 4, memoryGib: 48, usdPerSecond: 0.00015896 });
  expect(phase1.pricing.usdPerSecond.A10G).toBe(0.00046496);
  copyFileSync(path.join(protocolsDir, 'demo.json'), path.join(dir, 'demo.json'));
  const demo = loadProtocol(path.join(dir, 'demo.json'));
  expect(demo.protocol.backend).toBe('local');
  expect(demo.pricing.container).toBeUndefined();
  expect(demo.pricing.usdPerSecond.cpu).toBe(0.0000262); // a local run pays no container
});

test('every invalid field is named with its path and the reason', () => {
  const bad = issues({
    ...demo,
    repeats: 0,
    methods: ['hooks', 'hooks'],
    models: [{ key: 'Bad Key', id: 'tiny:qwen2', gpu: 'A10G', expected_gpu_seconds: -1 }],
    budget: { cap_usd: 1, approvers: [] },
  });
  expect(bad).toEqual(
    expect.arrayContaining([
      expect.stringMatching(/^repeats: /),
      expect.stringMatching(/^methods: must not repeat a method/),
      expect.stringMatching(/^models\[0\]\.key: must be lowercase/),
      expect.stringMatching(/^models\[0\]\.expected_gpu_seconds: /),
      expect.stringMatching(/^budget\.approvers: must list at least one approver/),
    ]),
  );
});

test('one method alone is refused: parity compares methods', () => {
  expect(issues({ ...demo, methods: ['hooks'] })).toEqual(['methods: must list at least two methods (parity compares them)']);
});

test('numbers and strings that would jam or crash a phase are refused by their field', () => {
  const retry = (r: Record<string, number>) => issues({ ...demo, retry: { max_attempts: 3, initial_interval_seconds: 2, backoff_coefficient: 2, ...r } });
  expect(retry({ initial_interval_seconds: 1e-7 })).toEqual([expect.stringMatching(/^retry\.initial_interval_seconds: must be 0 or at least 0\.1/)]);
  expect(retry({ backoff_coefficient: 1e308 })).toEqual([expect.stringMatching(/^retry\.backoff_coefficient: /)]);
  const model = (m: Record<string, unknown>) => issues({ ...demo, models: [{ ...(demo.models as object[])[0], ...m }] });
  expect(model({ timeout_minutes: 1e21 / 60 })).toEqual([expect.stringMatching(/^models\[0\]\.timeout_minutes: must be at most 1440/)]);
  expect(model({ id: 'x'.repeat(201) })).toEqual([expect.stringMatching(/^models\[0\]\.id: must be at most 200 characters/)]);
  expect(issues({ ...demo, budget: { ...(demo.budget as object), deadline_hours: 1e-9 } })).toEqual([expect.stringMatching(/^budget\.deadline_hours: must be at least 0\.25/)]);
  expect(issues({ ...demo, title: 'x'.repeat(3_000) })).toEqual([expect.stringMatching(/^title: must be at most 200 characters/)]);
  expect(issues({ ...demo, steering: { alpha: 0 } })).toEqual([expect.stringMatching(/^steering\.alpha: must not be 0/)]);
  expect(issues({ ...demo, steering: { alpha: 3, min_changed_fraction: 1.5 } })).toEqual([expect.stringMatching(/^steering\.min_changed_fraction: must be at most 1/)]);
  expect(issues({ ...demo, budget: { ...(demo.budget as object), cap_usd: 1e308 } })).toEqual([expect.stringMatching(/^budget\.cap_usd: must be at most 1000000/)]);
  expect(issues({ ...demo, budget: { ...(demo.budget as object), cap_usd: 0.0000001 } })).toEqual([expect.stringMatching(/^budget\.cap_usd: must have at most 6 decimals/)]);
});

test('numerics: every switch is a named protocol field with a default, and an unknown switch is refused', () => {
  const numerics = (n: unknown) => issues({ ...demo, numerics: n });
  expect(numerics({ decoder: 'slow' })).toEqual([expect.stringMatching(/^numerics\.decoder: must be "fast" .* or "hf"/)]);
  expect(numerics({ fused_kernels: true })).toEqual([expect.stringMatching(/^numerics\.fused_kernels: must be "off", "exact" \(bit-exact pieces, CUDA only\), "auto" \(every piece, CUDA only\) or "on"/)]);
  expect(numerics({ cuda_graphs: 'false' })).toEqual([expect.stringMatching(/^numerics\.cuda_graphs: must be true or false/)]);
  expect(numerics({ grouped_eager: 0 })).toEqual([expect.stringMatching(/^numerics\.grouped_eager: must be true or false/)]);
  expect(numerics({ compile: true })).toEqual([expect.stringMatching(/^numerics: .*compile/)]);
  const dir = protocolFolder();
  const defaults = loadProtocol(write(demo, dir)).protocol;
  expect(defaults.numerics).toEqual({ decoder: 'fast', fused_kernels: 'exact', cuda_graphs: true, grouped_eager: true });
  expect(defaults.steering).toEqual({ alpha: 3, min_changed_fraction: 0.1 });
  expect(loadProtocol(write({ ...demo, numerics: { decoder: 'hf' } }, dir)).protocol.numerics).toEqual({ decoder: 'hf', fused_kernels: 'exact', cuda_graphs: true, grouped_eager: true });
});

test('the run spec (v2) carries min_changed_fraction and every numerics switch from the protocol', () => {
  const numerics = { decoder: 'hf', fused_kernels: 'off', cuda_graphs: false, grouped_eager: false } as const;
  const { protocol, phaseId } = loadProtocol(write({ ...demo, numerics, steering: { alpha: -2, min_changed_fraction: 0.3 } }));
  const spec = buildRunSpec({ phaseId, protocol, model: protocol.models[0]!, prompts: { harmful: ['h'], harmless: ['s'], eval: ['e'] }, cacheDir: '/tmp/cache' });
  expect(spec).toMatchObject({ spec_version: 2, steering: { alpha: -2, min_changed_fraction: 0.3 }, numerics });
});

test('people: every approver and reviewer needs a valid key, and separate duties must be possible', () => {
  const dir = protocolFolder();
  expect(issues({ ...demo, people: { 'demo-approver': 'ed25519:abc' } }, dir)).toEqual(
    expect.arrayContaining([expect.stringMatching(/^people\.demo-approver: must be an Ed25519 public key/)]),
  );
  expect(issues({ ...demo, people: { 'demo-approver': roster()['demo-approver'] } }, dir)).toEqual([expect.stringMatching(/^review\.reviewers\[0\]: "demo-reviewer" has no public key in people/)]);
  const sameKey = { 'demo-approver': roster()['demo-approver'], 'demo-reviewer': roster()['demo-approver'] };
  expect(issues({ ...demo, people: sameKey }, dir)).toEqual([expect.stringMatching(/^separate_duties: no approver and reviewer hold different keys/)]);
  expect(loadProtocol(write({ ...demo, people: sameKey, separate_duties: false }, dir)).protocol.separate_duties).toBe(false);
  expect(issues({ ...demo, people: 5 }, dir)).toEqual([expect.stringMatching(/^people: must be an object naming each person's public key/)]);
});

test('unknown fields, a truncated eval file and a GPU without a price are refused', () => {
  expect(issues({ ...demo, alpha: 3 })).toEqual([expect.stringMatching(/alpha/)]);
  expect(issues({ ...demo, eval_prompt_count: 30 })).toEqual([expect.stringMatching(/^prompts\.eval: the file holds 6 prompts, eval_prompt_count says 30/)]);
  expect(issues({ ...demo, models: [{ key: 'm', id: 'tiny:qwen2', gpu: 'A10G', expected_gpu_seconds: 1 }] })).toEqual([
    expect.stringMatching(/^models\[0\]\.gpu: the local backend runs on this machine's CPU/),
  ]);
  expect(issues({ ...demo, prompts: { harmful: 'prompts/nope.txt', harmless: 'prompts/harmless.txt', eval: 'prompts/demo-eval.txt' } })).toEqual([
    expect.stringMatching(/^prompts\.harmful: cannot read .*prompts\/nope\.txt: ENOENT/),
  ]);
  expect(issues({ ...demo, prompts: { harmful: 'prompts/harmful.txt', harmless: 'prompts/harmful.txt', eval: 'prompts/demo-eval.txt' } })).toEqual([
    expect.stringMatching(/^prompts\.harmless: the same content as prompts\.harmful/),
  ]);
});

describe('files are read defensively and never quoted', () => {
  const secret = 'root:$6$very-secret-hash:19000:0:99999:7:::';
  const outside = mkdtempSync(path.join(os.tmpdir(), 'phasegate-outside-'));
  writeFileSync(path.join(outside, 'shadow'), `${secret}\n${secret}\n`);
  writeFileSync(path.join(outside, 'token.json'), '"sk-abcdef"');

  test('a non-JSON protocol file: the error says where, not what', () => {
    const msg = issues(path.join(outside, 'shadow')).join('\n');
    expect(msg).toMatch(/^\(file\): not valid JSON/);
    expect(msg).not.toContain('root');
    expect(msg).not.toContain('secret');
  });

  test('files a protocol names must stay inside its folder: no absolute paths, no "..", no links out', () => {
    const dir = protocolFolder();
    const escape = (harmful: string) => issues({ ...demo, prompts: { harmful, harmless: 'prompts/harmless.txt', eval: 'prompts/demo-eval.txt' } }, dir);
    expect(escape(path.join(outside, 'shadow'))).toEqual([expect.stringMatching(/^prompts\.harmful: must be a path inside the protocol's folder/)]);
    expect(escape(`../${path.basename(outside)}/shadow`)).toEqual([expect.stringMatching(/^prompts\.harmful: must be a path inside/)]);
    symlinkSync(path.join(outside, 'shadow'), path.join(dir, 'prompts', 'link.txt'));
    expect(escape('prompts/link.txt')).toEqual([expect.stringMatching(/^prompts\.harmful: links outside the protocol's folder/)]);
    // The eval prompt count must not tell how many lines a file outside has.
    const count = issues({ ...demo, prompts: { harmful: 'prompts/harmful.txt', harmless: 'prompts/harmless.txt', eval: path.join(outside, 'shadow') } }, dir).join('\n');
    expect(count).not.toMatch(/holds \d+ prompts/);
  });

  test('a FIFO does not hang, /dev/zero does not fill memory, a large file is refused by size', () => {
    const dir = protocolFolder();
    execFileSync('mkfifo', [path.join(dir, 'prompts', 'fifo.txt')]);
    symlinkSync('/dev/zero', path.join(dir, 'prompts', 'zero.txt'));
    writeFileSync(path.join(dir, 'prompts', 'big.txt'), Buffer.alloc(17 * 1024 * 1024, 'a'));
    const harmful = (f: string) => issues({ ...demo, prompts: { harmful: f, harmless: 'prompts/harmless.txt', eval: 'prompts/demo-eval.txt' } }, dir);
    expect(harmful('prompts/fifo.txt')).toEqual([expect.stringMatching(/^prompts\.harmful: .*fifo\.txt is not a regular file/)]);
    expect(harmful('prompts/zero.txt')).toEqual([expect.stringMatching(/^prompts\.harmful: links outside the protocol's folder/)]);
    expect(harmful('prompts/big.txt')).toEqual([expect.stringMatching(/^prompts\.harmful: .*big\.txt is larger than 16777216 bytes/)]);
    expect(issues('/dev/zero')).toEqual([expect.stringMatching(/^\(file\): \/dev\/zero is not a regular file/)]);
  });

  test('with roots configured (the HTTP API), a protocol file outside them is refused unread', () => {
    const dir = protocolFolder();
    const file = write(demo, dir);
    expect(loadProtocol(file, { roots: [dir] }).phaseId).toMatch(/^demo-tooling-parity-/);
    expect(() => loadProtocol(path.join(outside, 'token.json'), { roots: [dir] })).toThrow(/not inside a configured protocol folder/);
    try {
      loadProtocol(path.join(outside, 'token.json'), { roots: [dir] });
    } catch (err) {
      expect((err as Error).message).not.toContain('sk-abcdef');
    }
  });
});

test('the lock: key order and written-out defaults do not change the hash; a prompt file, a numerics switch or a person\'s key does', () => {
  const dir = protocolFolder();
  const a = loadProtocol(write(demo, dir));
  const reordered = Object.fromEntries(Object.entries(demo).reverse());
  const b = loadProtocol(write(reordered, dir));
  expect(b.protocolHash).toBe(a.protocolHash);
  expect(b.phaseId).toBe(a.phaseId);

  const evalFile = path.join(dir, 'prompts', 'demo-eval.txt');
  writeFileSync(evalFile, readFileSync(evalFile, 'utf8').replace('France', 'Spain'));
  const c = loadProtocol(write(demo, dir));
  expect(c.protocolHash).not.toBe(a.protocolHash);
  expect(c.prompts.eval.sha256).not.toBe(a.prompts.eval.sha256);

  // Defaults are filled in before hashing: written out, they name the same phase; any switch changed does not.
  const numerics = { decoder: 'fast', fused_kernels: 'exact', cuda_graphs: true, grouped_eager: true };
  expect(loadProtocol(write({ ...demo, numerics, steering: { alpha: 3, min_changed_fraction: 0.1 } }, dir)).protocolHash).toBe(c.protocolHash);
  for (const changed of [{ decoder: 'hf' }, { fused_kernels: 'off' }, { fused_kernels: 'auto' }, { cuda_graphs: false }, { grouped_eager: false }]) {
    expect(loadProtocol(write({ ...demo, numerics: { ...numerics, ...changed } }, dir)).protocolHash).not.toBe(c.protocolHash);
  }
  expect(loadProtocol(write({ ...demo, steering: { alpha: 3, min_changed_fraction: 0.2 } }, dir)).protocolHash).not.toBe(c.protocolHash);

  writeFileSync(path.join(dir, 'people', 'demo.json'), JSON.stringify({ ...roster(), 'demo-reviewer': testRoster()['second-approver'] }));
  expect(loadProtocol(write(demo, dir)).protocolHash).not.toBe(c.protocolHash);
});
