/**
 * Notifications to people when a phase needs them or ends: a gate opened, a gate's deadline passed, a budget
 * hold, a freeze, a failure. Each is a small child workflow (abandoned by its parent, so it outlives a phase
 * that ends) that runs the `sendNotification` activity with retries: durable and at least once, never blocking
 * or failing the phase. Its id is the notification's idempotency key, derived from the phase's own state, so a
 * replayed or continued phase cannot post the same event twice under different keys, and receivers can drop
 * duplicates of a retried delivery by that key.
 *
 * Part of the workflow bundle: pure, no Node.
 */
import { ParentClosePolicy, patched, proxyActivities, startChild, WorkflowIdReusePolicy } from '@temporalio/workflow';
import type { PhaseActivities } from '../activities/types';
import type { Notification, NotifyEvent, PhaseState, PhaseStatus } from './definitions';

// A dead webhook is retried for about a day, then given up: it never holds the phase, which does not wait for it.
const { sendNotification } = proxyActivities<PhaseActivities>({
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '5 seconds', backoffCoefficient: 2, maximumInterval: '10 minutes', maximumAttempts: 150 },
});

export async function notifyWorkflow(n: Notification): Promise<void> {
  await sendNotification(n);
}

/** The statuses whose entry is announced (gates opening are announced where the phase waits on them). */
const ANNOUNCED: Partial<Record<PhaseStatus, NotifyEvent>> = { BUDGET_HOLD: 'budget-hold', FROZEN: 'frozen', FAILED: 'failed' };

export const announcedEvent = (status: PhaseStatus): NotifyEvent | undefined => ANNOUNCED[status];

/**
 * Starts the notification of `event` for the phase as it is now; returns at once. Phases started before
 * notifications existed replay without them (patch `notify-webhooks`).
 */
export function notifyPeople(state: PhaseState, event: NotifyEvent, detail: { gate?: 'budget' | 'review'; message: string; at: string }): void {
  if (!patched('notify-webhooks')) return;
  // This run of the phase (a restart after a failure is a new one; continue-as-new keeps it), then the count of
  // its transitions and reminders, which only ever grow: together with the event they name this occurrence.
  const run = state.startedAt.replace(/[^0-9]/g, '');
  const count = (kind: string): number => state.events.filter((e) => e.kind === kind).length;
  const key = `${state.phaseId}--${run}-${event}${detail.gate ? `-${detail.gate}` : ''}-${count('transition')}-${count('reminder')}`;
  const n: Notification = { key, event, phaseId: state.phaseId, phaseName: state.phaseName, status: state.status, gate: detail.gate ?? null, message: detail.message, at: detail.at };
  startChild(notifyWorkflow, {
    workflowId: key,
    args: [n],
    parentClosePolicy: ParentClosePolicy.ABANDON,
    workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
  }).catch(() => {
    // Already sent under this key (the phase replayed its way here again): nothing to do.
  });
}
