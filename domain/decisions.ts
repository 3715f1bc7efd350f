/**
 * Signed gate decisions: the one definition of what a person signs, how it is checked, and the bounds on every
 * field. The CLI signs with the person's Ed25519 key; the workflow's update validators, `verify` and the tests
 * check with the same code, a pure-JS Ed25519 (@noble/curves) that runs inside Temporal's workflow sandbox.
 *
 * What is signed: the bytes of `DECISION_DOMAIN` + canonical JSON of { v, kind, phaseId, protocolHash, run, by,
 * content, nonce, signedAt }. Binding phase id and protocol hash means a signature for one phase (or an earlier
 * protocol version) is worthless in another; binding the run (the id of the first Temporal run of the phase's
 * chain, which continue-as-new keeps and a restart replaces) means a decision given to a run that was cancelled or
 * failed is worthless to the phase started again under the same id; the nonce makes each signed decision unique.
 * Version 1 decisions (no run) are still read and verified in records; gates accept version 2 only.
 *
 * Part of the workflow bundle: pure, no Node.
 */
import { ed25519 } from '@noble/curves/ed25519';
import { sha256 } from '@noble/hashes/sha2';
import { canonicalJson } from './canonical';
import { fromBase64, toHex, utf8Bytes } from './encoding';
import { parseUsd } from './money';

export const DECISION_DOMAIN = 'phasegate-decision-v1\n';

export const DECISION_KINDS = ['approve-budget', 'reject-budget', 'review'] as const;
export type DecisionKind = (typeof DECISION_KINDS)[number];

export const REVIEW_VERDICTS = ['APPROVED', 'ADVISED', 'CHANGES_REQUESTED'] as const;
export type ReviewVerdict = (typeof REVIEW_VERDICTS)[number];

/** Bounds on every free-text field of a decision, in characters. */
export const DECISION_TEXT_LIMITS = { note: 2000, reason: 2000, ref: 200, notes: 4000 } as const;

/** A person's name: also the file name of their key, so it can never hold a path. */
export const PERSON_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
export const PERSON_NAME_RULE = 'letters, digits, ".", "_" and "-" (at most 64), starting with a letter or digit';

export interface DecisionContent {
  'approve-budget': { usd: string; note: string };
  'reject-budget': { reason: string };
  review: { verdict: ReviewVerdict; ref: string; notes: string };
}

export interface UnsignedDecision<K extends DecisionKind = DecisionKind> {
  /** 2 for every decision a gate accepts; 1 in records made before decisions were bound to a run. */
  v: 1 | 2;
  kind: K;
  phaseId: string;
  protocolHash: string;
  /** The run chain the decision is for (version 2): what `decisionTarget` reads from the phase. */
  run?: string;
  by: string;
  content: DecisionContent[K];
  /** 32 lowercase hex digits, random per decision. */
  nonce: string;
  /** The signer's clock, ISO 8601: informational (the workflow records its own time too). */
  signedAt: string;
}

export interface SignedDecision<K extends DecisionKind = DecisionKind> extends UnsignedDecision<K> {
  /** Ed25519 signature of `decisionMessage(decision)`, standard base64. */
  signature: string;
}

/**
 * What the workflow keeps of a checked decision: the exact signed object and the key it verified with, so
 * `status` can show it, the freeze can write it, and `verify` can check it again offline.
 */
export interface SignatureRecord {
  signed: SignedDecision;
  publicKey: string;
  keyFingerprint: string;
}

export function decisionMessage(d: UnsignedDecision): Uint8Array {
  const { v, kind, phaseId, protocolHash, run, by, content, nonce, signedAt } = d;
  const signed = v === 1 ? { v, kind, phaseId, protocolHash, by, content, nonce, signedAt } : { v, kind, phaseId, protocolHash, run, by, content, nonce, signedAt };
  return utf8Bytes(DECISION_DOMAIN + canonicalJson(signed));
}

/** A Temporal run id as the server makes them (a UUID); bounded so that no other text passes for one. */
export const RUN_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** `ed25519:<base64 of the 32-byte public key>` to bytes; null if it is not exactly that. */
export function parsePublicKey(text: unknown): Uint8Array | null {
  if (typeof text !== 'string' || !text.startsWith('ed25519:') || text.length > 60) return null;
  const raw = fromBase64(text.slice('ed25519:'.length));
  return raw !== null && raw.length === 32 ? raw : null;
}

/** A short, stable name for a key: `ed25519:` + the first 16 hex digits of sha256(public key). */
export function keyFingerprint(publicKey: string): string {
  const raw = parsePublicKey(publicKey);
  return raw === null ? 'ed25519:invalid' : `ed25519:${toHex(sha256(raw)).slice(0, 16)}`;
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

function textField(obj: Record<string, unknown>, field: keyof typeof DECISION_TEXT_LIMITS, required: boolean): string | null {
  const v = obj[field];
  const limit = DECISION_TEXT_LIMITS[field];
  if (typeof v !== 'string') return `content.${field}: must be a string`;
  if (v.length > limit) return `content.${field}: longer than ${limit} characters`;
  if (required && v.trim() === '') return `content.${field}: must not be empty`;
  return null;
}

/** Checks a decision's shape and bounds (not its signature); returns the first problem, naming the field. */
export function decisionShapeProblem(d: unknown, kind: DecisionKind): string | null {
  if (!isObject(d)) return 'decision: must be a signed decision object (phasegate signs it with the person\'s key)';
  const allowed = ['v', 'kind', 'phaseId', 'protocolHash', 'run', 'by', 'content', 'nonce', 'signedAt', 'signature'];
  const extra = Object.keys(d).find((k) => !allowed.includes(k));
  if (extra !== undefined) return `decision: unknown field "${extra.slice(0, 40)}"`;
  if (d.v !== 1 && d.v !== 2) return 'v: must be 2';
  if (d.v === 2 && (typeof d.run !== 'string' || !RUN_ID.test(d.run))) return "run: must be the phase's run id (a UUID; phasegate reads it from the phase when it signs)";
  if (d.v === 1 && d.run !== undefined) return 'run: version 1 decisions carry no run';
  if (d.kind !== kind) return `kind: must be "${kind}" for this gate`;
  if (typeof d.phaseId !== 'string' || d.phaseId.length > 200) return 'phaseId: must be a phase id';
  if (typeof d.protocolHash !== 'string' || !/^[0-9a-f]{64}$/.test(d.protocolHash)) return 'protocolHash: must be 64 hex digits';
  if (typeof d.by !== 'string' || !PERSON_NAME.test(d.by)) return `by: must be a person's name (${PERSON_NAME_RULE})`;
  if (typeof d.nonce !== 'string' || !/^[0-9a-f]{32}$/.test(d.nonce)) return 'nonce: must be 32 lowercase hex digits';
  if (typeof d.signedAt !== 'string' || d.signedAt.length > 40 || !/^\d{4}-\d{2}-\d{2}T[0-9:.]+Z$/.test(d.signedAt)) return 'signedAt: must be an ISO 8601 UTC time';
  if (typeof d.signature !== 'string' || d.signature.length !== 88) return 'signature: missing or not an Ed25519 signature (88 base64 characters): decisions must be signed';
  const c = d.content;
  if (!isObject(c)) return 'content: must be an object';
  const fields: Record<DecisionKind, string[]> = { 'approve-budget': ['usd', 'note'], 'reject-budget': ['reason'], review: ['verdict', 'ref', 'notes'] };
  const unknown = Object.keys(c).find((k) => !fields[kind].includes(k));
  if (unknown !== undefined) return `content: unknown field "${unknown.slice(0, 40)}"`;
  switch (kind) {
    case 'approve-budget': {
      const usd = parseUsd(c.usd);
      if ('error' in usd) return `content.usd: ${usd.error}`;
      return textField(c, 'note', false);
    }
    case 'reject-budget':
      return textField(c, 'reason', true);
    case 'review':
      if (!(REVIEW_VERDICTS as readonly unknown[]).includes(c.verdict)) return `content.verdict: must be one of ${REVIEW_VERDICTS.join(', ')}`;
      return textField(c, 'ref', false) ?? textField(c, 'notes', false);
  }
}

/**
 * Checks a decision's signature against the public key the protocol names for its signer. Strict RFC 8032
 * verification (no ZIP-215 leniency): each message has one valid signature encoding, so a resent decision
 * is recognised by its signature.
 */
export function signatureProblem(d: SignedDecision, publicKey: string): string | null {
  const key = parsePublicKey(publicKey);
  if (key === null) return `the protocol's key for "${d.by}" is not an ed25519 public key`;
  const sig = fromBase64(d.signature);
  if (sig === null || sig.length !== 64) return 'signature: not a base64 Ed25519 signature';
  let ok = false;
  try {
    ok = ed25519.verify(sig, decisionMessage(d), key, { zip215: false });
  } catch {
    ok = false;
  }
  return ok ? null : `signature: does not verify with ${d.by}'s key ${keyFingerprint(publicKey)} for this phase and content (forged, altered, or signed for another phase)`;
}

export function signatureRecord(d: SignedDecision, publicKey: string): SignatureRecord {
  const { v, kind, phaseId, protocolHash, run, by, content, nonce, signedAt, signature } = d;
  const signed = v === 1 ? { v, kind, phaseId, protocolHash, by, content, nonce, signedAt, signature } : { v, kind, phaseId, protocolHash, run, by, content, nonce, signedAt, signature };
  return { signed, publicKey, keyFingerprint: keyFingerprint(publicKey) };
}

/**
 * Re-checks a recorded decision from scratch (used on a resumed state and by offline `verify`): it was signed by
 * the person recorded, with the key the locked roster names for them, for this phase, and the signature holds.
 */
export function recordProblem(r: SignatureRecord, lock: { phaseId: string; protocolHash: string; people: Record<string, string>; run?: string | null }): string | null {
  const d = r.signed;
  const shape = decisionShapeProblem(d, d.kind);
  if (shape !== null) return shape;
  const key = lock.people[d.by];
  if (key === undefined || key !== r.publicKey) return `${d.kind} by ${d.by}: the key it carries is not the one the protocol names for ${d.by}`;
  if (d.phaseId !== lock.phaseId || d.protocolHash !== lock.protocolHash) return `${d.kind} by ${d.by}: signed for another phase or protocol`;
  // lock.run: the state's run (null: a state from before runs were bound, which holds no version 2 decision).
  if (lock.run !== undefined && d.v === 2 && d.run !== lock.run) return `${d.kind} by ${d.by}: signed for another run of this phase`;
  const bad = signatureProblem(d, key);
  return bad === null ? null : `${d.kind} by ${d.by}: ${bad}`;
}
