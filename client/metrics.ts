/**
 * Prometheus metrics of phases, computed at scrape time from the phase records (common/phase-records.ts), which
 * the workflow rewrites at every change of status, decision and attempt: no Temporal round trip per scrape, and
 * phases past Temporal's retention still count. A fresh registry per scrape: nothing is kept between scrapes.
 * (The Temporal SDK's own worker metrics are served by the worker process: see worker/worker.ts.)
 */
import { Counter, Gauge, Registry } from 'prom-client';
import type { PhaseRecords } from '../common/phase-records';
import { ACTIVE_STATUSES, TERMINAL_STATUSES } from '../workflows/definitions';
import { spentUsd } from '../workflows/phase-logic';

/** When the phase's current gate opened: the last transition into its waiting status. */
function gateOpenedAt(events: { at: string; kind: string; message: string }[], status: string, startedAt: string): string {
  const into = events.filter((e) => e.kind === 'transition' && e.message.includes(`-> ${status}:`));
  return into.length > 0 ? into[into.length - 1]!.at : startedAt;
}

export async function phaseMetrics(records: PhaseRecords, now: Date = new Date()): Promise<Registry> {
  const registry = new Registry();
  const phases = new Gauge({ name: 'phasegate_phases', help: 'Phases by status (from the phase records)', labelNames: ['status'], registers: [registry] });
  const waiting = new Gauge({ name: 'phasegate_gate_waiting_seconds', help: 'Seconds an open gate has been waiting for its decision', labelNames: ['phase_id', 'gate'], registers: [registry] });
  const approved = new Gauge({ name: 'phasegate_budget_approved_usd', help: 'Budget approved per phase', labelNames: ['phase_id'], registers: [registry] });
  const spent = new Gauge({ name: 'phasegate_budget_spent_usd', help: 'Spend charged per phase (the ledger)', labelNames: ['phase_id'], registers: [registry] });
  const attempts = new Counter({ name: 'phasegate_attempts_total', help: 'Model attempts by outcome (ledger lines)', labelNames: ['outcome'], registers: [registry] });
  const runtime = new Counter({ name: 'phasegate_runtime_seconds_total', help: 'Runtime seconds charged, by GPU type', labelNames: ['gpu'], registers: [registry] });
  for (const status of [...ACTIVE_STATUSES, ...TERMINAL_STATUSES]) phases.set({ status }, 0);
  const listed = await records.list();
  new Gauge({ name: 'phasegate_records_unreadable', help: 'Phase records that are there but cannot be read', registers: [registry] }).set(listed.unreadable.length);
  for (const r of listed.records) {
    const s = r.state;
    phases.inc({ status: s.status });
    approved.set({ phase_id: r.phaseId }, s.budget.approvedUsd);
    spent.set({ phase_id: r.phaseId }, spentUsd(s.ledger));
    if (s.status === 'AWAITING_BUDGET' || s.status === 'AWAITING_REVIEW') {
      const opened = Date.parse(gateOpenedAt(s.events, s.status, s.startedAt));
      waiting.set({ phase_id: r.phaseId, gate: s.status === 'AWAITING_BUDGET' ? 'budget' : 'review' }, Math.max(0, (now.getTime() - opened) / 1000));
    }
    for (const e of s.ledger) {
      if (e.earlierRun === true) continue;
      attempts.inc({ outcome: e.outcome });
      runtime.inc({ gpu: e.gpu }, e.seconds);
    }
  }
  return registry;
}
