/**
 * Every message of the phase workflow, defined once: updates (the human gates), queries, search-attribute keys
 * and the shapes they carry. The workflow, the worker, the CLI, the HTTP API and the tests all import these;
 * no message is ever sent by a bare string.
 *
 * This module is part of the workflow bundle, so it holds types and Temporal definitions only (no zod, no Node).
 */
import { defineQuery, defineUpdate } from '@temporalio/workflow';
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';
import type { Protocol } from '../protocols/schema';
import type { ReviewVerdict, SignatureRecord, SignedDecision } from '../domain/decisions';

export type { ReviewVerdict, SignatureRecord, SignedDecision } from '../domain/decisions';

export const PHASE_WORKFLOW_TYPE = 'phaseWorkflow';

/** The task queue of a phase queue's model runs (worker/worker.ts): their own slots, never another step's. */
export const modelRunQueue = (phaseQueue: string): string => `${phaseQueue}-model-runs`;

/**
 * The task queue of a phase queue's preflights (the runtime loads each model's config and tokenizer on the worker's
 * CPU: seconds a model): their own slots, so that a new phase's estimate, a record write or a paid phase's scoring
 * never waits behind a batch of new phases' preflights.
 */
export const preflightQueue = (phaseQueue: string): string => `${phaseQueue}-preflights`;

/** Waiting states, the run states, and the terminal states of a phase. */
export const ACTIVE_STATUSES = [
  'AWAITING_BUDGET',
  'AWAITING_REVIEW',
  'RUNNING',
  'BUDGET_HOLD',
  'SCORING',
  'FREEZING',
] as const;
export const TERMINAL_STATUSES = ['FROZEN', 'REJECTED', 'CHANGES_REQUESTED', 'CANCELLED', 'FAILED'] as const;
export type ActiveStatus = (typeof ACTIVE_STATUSES)[number];
export type TerminalStatus = (typeof TERMINAL_STATUSES)[number];
export type PhaseStatus = ActiveStatus | TerminalStatus;

export function isTerminal(status: PhaseStatus): status is TerminalStatus {
  return (TERMINAL_STATUSES as readonly string[]).includes(status);
}

// ---- Search attributes: make phases filterable in the Temporal UI ------------------------------------------------
export const searchAttributes = {
  phaseName: defineSearchAttributeKey('PhaseName', SearchAttributeType.KEYWORD),
  phaseStatus: defineSearchAttributeKey('PhaseStatus', SearchAttributeType.KEYWORD),
  protocolHash: defineSearchAttributeKey('ProtocolHash', SearchAttributeType.KEYWORD),
} as const;

// ---- Workflow input ---------------------------------------------------------------------------------------------
/** A prompt file as locked at start: its absolute path and the sha256 of its content. */
export interface LockedFile {
  path: string;
  sha256: string;
}

export interface LockedPrompts {
  harmful: LockedFile;
  harmless: LockedFile;
  eval: LockedFile;
}

/** The pricing table snapshot taken at start, so cost arithmetic in the workflow is deterministic. */
export interface PricingSnapshot {
  source: string;
  readOn: string;
  /** What one second of each GPU type costs at most; on Modal, the container's CPU and memory included. */
  usdPerSecond: Record<string, number>;
  sha256: string;
  /** A Modal protocol's container limits, priced into usdPerSecond (absent on the local backend). */
  container?: { cpuCores: number; memoryGib: number; usdPerSecond: number };
}

export interface PhaseInput {
  phaseId: string;
  protocol: Protocol;
  protocolHash: string;
  protocolPath: string;
  prompts: LockedPrompts;
  pricing: PricingSnapshot;
  /** Everyone who may decide, name -> `ed25519:` public key; part of the protocol hash (domain/lock.ts). */
  people: Record<string, string>;
  /**
   * The ledger of an earlier run of this phase that FAILED or was CANCELLED: a restart resumes from its
   * checkpoints, so its spend counts against the new approval too.
   */
  priorLedger?: LedgerEntry[];
  /** Set when this phase reopens a frozen one; its artifacts are never touched. */
  reopenOf?: { phaseId: string; defect: string };
  /**
   * Carried through continue-as-new: the state the next run resumes from. Accepted only when this run was
   * started by the phase's own continue-as-new; a client start that carries it is refused.
   */
  resume?: PhaseState;
  /**
   * false only on a server that cannot register custom search attributes (the time-skipping test server);
   * the phase then skips upserting PhaseName/PhaseStatus/ProtocolHash. Default true.
   */
  publishSearchAttributes?: boolean;
  /** Tests lower this to exercise continue-as-new; production relies on the server's suggestion. */
  continueAsNewAfterEvents?: number;
}

// ---- State ------------------------------------------------------------------------------------------------------
/** Every decision keeps the signature the workflow checked, so `verify` can check it again offline. */
export interface BudgetApproval {
  by: string;
  usd: number;
  usdMicros: number;
  note: string;
  at: string;
  signature: SignatureRecord;
}

export interface BudgetRejection {
  by: string;
  reason: string;
  at: string;
  signature: SignatureRecord;
}

export interface ReviewDecision {
  by: string;
  verdict: ReviewVerdict;
  ref: string;
  notes: string;
  at: string;
  signature: SignatureRecord;
}

export interface ModelEstimate {
  modelKey: string;
  gpu: string;
  gpuSeconds: number;
  usdPerSecond: number;
  usd: number;
  /** 'protocol' when the protocol's prior was used, 'calibrated' when earlier frozen runs were. */
  basis: 'protocol' | 'calibrated';
  basisDetail: string;
}

export interface Estimate {
  models: ModelEstimate[];
  totalUsd: number;
}

export type AttemptOutcome = 'succeeded' | 'failed' | 'cancelled' | 'timed_out';

/** One ledger line per real attempt; failed attempts are charged too, as they are on a real bill. */
export interface LedgerEntry {
  modelKey: string;
  attempt: number;
  gpu: string;
  seconds: number;
  usd: number;
  outcome: AttemptOutcome;
  /**
   * 'measured' when the backend measured the seconds; 'observed' when only the workflow's clock saw them;
   * 'container' for the billable windows of remote calls (Modal: spawn request to end, plus idle and stop), each
   * call-second charged once however many attempts reported it (see `calls`).
   */
  secondsBasis: 'measured' | 'observed' | 'container';
  /** The spans of remote calls this line charged ('container' lines), so that no later line charges them again. */
  calls?: ChargedSpan[];
  startedAt: string;
  endedAt: string;
  backendIds: Record<string, string>;
  error?: string;
  /** true for lines carried over from an earlier run of the same phase (see PhaseInput.priorLedger). */
  earlierRun?: boolean;
}

/** A remote call's billable time as a backend reports it (epoch ms on the worker's clock). */
export interface CallWindow {
  callId: string;
  fromMs: number;
  toMs: number;
  /** 'cpu' for a CPU-only helper call (the weight download), priced at the 'cpu' rate. */
  resource: 'gpu' | 'cpu';
}

/** The part of a call window that one ledger line charged. */
export interface ChargedSpan {
  callId: string;
  from: string;
  to: string;
  resource: 'gpu' | 'cpu';
}

export type ModelRunStatus = 'pending' | 'running' | 'succeeded' | 'failed' | 'cancelled';

export interface ModelProgress {
  modelKey: string;
  status: ModelRunStatus;
  attempts: number;
  resultPath?: string;
  lastError?: string;
  backendIds: Record<string, string>;
}

export interface PhaseEvent {
  at: string;
  kind: 'transition' | 'reminder' | 'decision' | 'attempt' | 'note';
  message: string;
}

/** Numbers are null where nothing could be measured (e.g. a method with no successful repeat). */
export interface PairParity {
  a: string;
  b: string;
  cosine: number | null;
  l2: number | null;
  /** The decoded texts identical in every repeat (score v2; the model's outputsIdentical compares token ids). */
  textsIdentical?: boolean;
}

export interface RateStat {
  mean: number | null;
  std: number | null;
}

export interface MethodScore {
  nOk: number;
  coherent: RateStat;
  garbled: RateStat;
  normal: RateStat;
  withinMethodCosineMin: number | null;
  /** The fraction of eval prompts whose steered token ids differ from the baseline's (score v2). */
  changedFraction?: RateStat;
}

/** An independent direction, from output_hidden_states by code that shares nothing with the methods. */
export interface ReferenceCheck {
  ok: boolean;
  error: string | null;
  /** Per method, worst over repeats. */
  methods: Record<string, { cosine: number | null; l2: number | null; withinThresholds: boolean }>;
}

/** Steering at the site: steered residual − unsteered = alpha × direction, and what the steering changed. */
export interface SteeringCheck {
  siteExact: boolean;
  maxAbsError: number | null;
  forwardPasses: number;
  positions: number;
  /** Passes that must not be steered (baseline, direction reads): their largest change. */
  unsteeredMaxAbsError: number | null;
  changedFractionMin: number | null;
  minChangedFraction: number;
  visible: boolean;
}

/** Repeat 0 of each method generated through the library's own path on transformers' generate. */
export interface NativeCheck {
  allIdentical: boolean;
  methods: Record<string, { ok: boolean; error: string | null; tokensIdentical: boolean; readCosine: number | null; wallS: number | null }>;
}

/** The numerics a model's run actually used (fused kernels resolved from "auto"). */
export interface NumericsUsed {
  decoder: string;
  fusedKernels: boolean;
  /** Which fused pieces ran: the bit-exact ones or all (absent in results written before it was recorded). */
  fusedMode?: 'off' | 'exact' | 'all';
  cudaGraphs: boolean;
  groupedEager: boolean;
}

/**
 * The proof checks (reference, steering, native, integrity, numerics, failures) are optional: scores recorded
 * before score v2 do not carry them, and recorded histories must still replay.
 */
export interface ModelScore {
  modelKey: string;
  methods: Record<string, MethodScore>;
  pairs: PairParity[];
  /** Steered token ids identical across methods. */
  outputsIdentical: boolean;
  parityPass: boolean;
  /** Methods with every repeat ok, every pair they are in within thresholds and identical outputs. */
  methodsPassing: string[];
  /** Every reason parity_pass is false, human-readable; empty when it passes. */
  failures?: string[];
  reference?: ReferenceCheck;
  steering?: SteeringCheck;
  native?: NativeCheck;
  integrity?: { ok: boolean; problems: string[] };
  numerics?: NumericsUsed;
}

export interface ScoreSummary {
  models: ModelScore[];
  parityPass: boolean;
  scorePath: string;
}

export interface FreezeRecord {
  dir: string;
  manifestPath: string;
  /** sha256 of MANIFEST.sha256 itself, kept in workflow history: a regenerated manifest does not pass `verify`. */
  manifestSha256: string;
  reportPath: string;
  fileCount: number;
  gitCommit: string;
  gitDirty: boolean;
}

/** What the preflight checked on a CPU before any GPU run, and what it could not check there (and why). */
export interface PreflightRecord {
  checked: string[];
  notChecked: { modelKey: string; why: string }[];
}

export interface PhaseState {
  phaseId: string;
  phaseName: string;
  protocolHash: string;
  status: PhaseStatus;
  startedAt: string;
  estimate: Estimate | null;
  /** approvedMicros is the approval in integer micro-dollars; approvedUsd the same in dollars, for display. */
  budget: { approvedUsd: number; approvedMicros: number; approvals: BudgetApproval[]; rejection: BudgetRejection | null };
  review: ReviewDecision | null;
  models: ModelProgress[];
  ledger: LedgerEntry[];
  score: ScoreSummary | null;
  freeze: FreezeRecord | null;
  /** The preflight before the first dispatch (absent on phases started before it existed). */
  preflight?: PreflightRecord;
  events: PhaseEvent[];
  /** Keys of decisions already applied, so that a resent decision is acknowledged but applied once. */
  appliedDecisions: string[];
  failure: string | null;
  reopenOf: { phaseId: string; defect: string } | null;
  continuedAsNew: number;
  /**
   * The id of the first Temporal run of this phase's chain: every decision is signed for it (domain/decisions.ts).
   * Absent only in states recorded before decisions were bound to a run.
   */
  run?: string;
}

// ---- Run plan: what the reviewer reads before deciding ------------------------------------------------------------
export interface RunPlan {
  phaseId: string;
  protocolHash: string;
  commands: string[];
  expectedArtifacts: string[];
  stopConditions: string[];
  estimate: Estimate | null;
}

// ---- Updates (human gates): each carries a decision signed by its person (domain/decisions.ts) ----------------------
export type ApproveBudgetInput = SignedDecision<'approve-budget'>;
export type RejectBudgetInput = SignedDecision<'reject-budget'>;
export type SubmitReviewInput = SignedDecision<'review'>;

export interface DecisionResult {
  /** false when the same decision had already been applied: it is acknowledged, not applied again. */
  applied: boolean;
  status: PhaseStatus;
  approvedUsd: number;
}

export const approveBudgetUpdate = defineUpdate<DecisionResult, [ApproveBudgetInput]>('approveBudget');
export const rejectBudgetUpdate = defineUpdate<DecisionResult, [RejectBudgetInput]>('rejectBudget');
export const submitReviewUpdate = defineUpdate<DecisionResult, [SubmitReviewInput]>('submitReview');

// ---- Queries --------------------------------------------------------------------------------------------------------
export const stateQuery = defineQuery<PhaseState>('state');
export const planQuery = defineQuery<RunPlan>('plan');

// ---- Errors the caller sees (ApplicationFailure types) ------------------------------------------------------------
export const ErrorTypes = {
  /** An input the runtime or an activity refused: retrying cannot help. */
  invalidInput: 'InvalidInput',
  /** A file locked by the protocol hash changed after the phase started. */
  lockViolation: 'LockViolation',
  /** Credentials for a compute backend are missing. */
  missingCredentials: 'MissingCredentials',
  /** A failure worth retrying (a crashed runtime, a lost GPU). */
  runtimeFailure: 'RuntimeFailure',
  /** The artifact folder of a frozen phase would be touched. */
  alreadyFrozen: 'AlreadyFrozen',
  /** An update validator refused a decision (the message says why). */
  decisionRefused: 'DecisionRefused',
  /** The artifact store refused an operation (access denied, no such bucket): a configuration to fix. */
  artifactStoreRefused: 'ArtifactStoreRefused',
  /** The phase ended FAILED (its final state is the failure's detail). */
  phaseFailed: 'PhaseFailed',
} as const;

/** Heartbeat details of a model run, read by `status` from the pending activity. */
export interface RunProgress {
  stage: 'launching' | 'loading' | 'running' | 'finishing';
  unitsDone: number;
  unitsTotal: number;
  lastUnit: string | null;
  backendIds: Record<string, string>;
}

/** What the phase announces to people through webhooks (workflows/notify.ts). */
export const NOTIFY_EVENTS = ['gate-opened', 'reminder', 'budget-hold', 'frozen', 'failed'] as const;
export type NotifyEvent = (typeof NOTIFY_EVENTS)[number];

export interface Notification {
  /** The idempotency key: the same event of the same phase always has the same key. */
  key: string;
  event: NotifyEvent;
  phaseId: string;
  phaseName: string;
  status: PhaseStatus;
  gate: 'budget' | 'review' | null;
  message: string;
  at: string;
}
