/**
 * Loads a protocol file: validates it (every issue reported with its path), locks its prompt files, pricing
 * table and roster of people by content, and derives the protocol hash and the phase id from them.
 *
 * Files are read defensively, because the HTTP API reads them on a caller's behalf: only regular files, only
 * up to a size limit, files a protocol names only inside the protocol's own folder, and no error message ever
 * quotes a file's content. `roots` (the HTTP API's configured protocol folders) limits where a protocol file
 * itself may be.
 */
import { closeSync, constants, fstatSync, openSync, readSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import type { LockedFile, LockedPrompts, PhaseInput, PricingSnapshot } from '../workflows/definitions';
import { phaseIdFor, protocolHashOf } from '../domain/lock';
import { pricingSchema, protocolSchema, rosterSchema, type Protocol } from './schema';

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
  /** Everyone who may decide, name -> `ed25519:` public key (from `people`, inline or a roster file). */
  people: Record<string, string>;
}

export interface LoadOptions {
  /** Folders a protocol file must be inside (after resolving links); undefined: anywhere the caller can read. */
  roots?: readonly string[];
}

/** Size limits, in bytes: a protocol travels in workflow history; prompt files are read by every GPU run. */
export const FILE_LIMITS = { protocol: 256 * 1024, roster: 256 * 1024, pricing: 256 * 1024, prompts: 16 * 1024 * 1024 } as const;

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

/** Why a file cannot be read, never what it holds. */
class FileRefused extends Error {}

const isInside = (dir: string, file: string): boolean => file === dir || file.startsWith(dir.endsWith(path.sep) ? dir : dir + path.sep);

/**
 * Reads a regular file of at most `limit` bytes as UTF-8. Opened non-blocking, so a FIFO cannot hang the caller;
 * checked with fstat on the open descriptor, so the file checked is the file read.
 */
export function readBoundedFile(file: string, limit: number): string {
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    throw new FileRefused(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new FileRefused(`${file} is not a regular file`);
    if (st.size > limit) throw new FileRefused(`${file} is larger than ${limit} bytes`);
    const buf = Buffer.alloc(st.size);
    let read = 0;
    while (read < st.size) {
      const n = readSync(fd, buf, read, st.size - read, read);
      if (n === 0) break;
      read += n;
    }
    return buf.subarray(0, read).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

function resolvedReal(file: string): string {
  try {
    return realpathSync(file);
  } catch (err) {
    throw new FileRefused(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

/** JSON.parse's own messages quote the text; this one says only where it broke. */
function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    const at = /position (\d+)/.exec((err as Error).message)?.[1];
    throw new FileRefused(`not valid JSON${at === undefined ? '' : ` (at byte ${at})`}`);
  }
}

function readProtocolFile(protocolPath: string, options: LoadOptions): unknown {
  try {
    if (options.roots !== undefined) {
      const real = resolvedReal(protocolPath);
      const roots = options.roots.map((r) => {
        try {
          return realpathSync(r);
        } catch {
          return path.resolve(r);
        }
      });
      if (!roots.some((r) => isInside(r, real))) throw new FileRefused(`not inside a configured protocol folder (${roots.join(', ')})`);
    }
    return parseJson(readBoundedFile(protocolPath, FILE_LIMITS.protocol));
  } catch (err) {
    if (err instanceof FileRefused) throw new ProtocolError(protocolPath, [`(file): ${err.message}`]);
    throw err;
  }
}

export function loadProtocol(file: string, options: LoadOptions = {}): LoadedProtocol {
  const protocolPath = path.resolve(file);
  const raw = readProtocolFile(protocolPath, options);
  const parsed = protocolSchema.safeParse(raw);
  if (!parsed.success) {
    throw new ProtocolError(
      protocolPath,
      parsed.error.issues.map((i) => `${formatIssuePath(i.path)}: ${i.message}`),
    );
  }
  const protocol = parsed.data;
  const dir = resolvedReal(path.dirname(protocolPath));
  const issues: string[] = [];

  /** A file the protocol names: relative to its folder, inside it, a regular file within the size limit. */
  const lockFile = (field: string, relative: string, limit: number): LockedFile & { text: string } => {
    const abs = path.resolve(dir, relative);
    try {
      if (path.isAbsolute(relative) || !isInside(dir, abs)) throw new FileRefused(`must be a path inside the protocol's folder, relative to it`);
      const real = resolvedReal(abs);
      if (!isInside(dir, real)) throw new FileRefused(`links outside the protocol's folder`);
      const text = readBoundedFile(real, limit);
      return { path: abs, sha256: sha256(text), text };
    } catch (err) {
      if (!(err instanceof FileRefused)) throw err;
      issues.push(`${field}: ${err.message}`);
      return { path: abs, sha256: '', text: '' };
    }
  };

  const harmful = lockFile('prompts.harmful', protocol.prompts.harmful, FILE_LIMITS.prompts);
  const harmless = lockFile('prompts.harmless', protocol.prompts.harmless, FILE_LIMITS.prompts);
  const evalPrompts = lockFile('prompts.eval', protocol.prompts.eval, FILE_LIMITS.prompts);
  for (const [field, f] of [['prompts.harmful', harmful], ['prompts.harmless', harmless]] as const) {
    if (f.sha256 !== '' && parsePromptLines(f.text).length === 0) issues.push(`${field}: the file holds no prompts`);
  }
  if (harmful.sha256 !== '' && harmful.sha256 === harmless.sha256) issues.push('prompts.harmless: the same content as prompts.harmful (the contrast would be zero)');
  const evalCount = parsePromptLines(evalPrompts.text).length;
  if (evalPrompts.sha256 !== '' && evalCount !== protocol.eval_prompt_count) {
    issues.push(`prompts.eval: the file holds ${evalCount} prompts, eval_prompt_count says ${protocol.eval_prompt_count}`);
  }

  const pricing = loadPricing(protocol, (relative) => lockFile('pricing', relative, FILE_LIMITS.pricing), issues);
  const people = loadPeople(protocol, (relative) => lockFile('people', relative, FILE_LIMITS.roster), issues);
  if (issues.length > 0 || pricing === null || people === null) throw new ProtocolError(protocolPath, issues);

  const prompts: LockedPrompts = {
    harmful: { path: harmful.path, sha256: harmful.sha256 },
    harmless: { path: harmless.path, sha256: harmless.sha256 },
    eval: { path: evalPrompts.path, sha256: evalPrompts.sha256 },
  };
  const protocolHash = protocolHashOf({
    protocol,
    promptSha256: { harmful: harmful.sha256, harmless: harmless.sha256, eval: evalPrompts.sha256 },
    pricing,
    people,
  });
  return Object.freeze({ protocol, protocolPath, protocolHash, phaseId: phaseIdFor(protocol.phase, protocolHash), prompts, pricing, people });
}

function loadPricing(protocol: Protocol, read: (relative: string) => { sha256: string; text: string }, issues: string[]): PricingSnapshot | null {
  const file = read(protocol.pricing);
  if (file.sha256 === '') return null;
  let json: unknown;
  try {
    json = parseJson(file.text);
  } catch (err) {
    issues.push(`pricing: ${(err as Error).message}`);
    return null;
  }
  const table = pricingSchema.safeParse(json);
  if (!table.success) {
    for (const i of table.error.issues) issues.push(`pricing(${protocol.pricing}).${formatIssuePath(i.path)}: ${i.message}`);
    return null;
  }
  protocol.models.forEach((m, i) => {
    if (table.data.usd_per_second[m.gpu] === undefined) issues.push(`models[${i}].gpu: "${m.gpu}" has no price in ${protocol.pricing}`);
  });
  const snapshot: PricingSnapshot = { source: table.data.source, readOn: table.data.read_on, usdPerSecond: table.data.usd_per_second, sha256: file.sha256 };
  const box = table.data.modal_container;
  if (protocol.backend === 'modal' && box !== undefined) {
    // Every second on Modal is priced with the container's CPU and memory at their limits (docs/modal.md).
    const extra = box.cpu_cores * box.usd_per_core_second + box.memory_gib * box.usd_per_gib_second;
    snapshot.usdPerSecond = Object.fromEntries(Object.entries(table.data.usd_per_second).map(([gpu, usd]) => [gpu, perSecond(usd + extra)]));
    snapshot.container = { cpuCores: box.cpu_cores, memoryGib: box.memory_gib, usdPerSecond: perSecond(extra) };
  }
  return snapshot;
}

/** A per-second rate, without the float noise of a sum (rates have more decimals than a ledger's micro-dollars). */
const perSecond = (usd: number): number => Math.round(usd * 1e12) / 1e12;

/** Resolves `people` (inline or a roster file) and checks that every approver and reviewer has a key. */
function loadPeople(protocol: Protocol, read: (relative: string) => { sha256: string; text: string }, issues: string[]): Record<string, string> | null {
  let json: unknown = protocol.people;
  let where = 'people';
  if (typeof protocol.people === 'string') {
    const file = read(protocol.people);
    if (file.sha256 === '') return null;
    try {
      json = parseJson(file.text);
    } catch (err) {
      issues.push(`people: ${(err as Error).message}`);
      return null;
    }
    where = `people(${protocol.people})`;
  }
  const roster = rosterSchema.safeParse(json);
  if (!roster.success) {
    for (const i of roster.error.issues) issues.push(`${where}${i.path.length > 0 ? `.${formatIssuePath(i.path)}` : ''}: ${i.message}`);
    return null;
  }
  const people = roster.data;
  const missing = (role: string, names: string[]): void =>
    names.forEach((name, i) => {
      if (people[name] === undefined) issues.push(`${role}[${i}]: "${name}" has no public key in people`);
    });
  const before = issues.length;
  missing('budget.approvers', protocol.budget.approvers);
  missing('review.reviewers', protocol.review.reviewers);
  if (protocol.separate_duties && issues.length === before) {
    const canSeparate = protocol.budget.approvers.some((a) => protocol.review.reviewers.some((r) => people[a] !== undefined && people[r] !== undefined && people[a] !== people[r]));
    if (!canSeparate) issues.push('separate_duties: no approver and reviewer hold different keys, so no phase could pass both gates (name another person, or set separate_duties to false)');
  }
  return people;
}

/** The start input a loaded protocol gives its phase (the caller adds reopen links, a carried ledger, ...). */
export function phaseInputOf(loaded: LoadedProtocol): PhaseInput {
  const { phaseId, protocol, protocolHash, protocolPath, prompts, pricing, people } = loaded;
  return { phaseId, protocol, protocolHash, protocolPath, prompts, pricing, people };
}
