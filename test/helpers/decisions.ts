/**
 * Signed decisions for tests, made the way the CLI makes them: each person of the test roster has a real Ed25519
 * key in a per-process key folder (the same files `phasegate keys new` writes), the phase's protocol hash is read
 * from the phase, and the decision is signed and sent through client/phases.
 */
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { KeyObject } from 'node:crypto';
import { approveBudget, decisionTarget, rejectBudget, submitReview, type PhaseClient } from '../../client/phases';
import { loadPrivateKey, newKey, signDecision, type DecisionDraft } from '../../client/keys';
import type { DecisionKind, ReviewVerdict, SignedDecision } from '../../domain/decisions';
import type { DecisionResult } from '../../workflows/definitions';

/** The run id pure tests give their gate context (a workflow's is Temporal's first run id of the phase). */
export const TEST_RUN = '0f0e0d0c-0b0a-4908-8706-050403020100';

/** The people of test protocols; mallory has a key but is named in no protocol. */
export const TEST_PEOPLE = ['demo-approver', 'demo-reviewer', 'second-approver', 'mallory'] as const;

let folder: { dir: string; publicKeys: Record<string, string> } | null = null;

/** One key folder per test process, with a key for each test person. */
export function testKeys(): { dir: string; publicKeys: Record<string, string> } {
  if (folder === null) {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'phasegate-keys-'));
    const publicKeys = Object.fromEntries(TEST_PEOPLE.map((name) => [name, newKey(dir, name)]));
    folder = { dir, publicKeys };
  }
  return folder;
}

export function keyOf(name: string): KeyObject {
  return loadPrivateKey(testKeys().dir, name);
}

/** The roster test protocols carry: the approver and the reviewer (and a second approver). */
export function testRoster(): Record<string, string> {
  const { publicKeys } = testKeys();
  return { 'demo-approver': publicKeys['demo-approver']!, 'demo-reviewer': publicKeys['demo-reviewer']!, 'second-approver': publicKeys['second-approver']! };
}

export function sign<K extends DecisionKind>(by: string, draft: Omit<DecisionDraft<K>, 'by'>, as: string = by, at?: Date): SignedDecision<K> {
  return signDecision(keyOf(as), { ...draft, by }, at);
}

/** A dollar amount as the CLI sends it: a decimal string with at most 6 decimals. */
export const usdText = (usd: number | string): string => (typeof usd === 'string' ? usd : Number.isFinite(usd) ? String(Number(usd.toFixed(6))) : String(usd));

/** `at`: the signer's clock (a time-skipping test signs at the server's time, days ahead of the wall clock). */
export async function approveAs(pc: PhaseClient, phaseId: string, i: { by: string; usd: number | string; note?: string; at?: Date }): Promise<DecisionResult> {
  const target = await decisionTarget(pc, phaseId);
  return approveBudget(pc, sign(i.by, { kind: 'approve-budget', ...target, content: { usd: usdText(i.usd), note: i.note ?? '' } }, i.by, i.at));
}

export async function rejectAs(pc: PhaseClient, phaseId: string, i: { by: string; reason: string }): Promise<DecisionResult> {
  const target = await decisionTarget(pc, phaseId);
  return rejectBudget(pc, sign(i.by, { kind: 'reject-budget', ...target, content: { reason: i.reason } }));
}

export async function reviewAs(pc: PhaseClient, phaseId: string, i: { by: string; verdict: ReviewVerdict; ref?: string; notes?: string }): Promise<DecisionResult> {
  const target = await decisionTarget(pc, phaseId);
  return submitReview(pc, sign(i.by, { kind: 'review', ...target, content: { verdict: i.verdict, ref: i.ref ?? '', notes: i.notes ?? '' } }));
}
