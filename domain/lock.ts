/**
 * The protocol lock: the hash that names a phase. Computed by the loader when a phase starts and recomputed by
 * the workflow from its own input, so a start input that claims a phase id or hash it does not carry (another
 * roster, a cheaper price table, a raised cap) is refused before any gate opens.
 *
 * Part of the workflow bundle: pure, no Node.
 */
import { sha256 } from '@noble/hashes/sha2';
import { canonicalJson } from './canonical';
import { toHex, utf8Bytes } from './encoding';

export interface LockInputs {
  /** The protocol as validated (defaults filled in), so the same meaning always gives the same hash. */
  protocol: unknown;
  /** sha256 of each prompt file's bytes. */
  promptSha256: { harmful: string; harmless: string; eval: string };
  /** The pricing table's content, as the workflow uses it. */
  pricing: { source: string; readOn: string; usdPerSecond: Record<string, number> };
  /** Everyone who may decide, name -> `ed25519:` public key, whether written inline or in a roster file. */
  people: Record<string, string>;
}

export const LOCK_VERSION = 2;

export function protocolHashOf(l: LockInputs): string {
  const locked = {
    lock_version: LOCK_VERSION,
    protocol: l.protocol,
    files: l.promptSha256,
    pricing: { source: l.pricing.source, read_on: l.pricing.readOn, usd_per_second: l.pricing.usdPerSecond },
    people: l.people,
  };
  return toHex(sha256(utf8Bytes(canonicalJson(locked))));
}

/** The workflow id of a phase: its name and protocol hash, so starting the same phase twice is idempotent. */
export function phaseIdFor(phase: string, protocolHash: string): string {
  return `${phase}-${protocolHash.slice(0, 12)}`;
}

/** A reopened phase: the frozen phase's id, `-reopen-`, and 8 hex digits of its defect's hash. */
export function isReopenIdOf(phaseId: string, frozenPhaseId: string): boolean {
  const prefix = `${frozenPhaseId}-reopen-`;
  return phaseId.startsWith(prefix) && /^[0-9a-f]{8}$/.test(phaseId.slice(prefix.length));
}

/** A phase name as the protocol schema allows it (checked again in the workflow, which cannot run the schema). */
export const PHASE_NAME = /^[a-z0-9][a-z0-9-]{0,62}$/;
