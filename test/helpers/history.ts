/** Reading a phase's workflow history in tests: which activities were scheduled, and when. */
import type { Client } from '@temporalio/client';
import { google, temporal } from '@temporalio/proto';

const EventType = temporal.api.enums.v1.EventType;

export interface ScheduledActivity {
  eventId: number;
  activityType: string;
}

export async function historyEvents(client: Client, workflowId: string): Promise<temporal.api.history.v1.IHistoryEvent[]> {
  const history = await client.workflow.getHandle(workflowId).fetchHistory();
  return history.events ?? [];
}

export function scheduledActivities(events: temporal.api.history.v1.IHistoryEvent[], type?: string): ScheduledActivity[] {
  return events
    .filter((e) => e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    .map((e) => ({ eventId: Number(e.eventId), activityType: e.activityTaskScheduledEventAttributes?.activityType?.name ?? '' }))
    .filter((a) => type === undefined || a.activityType === type);
}

/** The task queue each scheduled activity of this type was put on. */
export function activityQueues(events: temporal.api.history.v1.IHistoryEvent[], type: string): string[] {
  return events
    .filter((e) => e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED && e.activityTaskScheduledEventAttributes?.activityType?.name === type)
    .map((e) => e.activityTaskScheduledEventAttributes?.taskQueue?.name ?? '');
}

/**
 * Each scheduled activity's type with its start-to-close and heartbeat timeouts in seconds (null where unset): what
 * decides how long a task lost with its worker stays lost.
 */
export function activityTimeouts(events: temporal.api.history.v1.IHistoryEvent[]): { activityType: string; startToCloseSeconds: number | null; heartbeatSeconds: number | null }[] {
  // The server records an unset timeout as a zero duration.
  const seconds = (d: google.protobuf.IDuration | null | undefined): number | null => (d == null || Number(d.seconds ?? 0) + (d.nanos ?? 0) === 0 ? null : Number(d.seconds ?? 0) + (d.nanos ?? 0) / 1e9);
  return events
    .filter((e) => e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
    .map((e) => e.activityTaskScheduledEventAttributes!)
    .map((a) => ({ activityType: a.activityType?.name ?? '', startToCloseSeconds: seconds(a.startToCloseTimeout), heartbeatSeconds: seconds(a.heartbeatTimeout) }));
}

export function updateAcceptedEvents(events: temporal.api.history.v1.IHistoryEvent[], name: string): number[] {
  return events
    .filter((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED && e.workflowExecutionUpdateAcceptedEventAttributes?.acceptedRequest?.input?.name === name)
    .map((e) => Number(e.eventId));
}
