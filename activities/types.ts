/**
 * The activity interface the workflow proxies. The workflow imports this module as types only; the worker
 * builds the implementation with `createActivities`.
 */
import type {
  CallWindow,
  Estimate,
  FreezeRecord,
  LockedPrompts,
  PhaseInput,
  PhaseState,
  PreflightRecord,
  Notification,
  PricingSnapshot,
  ScoreSummary,
} from '../workflows/definitions';
import type { Protocol } from '../protocols/schema';

export interface EstimateInput {
  phaseId: string;
  protocol: Protocol;
  pricing: PricingSnapshot;
}

export interface RunModelInput {
  phaseId: string;
  protocol: Protocol;
  protocolHash: string;
  prompts: LockedPrompts;
  modelKey: string;
  attempt: number;
  /** The remote container's CPU and memory limits the pricing priced (Modal protocols; PricingSnapshot.container). */
  container?: { cpuCores: number; memoryGib: number };
}

export interface ModelRunResult {
  resultPath: string;
  /** Seconds the backend measured for this attempt (process wall time locally, container GPU time on Modal). */
  measuredSeconds: number;
  backendIds: Record<string, string>;
  /** When the backend run began (epoch ms, the worker's clock): charges start here, not when it was scheduled. */
  startedAtMs: number;
  /** Remote calls' billable windows (Modal); when present, the ledger line charges these instead. */
  windows?: CallWindow[];
}

export interface ScoreInput {
  phaseId: string;
  protocol: Protocol;
  /** model key -> the runtime's result.json */
  results: Record<string, string>;
}

export interface FreezeInput {
  input: PhaseInput;
  state: PhaseState;
}

export interface RecordInput {
  input: PhaseInput;
  state: PhaseState;
}

export interface ResumeCheckInput {
  phaseId: string;
  previousRunId: string;
  taskQueue: string;
  resume: PhaseState;
}

export type PreflightInput = Pick<RunModelInput, 'phaseId' | 'protocol' | 'prompts'>;

export interface ReleaseInput {
  phaseId: string;
  protocol: Protocol;
}

export interface ReleaseResult {
  /** Per model, the remote calls (or processes) that were still running and were stopped. */
  stopped: { modelKey: string; ids: string[]; windows?: CallWindow[] }[];
}

export interface PhaseActivities {
  recordPhase(input: RecordInput): Promise<void>;
  verifyResume(input: ResumeCheckInput): Promise<void>;
  estimatePhase(input: EstimateInput): Promise<Estimate>;
  runModel(input: RunModelInput): Promise<ModelRunResult>;
  scorePhase(input: ScoreInput): Promise<ScoreSummary>;
  freezePhase(input: FreezeInput): Promise<FreezeRecord>;
  releaseCompute(input: ReleaseInput): Promise<ReleaseResult>;
  preflightModels(input: PreflightInput): Promise<PreflightRecord>;
  /** Posts a notification to the configured webhooks (activities/notify.ts). */
  sendNotification(input: Notification): Promise<{ delivered: string[] }>;
}
