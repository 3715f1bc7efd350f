/**
 * What the console shows, read through the same phase operations as the CLI (client/phases.ts): the phase list
 * with "waiting for my decision", one phase with everything a person deciding at its gate reads, the closeout
 * report, frozen artifacts, and the static files of the console's shell.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Context } from 'hono';
import { repoRoot } from '../../common/config';
import { MANIFEST } from '../../activities/manifest';
import type { PhaseInput, PhaseState, RunPlan } from '../../workflows/definitions';
import { isTerminal } from '../../workflows/definitions';
import { runPlan } from '../../workflows/phase-logic';
import { PhaseError } from '../errors';
import { getState, getStatus, listPhases, phaseInput, verifyPhase, type PhaseClient, type PhaseSummary, type PhaseVerification, type StatusView } from '../phases';

/** The gate a phase waits on and who may pass it, or null when no gate is open. */
export function openGate(input: Pick<PhaseInput, 'protocol'>, status: string): { gate: 'budget' | 'review'; deciders: string[] } | null {
  if (status === 'AWAITING_BUDGET') return { gate: 'budget', deciders: input.protocol.budget.approvers };
  if (status === 'AWAITING_REVIEW') return { gate: 'review', deciders: input.protocol.review.reviewers };
  return null;
}

export interface ListedPhase extends PhaseSummary {
  /** true when the phase's open gate names this person. */
  waitingForMe: boolean;
}

export async function phaseList(pc: PhaseClient, filter: { person: string; status?: string; waitingForMe?: boolean }): Promise<ListedPhase[]> {
  const out: ListedPhase[] = [];
  for (const p of await listPhases(pc)) {
    if (filter.status !== undefined && p.status !== filter.status) continue;
    let waitingForMe = false;
    if (p.workflowStatus === 'RUNNING' && (p.status === 'AWAITING_BUDGET' || p.status === 'AWAITING_REVIEW')) {
      const input = await phaseInput(pc, p.phaseId).catch(() => null);
      waitingForMe = input !== null && (openGate(input, p.status)?.deciders.includes(filter.person) ?? false);
    }
    if (filter.waitingForMe === true && !waitingForMe) continue;
    out.push({ ...p, waitingForMe });
  }
  return out;
}

export interface PhaseDetail {
  person: string;
  view: StatusView;
  state: PhaseState;
  input: PhaseInput;
  plan: RunPlan;
  /** The gate open now, and whether this person is one who may pass it. */
  gate: { gate: 'budget' | 'review'; deciders: string[]; mine: boolean } | null;
  verification: PhaseVerification | null;
  manifest: string | null;
  /** Files of the frozen folder the page can show (charts). */
  charts: string[];
}

export async function phaseDetail(pc: PhaseClient, phaseId: string, person: string): Promise<PhaseDetail> {
  const [view, state, input] = await Promise.all([getStatus(pc, phaseId), getState(pc, phaseId), phaseInput(pc, phaseId)]);
  const gate = view.workflowStatus === 'RUNNING' ? openGate(input, state.status) : null;
  let verification: PhaseVerification | null = null;
  let manifest: string | null = null;
  if (state.freeze !== null) {
    verification = await verifyPhase(pc, phaseId).catch(() => null);
    manifest = readOptional(state.freeze.manifestPath);
  }
  return {
    person,
    view,
    state,
    input,
    plan: runPlan(input, state),
    gate: gate === null ? null : { ...gate, mine: gate.deciders.includes(person) },
    verification,
    manifest,
    charts: state.freeze === null ? [] : ['parity.svg', 'cost.svg'],
  };
}

function readOptional(file: string): string | null {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

export const isLive = (d: PhaseDetail): boolean => !isTerminal(d.state.status) && d.view.workflowStatus === 'RUNNING';

export async function reportOf(pc: PhaseClient, phaseId: string): Promise<string> {
  const state = await getState(pc, phaseId);
  if (state.freeze === null) throw new PhaseError('refused', `phase ${phaseId} is ${state.status}: the report is written when it freezes`);
  const text = readOptional(state.freeze.reportPath);
  if (text === null) throw new PhaseError('failed', `the report of ${phaseId} cannot be read; \`phasegate verify ${phaseId}\` checks the frozen folder`);
  return text;
}

/** Frozen files the console may show: the charts, the report and the manifest, nothing else (no path from the request). */
const ARTIFACTS: Record<string, string> = { 'parity.svg': 'image/svg+xml', 'cost.svg': 'image/svg+xml', 'closeout.md': 'text/markdown; charset=utf-8', [MANIFEST]: 'text/plain; charset=utf-8' };

export async function artifactFile(pc: PhaseClient, phaseId: string, file: string): Promise<{ body: string; type: string }> {
  const type = ARTIFACTS[file];
  if (type === undefined) throw new PhaseError('notFound', `file: not one of ${Object.keys(ARTIFACTS).join(', ')}`);
  const state = await getState(pc, phaseId);
  if (state.freeze === null) throw new PhaseError('refused', `phase ${phaseId} is ${state.status}: nothing frozen yet`);
  const body = readOptional(path.join(state.freeze.dir, file));
  if (body === null) throw new PhaseError('notFound', `file: ${file} is missing from the frozen folder`);
  return { body, type };
}

// ---- the shell: the same bytes for everyone, no data ----
/** Paths of the console's static shell: the only ones besides /healthz that answer without a token. */
export const SHELL_PATHS: readonly RegExp[] = [/^\/console\/?$/, /^\/console\/phases\/[a-z0-9-]{1,200}$/, /^\/console\/assets\/[a-z0-9.-]+$/];

const ASSETS_DIR = path.join(repoRoot, 'client', 'console', 'assets');
const ASSET_TYPES: Record<string, string> = { 'index.html': 'text/html; charset=utf-8', 'console.js': 'text/javascript; charset=utf-8', 'console.css': 'text/css; charset=utf-8' };
/** The page may run its own script and talk to this server only. */
const CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

export function consoleAsset(c: Context, name: string): Response {
  const type = ASSET_TYPES[name];
  if (type === undefined) throw new PhaseError('notFound', 'no such route');
  return c.body(readFileSync(path.join(ASSETS_DIR, name)), 200, { 'content-type': type, 'content-security-policy': CSP, 'x-frame-options': 'DENY', 'referrer-policy': 'no-referrer' });
}
