/**
 * Phase operations on one Temporal client, shared by the CLI and the HTTP API: start, decide, query, wait,
 * cancel, reopen, verify. Errors meant for the user are PhaseError with the exit code the CLI uses.
 */
import {
  isGrpcServiceError,
  QueryNotRegisteredError,
  ServiceError,
  WorkflowExecutionAlreadyStartedError,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
  type Client,
  type WorkflowHandle,
} from '@temporalio/client';
import { ApplicationFailure, defaultPayloadConverter, WorkflowIdReusePolicy, type UpdateDefinition } from '@temporalio/common';
import type { DecisionKind, SignedDecision } from '../domain/decisions';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { verifyManifest, type VerifyReport } from '../activities/manifest';
import { loadProtocol, phaseInputOf, ProtocolError, type LoadedProtocol, type LoadOptions } from '../protocols/load';
import {
  approveBudgetUpdate,
  isTerminal,
  PHASE_WORKFLOW_TYPE,
  planQuery,
  rejectBudgetUpdate,
  searchAttributes,
  stateQuery,
  submitReviewUpdate,
  type ApproveBudgetInput,
  type DecisionResult,
  type PhaseInput,
  type PhaseState,
  type PhaseStatus,
  type RejectBudgetInput,
  type RunPlan,
  type RunProgress,
  type SubmitReviewInput,
} from '../workflows/definitions';
import { phaseWorkflow } from '../workflows/phase';
import { decisionKey, decisionRecordProblems, gateProblems, lockHashOf, runPlan, spentUsd } from '../workflows/phase-logic';
import { RecordUnreadable, type PhaseRecord, type PhaseRecords } from '../common/phase-records';
import { isStoreRef, type ArtifactStore } from '../common/artifact-store';
import { PhaseError } from './errors';

export { PhaseError } from './errors';

export interface PhaseClient {
  client: Client;
  taskQueue: string;
  /** The phase records: the answer when Temporal no longer has a phase (its history passed retention). */
  records: PhaseRecords;
  /** The artifact store frozen phases are in, when it is not this host's disk (a `verify` fetches from it). */
  store?: ArtifactStore;
}

/** The phase's record, null when it has none, or the error of one that is there but cannot be read. */
async function readRecord(pc: PhaseClient, phaseId: string): Promise<PhaseRecord | null | RecordUnreadable> {
  try {
    return await pc.records.read(phaseId);
  } catch (err) {
    if (err instanceof RecordUnreadable) return err;
    throw err;
  }
}

const unreadable = (err: RecordUnreadable): PhaseError =>
  new PhaseError('refused', `refused: ${err.message}; it is kept as it is: restore it (a backup, or the state in the frozen artifacts' phase.json) or move it aside`);

/** The phase's record if it says FROZEN: final, and the answer whatever Temporal holds under the id. */
async function frozenIn(pc: PhaseClient, phaseId: string): Promise<PhaseRecord | null> {
  const record = await readRecord(pc, phaseId);
  return record instanceof RecordUnreadable || record?.state.status !== 'FROZEN' ? null : record;
}

/** The phase's record when Temporal has no execution for it (deleted, or past retention); else null. */
async function recordOnly(pc: PhaseClient, phaseId: string): Promise<PhaseRecord | null> {
  const record = await readRecord(pc, phaseId);
  if (record === null) return null;
  try {
    await handleOf(pc, phaseId).describe();
    return null;
  } catch (err) {
    if (!(err instanceof WorkflowNotFoundError)) throw err;
    if (record instanceof RecordUnreadable) throw unreadable(record);
    return record;
  }
}

const handleOf = (pc: PhaseClient, phaseId: string): WorkflowHandle<typeof phaseWorkflow> => pc.client.workflow.getHandle<typeof phaseWorkflow>(phaseId);

// ---- start ----------------------------------------------------------------------------------------------------------
export interface StartResult {
  phaseId: string;
  /** false when the same phase (same protocol hash) was already running: starting is idempotent. */
  started: boolean;
  protocolHash: string;
}

export function readProtocolOrThrow(file: string, options: LoadOptions = {}): LoadedProtocol {
  try {
    return loadProtocol(file, options);
  } catch (err) {
    if (err instanceof ProtocolError) throw new PhaseError('invalid', err.message);
    throw err;
  }
}

/** A phase id as phasegate makes them; checked before it is sent anywhere. */
export const PHASE_ID = /^[a-z0-9][a-z0-9-]{0,199}$/;

export function checkPhaseId(id: string): string {
  if (!PHASE_ID.test(id)) throw new PhaseError('invalid', 'ID: must be a phase id (lowercase letters, digits and dashes, as `start` prints it)');
  return id;
}

/** Phases named in `requires_frozen` must have a FROZEN run; otherwise starting is refused with the reason. */
export async function unmetPrerequisites(pc: PhaseClient, required: string[]): Promise<string[]> {
  const unmet: string[] = [];
  for (const name of required) {
    const query = `${searchAttributes.phaseName.name} = '${name}' AND ${searchAttributes.phaseStatus.name} = 'FROZEN'`;
    let found = false;
    for await (const _ of pc.client.workflow.list({ query, pageSize: 1 })) {
      found = true;
      break;
    }
    // A FROZEN phase whose history has passed retention is still frozen: its record says so.
    if (!found) found = (await pc.records.list()).records.some((r) => r.phaseName === name && r.state.status === 'FROZEN');
    if (!found) unmet.push(name);
  }
  return unmet;
}

export async function startPhase(
  pc: PhaseClient,
  loaded: LoadedProtocol,
  extra: Pick<PhaseInput, 'reopenOf' | 'continueAsNewAfterEvents' | 'publishSearchAttributes'> & { phaseId?: string } = {},
): Promise<StartResult> {
  const phaseId = extra.phaseId ?? loaded.phaseId;
  const searchable = extra.publishSearchAttributes !== false;
  const unmet = await unmetPrerequisites(pc, loaded.protocol.requires_frozen);
  if (unmet.length > 0) {
    throw new PhaseError('refused', `refused: requires_frozen: phase(s) ${unmet.join(', ')} must be FROZEN before ${loaded.protocol.phase} may start`);
  }
  // A record that cannot be read may have said FROZEN: nothing is started over it.
  const existing = await readRecord(pc, phaseId);
  if (existing instanceof RecordUnreadable) throw unreadable(existing);
  // A FROZEN record is final, whatever Temporal holds under the id now (a run started behind phasegate's back).
  const frozenRecord = await frozenIn(pc, phaseId);
  const gone = frozenRecord ?? (await recordOnly(pc, phaseId));
  if (gone !== null && !['FAILED', 'CANCELLED'].includes(gone.state.status)) {
    throw new PhaseError(
      'refused',
      gone.state.status === 'FROZEN'
        ? `refused: phase ${phaseId} is FROZEN (its record; Temporal's history of it is gone); its artifacts are final. To rerun after a defect: phasegate reopen ${phaseId} --defect "..."`
        : `refused: phase ${phaseId} already ended as ${gone.state.status} (its record); change the protocol to start a new phase`,
    );
  }
  // Spend of earlier runs counts: from Temporal while it has the run, from the record after that.
  const priorLedger = gone !== null ? gone.state.ledger : await ledgerOfEndedRun(pc, phaseId);
  const input: PhaseInput = {
    ...phaseInputOf(loaded),
    phaseId,
    ...(extra.reopenOf ? { reopenOf: extra.reopenOf } : {}),
    ...(extra.continueAsNewAfterEvents ? { continueAsNewAfterEvents: extra.continueAsNewAfterEvents } : {}),
    ...(searchable ? {} : { publishSearchAttributes: false }),
    ...(priorLedger.length > 0 ? { priorLedger } : {}),
  };
  try {
    await pc.client.workflow.start(phaseWorkflow, {
      workflowId: phaseId,
      taskQueue: pc.taskQueue,
      args: [input],
      // A phase that failed or was cancelled may be started again (its checkpoints make it resume); one that
      // completed (FROZEN, REJECTED, CHANGES_REQUESTED) may not: a changed protocol is a new phase.
      workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
      typedSearchAttributes: searchable
        ? [
            { key: searchAttributes.phaseName, value: loaded.protocol.phase },
            { key: searchAttributes.phaseStatus, value: 'AWAITING_BUDGET' },
            { key: searchAttributes.protocolHash, value: loaded.protocolHash },
          ]
        : [],
    });
    return { phaseId, started: true, protocolHash: loaded.protocolHash };
  } catch (err) {
    if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
    const description = await handleOf(pc, phaseId).describe();
    if (description.status.name === 'RUNNING') {
      // The id names only 48 bits of the hash: a running phase under it must be this very protocol.
      const running = await handleOf(pc, phaseId).query(stateQuery).catch(() => null);
      if (running !== null && running.protocolHash !== loaded.protocolHash) {
        throw new PhaseError('refused', `refused: phase id ${phaseId} is taken by a different protocol (hash ${running.protocolHash.slice(0, 16)}…, this one ${loaded.protocolHash.slice(0, 16)}…); do not decide on it`);
      }
      return { phaseId, started: false, protocolHash: loaded.protocolHash };
    }
    const state = await handleOf(pc, phaseId).query(stateQuery).catch(() => null);
    const status = state?.status ?? description.status.name;
    throw new PhaseError(
      'refused',
      status === 'FROZEN'
        ? `refused: phase ${phaseId} is FROZEN; its artifacts are final. To rerun after a defect: phasegate reopen ${phaseId} --defect "..."`
        : `refused: phase ${phaseId} already ended as ${status}; change the protocol to start a new phase`,
    );
  }
}

/**
 * A phase that FAILED or was CANCELLED may be started again (its checkpoints make it resume). Its earlier spend
 * must not vanish with it: the new run starts with the old ledger lines, so they count against the new approval.
 */
async function ledgerOfEndedRun(pc: PhaseClient, phaseId: string): Promise<PhaseState['ledger']> {
  let status: string;
  try {
    status = (await handleOf(pc, phaseId).describe()).status.name;
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return [];
    throw err;
  }
  if (status === 'RUNNING' || status === 'COMPLETED') return [];
  try {
    return (await handleOf(pc, phaseId).query(stateQuery)).ledger;
  } catch (err) {
    // A run whose start input was refused failed before it registered any handler: it ran nothing.
    if (err instanceof QueryNotRegisteredError) return [];
    throw err;
  }
}

// ---- decisions --------------------------------------------------------------------------------------------------
/**
 * Sends a signed decision. The update id is derived from the signed decision, so a retry after a lost reply is
 * de-duplicated by Temporal; the workflow also acknowledges a resent decision without applying it twice. The
 * workflow's validator checks the signature: a refusal comes back with its reason, and nothing enters history.
 */
async function decide<K extends DecisionKind>(pc: PhaseClient, update: UpdateDefinition<DecisionResult, [SignedDecision<K>]>, d: SignedDecision<K>): Promise<DecisionResult> {
  const phaseId = checkPhaseId(d.phaseId);
  const updateId = `${d.kind}-${createHash('sha256').update(d.signature).digest('hex').slice(0, 24)}`;
  const deadline = Date.now() + DECIDE_RESEND_MS;
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await handleOf(pc, phaseId).executeUpdate(update, { args: [d], updateId });
    } catch (err) {
      if (err instanceof WorkflowUpdateFailedError && err.cause instanceof ApplicationFailure) {
        throw new PhaseError('refused', `refused: ${err.cause.message}`);
      }
      if (!(err instanceof WorkflowNotFoundError)) throw await explainMissing(pc, phaseId, err);
      // Temporal answers "already completed" when the run a decision reached continued as new on its way, even
      // where that run applied it. Sent again (the same update id; the workflow applies a decision once), it
      // reaches the run that goes on. If the phase has ended meanwhile holding this decision, it is acknowledged
      // as the workflow acknowledges a resent one; only a phase that ended without it refuses.
      const ended = await endedWith(pc, phaseId, decisionKey(d));
      if (ended === 'running' && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, Math.min(50 * attempt, 500)));
        continue;
      }
      if (ended !== null && ended !== 'running') return ended;
      throw await explainMissing(pc, phaseId, err);
    }
  }
}

/** How long a decision is sent again while the runs it reaches keep continuing as new. */
const DECIDE_RESEND_MS = 30_000;

/** 'running' if the phase still runs; if it has ended holding the decision keyed `key`, what a resent decision
 * gets (applied: false); else null. */
async function endedWith(pc: PhaseClient, phaseId: string, key: string): Promise<DecisionResult | 'running' | null> {
  try {
    const handle = handleOf(pc, phaseId);
    const status = (await handle.describe()).status.name;
    if (status === 'RUNNING') return 'running';
    // A completed phase's state is its result, read from history: no worker needs to answer a query for it.
    const state = status === 'COMPLETED' ? await handle.result() : await handle.query(stateQuery);
    return state.appliedDecisions.includes(key) ? { applied: false, status: state.status, approvedUsd: state.budget.approvedUsd } : null;
  } catch {
    return null; // not found, or a run that registered no query: explainMissing says which
  }
}

/** What a person needs to sign a decision for a phase: its id, protocol hash and run, read from the phase itself. */
export async function decisionTarget(pc: PhaseClient, phaseId: string): Promise<{ phaseId: string; protocolHash: string; run: string }> {
  const state = await getState(pc, checkPhaseId(phaseId));
  if (state.run === undefined) throw new PhaseError('refused', `refused: phase ${phaseId} was recorded before decisions were bound to a run; it takes no decisions`);
  return { phaseId, protocolHash: state.protocolHash, run: state.run };
}

/** An approval is given against an estimate: right after a start, wait (briefly) for the estimate to exist. */
export async function approveBudget(pc: PhaseClient, d: ApproveBudgetInput, waitSeconds = 60): Promise<DecisionResult> {
  const deadline = Date.now() + waitSeconds * 1000;
  for (;;) {
    const state = await getState(pc, checkPhaseId(d.phaseId));
    if (state.estimate !== null || state.status !== 'AWAITING_BUDGET' || Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  return decide(pc, approveBudgetUpdate, d);
}
export const rejectBudget = (pc: PhaseClient, d: RejectBudgetInput): Promise<DecisionResult> => decide(pc, rejectBudgetUpdate, d);
export const submitReview = (pc: PhaseClient, d: SubmitReviewInput): Promise<DecisionResult> => decide(pc, submitReviewUpdate, d);

/** Turns "not found" and "already completed" into messages that say which one it is. */
async function explainMissing(pc: PhaseClient, phaseId: string, err: unknown): Promise<unknown> {
  try {
    const d = await handleOf(pc, phaseId).describe();
    if (d.status.name !== 'RUNNING') return new PhaseError('refused', `refused: phase ${phaseId} has ended (${d.status.name}); it takes no decisions`);
  } catch (e) {
    if (e instanceof WorkflowNotFoundError) return new PhaseError('notFound', `no phase with id ${phaseId}`);
  }
  return err;
}

// ---- status ---------------------------------------------------------------------------------------------------------
export interface StatusView {
  phaseId: string;
  phase: string;
  protocolHash: string;
  status: PhaseStatus;
  workflowStatus: string;
  gates: { budget: PhaseState['budget']; review: PhaseState['review'] };
  estimateUsd: number | null;
  approvedUsd: number;
  spentUsd: number;
  remainingUsd: number;
  models: {
    modelKey: string;
    status: string;
    attempts: number;
    progress: RunProgress | null;
    parityPass: boolean | null;
  }[];
  parityPass: boolean | null;
  artifactDir: string | null;
  reportPath: string | null;
  failure: string | null;
  events: PhaseState['events'];
}

export async function getState(pc: PhaseClient, phaseId: string): Promise<PhaseState> {
  checkPhaseId(phaseId);
  const frozen = await frozenIn(pc, phaseId);
  if (frozen !== null) return frozen.state;
  try {
    return await handleOf(pc, phaseId).query(stateQuery);
  } catch (err) {
    const record = err instanceof WorkflowNotFoundError ? await recordOnly(pc, phaseId) : null;
    if (record !== null) return record.state;
    if (noWorkerPolling(err)) throw new PhaseError('unavailable', `no worker serves phase ${phaseId}'s task queue right now (Temporal: no poller seen recently, or none answered in time): start one with \`phasegate worker\`, or wait for a restarting one`);
    throw await explainMissing(pc, phaseId, err);
  }
}

/**
 * A query no worker answered: Temporal says FAILED_PRECONDITION when no worker has polled the workflow's task queue
 * lately, DEADLINE_EXCEEDED when none took the query in time (gRPC status codes).
 */
const NO_WORKER_CODES = new Set([9, 4]);

function noWorkerPolling(err: unknown): boolean {
  return err instanceof ServiceError && isGrpcServiceError(err.cause) && NO_WORKER_CODES.has(Number(err.cause.code));
}

/** Shown as `workflowStatus` when a phase is answered from its record because Temporal no longer has it. */
export const RECORD_ONLY = 'RECORD_ONLY';

export async function getStatus(pc: PhaseClient, phaseId: string): Promise<StatusView> {
  const handle = handleOf(pc, phaseId);
  const state = await getState(pc, phaseId);
  const description = await handle.describe().catch((err: unknown) => {
    if (err instanceof WorkflowNotFoundError) return null;
    throw err;
  });
  if (description === null || ((await frozenIn(pc, phaseId)) !== null && description.status.name !== 'COMPLETED')) return statusView(phaseId, state, RECORD_ONLY, null);
  // Live progress is read from the pending activity's last heartbeat, so it costs no workflow history.
  let progress: RunProgress | null = null;
  const pending = description.raw.pendingActivities?.find((p) => p.activityType?.name === 'runModel');
  const payload = pending?.heartbeatDetails?.payloads?.[0];
  if (payload) progress = defaultPayloadConverter.fromPayload<RunProgress>(payload);
  return statusView(phaseId, state, description.status.name, progress);
}

function statusView(phaseId: string, state: PhaseState, workflowStatus: string, progress: RunProgress | null): StatusView {
  const running = state.models.find((m) => m.status === 'running')?.modelKey;
  const spent = spentUsd(state.ledger);
  return {
    phaseId,
    phase: state.phaseName,
    protocolHash: state.protocolHash,
    status: state.status,
    workflowStatus,
    gates: { budget: state.budget, review: state.review },
    estimateUsd: state.estimate?.totalUsd ?? null,
    approvedUsd: state.budget.approvedUsd,
    spentUsd: spent,
    remainingUsd: Math.max(0, Math.round((state.budget.approvedUsd - spent) * 1e6) / 1e6),
    models: state.models.map((m) => ({
      modelKey: m.modelKey,
      status: m.status,
      attempts: m.attempts,
      progress: m.modelKey === running ? progress : null,
      parityPass: state.score?.models.find((s) => s.modelKey === m.modelKey)?.parityPass ?? null,
    })),
    parityPass: state.score?.parityPass ?? null,
    artifactDir: state.freeze?.dir ?? null,
    reportPath: state.freeze?.reportPath ?? null,
    failure: state.failure,
    events: state.events,
  };
}

export async function getPlan(pc: PhaseClient, phaseId: string): Promise<RunPlan> {
  try {
    return await handleOf(pc, phaseId).query(planQuery);
  } catch (err) {
    const record = err instanceof WorkflowNotFoundError ? await recordOnly(pc, phaseId) : null;
    if (record !== null) return runPlan(record.input, record.state);
    throw await explainMissing(pc, phaseId, err);
  }
}

/** Polls until the phase reaches `target` (or any terminal state, which then is an error unless it is the target). */
export async function waitForStatus(
  pc: PhaseClient,
  phaseId: string,
  target: PhaseStatus,
  timeoutSeconds: number,
  onTick?: (s: PhaseState) => void | Promise<void>,
): Promise<PhaseState> {
  const deadline = Date.now() + timeoutSeconds * 1000;
  for (;;) {
    let state: PhaseState;
    try {
      state = await getState(pc, phaseId);
    } catch (err) {
      // A worker restarting (or replaced after a crash) is a pause in the wait, not its end.
      if (!(err instanceof PhaseError && err.kind === 'unavailable') || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 1000));
      continue;
    }
    await onTick?.(state);
    if (state.status === target) return state;
    if (isTerminal(state.status)) throw new PhaseError('failed', `phase ${phaseId} ended as ${state.status}, not ${target}${state.failure ? `: ${state.failure}` : ''}`);
    if (Date.now() > deadline) throw new PhaseError('failed', `timed out after ${timeoutSeconds}s waiting for ${target}; phase is ${state.status}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

export async function cancelPhase(pc: PhaseClient, phaseId: string): Promise<void> {
  checkPhaseId(phaseId);
  try {
    await handleOf(pc, phaseId).cancel();
  } catch (err) {
    throw await explainMissing(pc, phaseId, err);
  }
}

export interface PhaseSummary {
  phaseId: string;
  phase: string;
  status: string;
  workflowStatus: string;
  startTime: string;
}

export async function listPhases(pc: PhaseClient, limit = 100): Promise<PhaseSummary[]> {
  const out: PhaseSummary[] = [];
  for await (const wf of pc.client.workflow.list({ query: `WorkflowType = '${PHASE_WORKFLOW_TYPE}'` })) {
    out.push({
      phaseId: wf.workflowId,
      phase: String(wf.typedSearchAttributes.get(searchAttributes.phaseName) ?? ''),
      status: String(wf.typedSearchAttributes.get(searchAttributes.phaseStatus) ?? ''),
      workflowStatus: wf.status.name,
      startTime: wf.startTime.toISOString(),
    });
    if (out.length >= limit) break;
  }
  // Phases Temporal no longer has (past retention, or deleted) are still phases: listed from their records.
  const listed = new Set(out.map((p) => p.phaseId));
  const { records, unreadable: unreadableIds } = await pc.records.list();
  for (const r of records) {
    if (out.length >= limit) break;
    if (listed.has(r.phaseId) || (await recordOnly(pc, r.phaseId)) === null) continue;
    out.push({ phaseId: r.phaseId, phase: r.phaseName, status: r.state.status, workflowStatus: RECORD_ONLY, startTime: r.state.startedAt });
  }
  // A record that cannot be read is still listed, so that nobody mistakes it for no phase at all.
  for (const phaseId of unreadableIds) if (!listed.has(phaseId) && out.length < limit) out.push({ phaseId, phase: '', status: 'RECORD UNREADABLE', workflowStatus: RECORD_ONLY, startTime: '' });
  return out;
}

// ---- reopen and verify --------------------------------------------------------------------------------------------
/** Starts a new phase linked to a frozen one, from the same protocol file; the frozen artifacts are never touched. */
export async function reopenPhase(pc: PhaseClient, phaseId: string, defect: string): Promise<StartResult> {
  if (defect.trim() === '') throw new PhaseError('invalid', '--defect must describe the defect that justifies a rerun');
  if (defect.length > 2000) throw new PhaseError('invalid', '--defect: at most 2000 characters');
  const state = await getState(pc, phaseId);
  if (state.status !== 'FROZEN') throw new PhaseError('refused', `refused: only a FROZEN phase can be reopened; ${phaseId} is ${state.status}`);
  const original = await phaseInput(pc, phaseId);
  // The reopened phase runs the frozen phase's locked protocol, not whatever the file says now; its runs re-check
  // the prompt files against the locked hashes and refuse if they changed.
  const loaded: LoadedProtocol = {
    protocol: original.protocol,
    protocolPath: original.protocolPath,
    protocolHash: original.protocolHash,
    phaseId: original.phaseId,
    prompts: original.prompts,
    pricing: original.pricing,
    people: original.people,
  };
  const newId = `${phaseId}-reopen-${createHash('sha256').update(defect.trim()).digest('hex').slice(0, 8)}`;
  return startPhase(pc, loaded, { phaseId: newId, reopenOf: { phaseId, defect: defect.trim() } });
}

export interface PhaseVerification extends VerifyReport {
  dir: string;
  /** Every gate decision frozen in phase.json, checked again offline: signer, key, phase, signature. */
  decisions: { checked: number; problems: string[] };
}

/** The phase's start input: from its record, else from Temporal's history (for phases older than their records). */
export async function phaseInput(pc: PhaseClient, phaseId: string): Promise<PhaseInput> {
  const record = await readRecord(pc, checkPhaseId(phaseId));
  if (record instanceof RecordUnreadable) throw unreadable(record);
  return record?.input ?? (await startInputFromHistory(pc, phaseId));
}

/** The start input of a phase's first run, from Temporal's history (for phases older than their records). */
async function startInputFromHistory(pc: PhaseClient, phaseId: string): Promise<PhaseInput> {
  const first = (await pc.client.workflowService.getWorkflowExecutionHistory({ namespace: pc.client.options.namespace, execution: { workflowId: phaseId }, maximumPageSize: 1 })).history?.events?.[0];
  const payload = first?.workflowExecutionStartedEventAttributes?.input?.payloads?.[0]?.data;
  if (!payload) throw new PhaseError('failed', `cannot read the start input of ${phaseId}`);
  return JSON.parse(Buffer.from(payload).toString('utf8')) as PhaseInput;
}

export async function verifyPhase(pc: PhaseClient, phaseId: string): Promise<PhaseVerification> {
  const state = await getState(pc, phaseId);
  if (state.freeze === null) throw new PhaseError('refused', `phase ${phaseId} is ${state.status}: nothing frozen to verify`);
  if (!isStoreRef(state.freeze.dir)) return verifyFrozenDir(state.freeze.dir, state.freeze.manifestSha256);
  return verifyStored(pc, state.freeze.dir, state.freeze.manifestSha256);
}

/** Verifies a frozen set in the artifact store: a fresh download of every object, checked like a folder. */
async function verifyStored(pc: PhaseClient, ref: string, manifestSha256: string): Promise<PhaseVerification> {
  if (pc.store === undefined || pc.store.kind === 'local') {
    throw new PhaseError('invalid', `the phase was frozen to ${ref}: set PHASEGATE_ARTIFACT_STORE=s3 and the PHASEGATE_S3_* settings of that store to verify it`);
  }
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'phasegate-verify-'));
  try {
    const dir = await pc.store.fetch(ref, scratch);
    if (dir === null) throw new PhaseError('failed', `nothing is stored under ${ref}`);
    return { ...verifyFrozenDir(dir, manifestSha256), dir: ref };
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}

/**
 * Checks a frozen folder without Temporal: every file against the manifest (and the manifest against the sha256
 * recorded at freeze, when given), then every decision in phase.json against the roster frozen beside it.
 */
export function verifyFrozenDir(dir: string, manifestSha256?: string): PhaseVerification {
  const files = verifyManifest(dir, manifestSha256);
  const decisions = verifyFrozenDecisions(dir);
  return { ...files, ok: files.ok && decisions.problems.length === 0, dir: path.resolve(dir), decisions };
}

function verifyFrozenDecisions(dir: string): PhaseVerification['decisions'] {
  let phase: { phaseId: string; protocolHash: string; people: Record<string, string>; state: PhaseState };
  try {
    phase = JSON.parse(readFileSync(path.join(dir, 'phase.json'), 'utf8')) as typeof phase;
  } catch {
    return { checked: 0, problems: ['phase.json: missing or not valid JSON'] };
  }
  if (phase.people === undefined || phase.state?.budget === undefined) return { checked: 0, problems: ['phase.json: holds no roster or decisions (frozen by an older phasegate?)'] };
  const checked = phase.state.budget.approvals.length + (phase.state.budget.rejection ? 1 : 0) + (phase.state.review ? 1 : 0);
  // Each signature holds, and together they account for the gates this phase passed and the amount it was given.
  const problems = [...decisionRecordProblems(phase, phase.state), ...gateProblems(phase.state)];
  if (lockHashOf(phase as unknown as PhaseInput) !== phase.protocolHash) problems.unshift('phase.json: the protocol, prompts, pricing and people frozen there do not hash to its protocolHash');
  return { checked, problems };
}
