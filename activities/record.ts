/**
 * The `recordPhase` activity: writes the phase record (common/phase-records.ts) from the workflow's state. A
 * start of a phase whose record is FROZEN (its history deleted, its id free again in Temporal) is refused here,
 * before any gate opens: the first thing a phase does is record itself.
 */
import type { Client } from '@temporalio/client';
import { ApplicationFailure, defaultPayloadConverter } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import { canonicalJson } from '../domain/canonical';
import { RecordRefused, type PhaseRecords } from '../common/phase-records';
import { ErrorTypes, PHASE_WORKFLOW_TYPE, type PhaseInput } from '../workflows/definitions';
import { storeFailure } from './artifacts';
import type { RecordInput, ResumeCheckInput } from './types';

export async function recordPhase(deps: { records: PhaseRecords }, { input, state }: RecordInput): Promise<void> {
  try {
    await deps.records.write(input, state);
  } catch (err) {
    if (err instanceof RecordRefused) throw ApplicationFailure.create({ type: ErrorTypes.alreadyFrozen, message: err.message, nonRetryable: true });
    throw storeFailure(err);
  }
}

/**
 * A resumed state is trusted only if the run it continues was this phase's own: a `phaseWorkflow` on this task
 * queue that ended by continuing as new with exactly this state. (A cron run, a retry, or another workflow type
 * continuing into this one carries a previous run id too.) Its own start was checked the same way, so the chain
 * goes back to a checked start.
 */
export async function verifyResume(client: Client, i: ResumeCheckInput): Promise<void> {
  const refuse = (why: string): never => {
    throw ApplicationFailure.create({ type: ErrorTypes.invalidInput, message: `resume: ${why}`, nonRetryable: true });
  };
  const events = (await client.workflow.getHandle(i.phaseId, i.previousRunId).fetchHistory()).events ?? [];
  const started = events[0]?.workflowExecutionStartedEventAttributes;
  if (started?.workflowType?.name !== PHASE_WORKFLOW_TYPE) refuse('the previous run is not a phase workflow');
  if (started?.taskQueue?.name !== i.taskQueue) refuse('the previous run ran on another task queue');
  const last = events[events.length - 1];
  if (last?.eventType !== temporal.api.enums.v1.EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW) refuse('the previous run did not continue as new');
  const payload = last?.workflowExecutionContinuedAsNewEventAttributes?.input?.payloads?.[0];
  const carried = payload ? defaultPayloadConverter.fromPayload<PhaseInput>(payload).resume : undefined;
  if (carried === undefined || canonicalJson(carried) !== canonicalJson(i.resume)) refuse('not the state the previous run continued with');
}
