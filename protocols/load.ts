/**
 * Loads a protocol file: validates it (every issue reported with its path), locks its prompt files and pricing
 * table by content hash, and derives the protocol hash and the phase id from them.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { LockedFile, LockedPrompts, PricingSnapshot } from '../workflows/definitions';
import { canonicalJson } from './canonical';
import { pricingSchema, protocolSchema, type Protocol } from './schema';

export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  constructor(
    readonly file: string,
    readonly issues: string[],
  ) {
    super(`invalid protocol ${file}:\n${issues.map((i) => `  ${i}`).join('\n')}`);
  }
}

export interface LoadedProtocol {
  protocol: Protocol;
  protocolPath: string;
  protocolHash: string;
  phaseId: string;
  prompts: LockedPrompts;
  pricing: PricingSnapshot;
}

export function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** A prompt file holds one prompt per line; blank lines and lines starting with '#' are ignored. */
export function parsePromptLines(text: string): string[] {
  return text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line.length > 0 && !line.startsWith('#'));
}

export function formatIssuePath(p: ReadonlyArray<PropertyKey>): string {
  return p.map((k) => (typeof k === 'number' ? `[${k}]` : `.${String(k)}`)).join('').replace(/^\./, '') || '(root)';
}

export function loadProtocol(file: string): LoadedProtocol {
  const protocolPath = path.resolve(file);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(protocolPath, 'utf8'));
  } catch (err) {
    throw new ProtocolError(protocolPath, [`(file): ${(err as Error).message}`]);
  }
  const parsed = protocolSchema.safeParse(raw);
  if (!parsed.success) {
    throw new ProtocolError(
      protocolPath,
      parsed.error.issues.map((i) => `${formatIssuePath(i.path)}: ${i.message}`),
    );
  }
  const protocol = parsed.data;
  const dir = path.dirname(protocolPath);
  const issues: string[] = [];

  const lockFile = (field: string, relative: string): LockedFile & { text: string } => {
    const abs = path.resolve(dir, relative);
    try {
      const text = readFileSync(abs, 'utf8');
      return { path: abs, sha256: sha256(text), text };
    } catch (err) {
      issues.push(`${field}: cannot read ${abs}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
      return { path: abs, sha256: '', text: '' };
    }
  };

  const harmful = lockFile('prompts.harmful', protocol.prompts.harmful);
  const harmless = lockFile('prompts.harmless', protocol.prompts.harmless);
  const evalPrompts = lockFile('prompts.eval', protocol.prompts.eval);
  for (const [field, f] of [['prompts.harmful', harmful], ['prompts.harmless', harmless]] as const) {
    if (f.sha256 !== '' && parsePromptLines(f.text).length === 0) issues.push(`${field}: ${f.path} holds no prompts`);
  }
  const evalCount = parsePromptLines(evalPrompts.text).length;
  if (evalPrompts.sha256 !== '' && evalCount !== protocol.eval_prompt_count) {
    issues.push(`prompts.eval: ${evalPrompts.path} holds ${evalCount} prompts, eval_prompt_count says ${protocol.eval_prompt_count}`);
  }

  const pricingFile = lockFile('pricing', protocol.pricing);
  let pricing: PricingSnapshot | null = null;
  if (pricingFile.sha256 !== '') {
    try {
      const table = pricingSchema.safeParse(JSON.parse(pricingFile.text));
      if (!table.success) {
        for (const i of table.error.issues) issues.push(`pricing(${pricingFile.path}).${formatIssuePath(i.path)}: ${i.message}`);
      } else {
        pricing = {
          source: table.data.source,
          readOn: table.data.read_on,
          usdPerSecond: table.data.usd_per_second,
          sha256: pricingFile.sha256,
        };
        protocol.models.forEach((m, i) => {
          if (table.data.usd_per_second[m.gpu] === undefined) {
            issues.push(`models[${i}].gpu: "${m.gpu}" has no price in ${pricingFile.path}`);
          }
        });
      }
    } catch (err) {
      issues.push(`pricing: ${pricingFile.path}: ${(err as Error).message}`);
    }
  }
  if (issues.length > 0 || pricing === null) throw new ProtocolError(protocolPath, issues);

  const prompts: LockedPrompts = {
    harmful: { path: harmful.path, sha256: harmful.sha256 },
    harmless: { path: harmless.path, sha256: harmless.sha256 },
    eval: { path: evalPrompts.path, sha256: evalPrompts.sha256 },
  };
  // The lock: the protocol as written (so an unchanged file keeps its hash across phasegate versions) plus the
  // content hashes of every file it names (so editing a prompt file makes a new phase).
  const protocolHash = sha256(
    canonicalJson({
      protocol: raw,
      files: {
        harmful: prompts.harmful.sha256,
        harmless: prompts.harmless.sha256,
        eval: prompts.eval.sha256,
        pricing: pricing.sha256,
      },
    }),
  );
  return Object.freeze({
    protocol,
    protocolPath,
    protocolHash,
    phaseId: phaseIdFor(protocol.phase, protocolHash),
    prompts,
    pricing,
  });
}

/** The workflow id of a phase: its name and protocol hash, so starting the same phase twice is idempotent. */
export function phaseIdFor(phase: string, protocolHash: string): string {
  return `${phase}-${protocolHash.slice(0, 12)}`;
}
