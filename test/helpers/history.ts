/** Reading a phase's workflow history in tests: which activities were scheduled, and when. */
import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';

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

export function updateAcceptedEvents(events: temporal.api.history.v1.IHistoryEvent[], name: string): number[] {
  return events
    .filter((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED && e.workflowExecutionUpdateAcceptedEventAttributes?.acceptedRequest?.input?.name === name)
    .map((e) => Number(e.eventId));
}
