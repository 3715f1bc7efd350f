/**
 * The two people of a benchmark's phases, with keys of the run's own: their roster entry for the protocol, and
 * both gates passed with decisions they signed (through the same client calls a person's CLI makes).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { approveBudget, decisionTarget, submitReview, type PhaseClient } from '../client/phases';
import { loadPrivateKey, newKey, signDecision } from '../client/keys';

export interface BenchPeople {
  /** The protocol's `people`: name to public key. */
  roster: Record<string, string>;
  /** The approver approves `usd`, then the reviewer approves the phase. */
  passGates(pc: PhaseClient, phaseId: string, usd: string): Promise<void>;
  /** Deletes the keys. */
  dispose(): void;
}

export function benchPeople(tag: string): BenchPeople {
  const keysDir = mkdtempSync(path.join(os.tmpdir(), `phasegate-${tag}-keys-`));
  const roster = { 'demo-approver': newKey(keysDir, 'demo-approver'), 'demo-reviewer': newKey(keysDir, 'demo-reviewer') };
  return {
    roster,
    passGates: async (pc, phaseId, usd) => {
      const target = await decisionTarget(pc, phaseId);
      await approveBudget(pc, signDecision(loadPrivateKey(keysDir, 'demo-approver'), { kind: 'approve-budget', by: 'demo-approver', ...target, content: { usd, note: '' } }));
      await submitReview(pc, signDecision(loadPrivateKey(keysDir, 'demo-reviewer'), { kind: 'review', by: 'demo-reviewer', ...target, content: { verdict: 'APPROVED', ref: '', notes: '' } }));
    },
    dispose: () => rmSync(keysDir, { recursive: true, force: true }),
  };
}
