/** Protocol files: validation that names every bad field, and the lock (hash over content and prompt files). */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { repoRoot } from '../common/config';
import { loadProtocol, ProtocolError } from '../protocols/load';

const protocolsDir = path.join(repoRoot, 'protocols');
const demo = JSON.parse(readFileSync(path.join(protocolsDir, 'demo.json'), 'utf8')) as Record<string, unknown>;

/** Writes a protocol (prompt paths made absolute to the repository's files unless overridden) and returns its path. */
function write(protocol: Record<string, unknown>, dir = mkdtempSync(path.join(os.tmpdir(), 'phasegate-proto-'))): string {
  const abs = (p: string): string => (path.isAbsolute(p) ? p : path.join(protocolsDir, p));
  const prompts = protocol.prompts as Record<string, string>;
  const file = path.join(dir, 'protocol.json');
  writeFileSync(
    file,
    JSON.stringify({ ...protocol, prompts: { harmful: abs(prompts.harmful!), harmless: abs(prompts.harmless!), eval: abs(prompts.eval!) }, pricing: abs(protocol.pricing as string) }),
  );
  return file;
}

function issues(protocol: Record<string, unknown>): string[] {
  try {
    loadProtocol(write(protocol));
  } catch (err) {
    if (err instanceof ProtocolError) return err.issues;
    throw err;
  }
  throw new Error('expected the protocol to be refused');
}

test('the shipped protocols load', () => {
  const phase1 = loadProtocol(path.join(protocolsDir, 'phase1-tooling-parity.json'));
  expect(phase1.protocol.models.map((m) => [m.id, m.gpu])).toEqual([
    ['Qwen/Qwen2.5-7B-Instruct', 'A10G'],
    ['google/gemma-2-9b-it', 'A100-40GB'],
  ]);
  expect(phase1.protocol).toMatchObject({ repeats: 5, eval_prompt_count: 30, site: { layer: 15 }, steering: { alpha: 3 }, budget: { cap_usd: 15 } });
  expect(phase1.phaseId).toBe(`phase1-tooling-parity-${phase1.protocolHash.slice(0, 12)}`);
  expect(loadProtocol(path.join(protocolsDir, 'demo.json')).protocol.backend).toBe('local');
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

test('unknown fields, a truncated eval file and a GPU without a price are refused', () => {
  expect(issues({ ...demo, alpha: 3 })).toEqual([expect.stringMatching(/alpha/)]);
  expect(issues({ ...demo, eval_prompt_count: 30 })).toEqual([expect.stringMatching(/^prompts\.eval: .* holds 6 prompts, eval_prompt_count says 30/)]);
  expect(issues({ ...demo, models: [{ key: 'm', id: 'tiny:qwen2', gpu: 'A10G', expected_gpu_seconds: 1 }] })).toEqual([
    expect.stringMatching(/^models\[0\]\.gpu: the local backend runs on this machine's CPU/),
  ]);
  expect(issues({ ...demo, prompts: { harmful: '/nonexistent/h.txt', harmless: 'prompts/harmless.txt', eval: 'prompts/demo-eval.txt' } })).toEqual([
    expect.stringMatching(/^prompts\.harmful: cannot read \/nonexistent\/h\.txt: ENOENT/),
  ]);
});

test('the lock: key order does not change the hash, a prompt file edit does', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'phasegate-lock-'));
  const evalFile = path.join(dir, 'eval.txt');
  writeFileSync(evalFile, readFileSync(path.join(protocolsDir, 'prompts', 'demo-eval.txt')));
  const withEval = { ...demo, prompts: { ...(demo.prompts as object), eval: evalFile } };
  const a = loadProtocol(write(withEval, mkdtempSync(path.join(dir, 'a-'))));
  const reordered = Object.fromEntries(Object.entries(withEval).reverse());
  const b = loadProtocol(write(reordered, mkdtempSync(path.join(dir, 'b-'))));
  expect(b.protocolHash).toBe(a.protocolHash);
  expect(b.phaseId).toBe(a.phaseId);

  writeFileSync(evalFile, readFileSync(evalFile, 'utf8').replace('France', 'Spain'));
  const c = loadProtocol(write(withEval, mkdtempSync(path.join(dir, 'c-'))));
  expect(c.protocolHash).not.toBe(a.protocolHash);
  expect(c.prompts.eval.sha256).not.toBe(a.prompts.eval.sha256);
});
