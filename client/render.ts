/** Plain-text views of a phase for the terminal. Pure functions of the data. */
import type { PhaseState, RunPlan, SignatureRecord } from '../workflows/definitions';
import { formatMicros } from '../domain/money';
import { spentUsd } from '../workflows/phase-logic';
import type { StatusView } from './phases';

const usd = (v: number | null): string => (v === null ? 'n/a' : `$${v.toFixed(4)}`);

function bar(done: number, total: number, width = 20): string {
  const filled = total > 0 ? Math.round((done / total) * width) : 0;
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total}`;
}

export function renderStatus(v: StatusView): string {
  const lines = [
    `${v.phaseId}  ${v.status}${v.workflowStatus !== 'RUNNING' && v.workflowStatus !== 'COMPLETED' ? ` (workflow ${v.workflowStatus})` : ''}`,
    `  protocol  ${v.protocolHash.slice(0, 16)}…  (${v.phase})`,
    `  budget    estimate ${usd(v.estimateUsd)} · approved ${usd(v.approvedUsd)} · spent ${usd(v.spentUsd)} · remaining ${usd(v.remainingUsd)}`,
  ];
  const signed = (s: SignatureRecord): string => `signature verified, key ${s.keyFingerprint}`;
  for (const a of v.gates.budget.approvals) lines.push(`  approval  ${a.by} ${formatMicros(a.usdMicros)} at ${a.at} (${signed(a.signature)})${a.note ? ` — ${a.note}` : ''}`);
  const rejection = v.gates.budget.rejection;
  if (rejection) lines.push(`  rejected  by ${rejection.by} at ${rejection.at} (${signed(rejection.signature)}): ${rejection.reason}`);
  if (v.gates.review) lines.push(`  review    ${v.gates.review.verdict} by ${v.gates.review.by} at ${v.gates.review.at} (${signed(v.gates.review.signature)})${v.gates.review.ref ? ` ref ${v.gates.review.ref}` : ''}`);
  for (const m of v.models) {
    const progress = m.progress ? ` ${bar(m.progress.unitsDone, m.progress.unitsTotal)}${m.progress.lastUnit ? ` ${m.progress.lastUnit}` : ''}` : '';
    const parity = m.parityPass === null ? '' : ` parity_pass=${String(m.parityPass)}`;
    lines.push(`  model     ${m.modelKey.padEnd(16)} ${m.status.padEnd(10)} attempts ${m.attempts}${progress}${parity}`);
  }
  if (v.parityPass !== null) lines.push(`  parity    ${v.parityPass ? 'PASS' : 'FAIL'}`);
  if (v.artifactDir) lines.push(`  artifacts ${v.artifactDir}`);
  if (v.reportPath) lines.push(`  report    ${v.reportPath}`);
  if (v.failure) lines.push(`  failure   ${v.failure}`);
  const reminders = v.events.filter((e) => e.kind === 'reminder');
  if (reminders.length > 0) lines.push(`  reminder  ${reminders[reminders.length - 1]!.message}`);
  return lines.join('\n');
}

export function renderPlan(plan: RunPlan): string {
  return [
    `Run plan for ${plan.phaseId} (protocol ${plan.protocolHash.slice(0, 16)}…)`,
    '',
    'Commands:',
    ...plan.commands.map((c) => `  ${c}`),
    '',
    'Expected artifacts:',
    ...plan.expectedArtifacts.map((a) => `  ${a}`),
    '',
    'Stop conditions:',
    ...plan.stopConditions.map((s) => `  - ${s}`),
    '',
    'Estimate:',
    ...(plan.estimate
      ? [
          ...plan.estimate.models.map((m) => `  ${m.modelKey.padEnd(16)} ${m.gpu.padEnd(10)} ${m.gpuSeconds.toFixed(0).padStart(7)} s x $${m.usdPerSecond}/s = ${usd(m.usd)}  (${m.basisDetail})`),
          `  total ${usd(plan.estimate.totalUsd)}`,
        ]
      : ['  (not computed yet)']),
  ].join('\n');
}

export function renderLedger(state: PhaseState): string {
  const rows = state.ledger.map(
    (e) => `  ${e.modelKey.padEnd(16)} #${e.attempt} ${e.gpu.padEnd(10)} ${e.seconds.toFixed(1).padStart(8)} s ${e.secondsBasis.padEnd(8)} ${usd(e.usd).padStart(10)}  ${e.outcome}${e.error ? `: ${e.error.slice(0, 80)}` : ''}`,
  );
  return [
    `Ledger of ${state.phaseId}: estimate ${usd(state.estimate?.totalUsd ?? null)}, approved ${usd(state.budget.approvedUsd)}, spent ${usd(spentUsd(state.ledger))}`,
    ...(rows.length > 0 ? rows : ['  (no attempts yet)']),
  ].join('\n');
}
