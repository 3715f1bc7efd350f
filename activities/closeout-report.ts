/**
 * The closeout report, in the structure of the hand-written Phase-1 closeout (scope, protocol lock, canonical
 * artifacts, per-model results, cross-model closure, provenance, limitations, next-phase hand-off), generated
 * from data only. Pure: the freeze activity gathers the data and writes the file.
 */
import type { FreezeInput } from './types';
import type { LedgerEntry, ModelScore, PhaseState, RateStat, SignatureRecord } from '../workflows/definitions';
import { formatMicros } from '../domain/money';
import { spentUsd } from '../workflows/phase-logic';

export interface ModelArtifactRef {
  modelKey: string;
  modelId: string;
  gpu: string;
  artifactPath: string;
  backendIds: Record<string, string>;
  resolvedPath: string;
  versions: Record<string, string>;
}

export interface CloseoutData {
  freeze: FreezeInput;
  generatedAt: string;
  gitCommit: string;
  gitDirty: boolean;
  models: ModelArtifactRef[];
}

const pct = (r: RateStat): string => (r.mean === null || r.std === null ? 'n/a' : `${(r.mean * 100).toFixed(1)}% ± ${(r.std * 100).toFixed(1)}`);
const fixed = (v: number | null, digits: number): string => (v === null ? 'n/a' : v.toFixed(digits));
const sci = (v: number | null): string => (v === null ? 'n/a' : v.toExponential(3));
const usd = (v: number): string => `$${v.toFixed(4)}`;
/** A table cell: pipes and line breaks in user text (notes, refs, errors) would break the Markdown table. */
const cell = (text: string): string => text.replace(/\|/g, '\\|').replace(/\s*\n\s*/g, ' ');
const table = (head: string[], rows: string[][]): string =>
  [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');

function range(maybe: (number | null)[]): string {
  const values = maybe.filter((v): v is number => v !== null);
  if (values.length === 0) return 'n/a';
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  return lo === hi ? `${(lo * 100).toFixed(1)}%` : `${(lo * 100).toFixed(1)}–${(hi * 100).toFixed(1)}%`;
}

function modelSection(score: ModelScore, repeats: number): string {
  const methods = Object.entries(score.methods);
  return [
    `#### ${score.modelKey} (n=${repeats} repeats)`,
    '',
    table(
      ['Method', 'n_ok', 'coherent (mean±std)', 'garbled (mean±std)', 'normal (mean±std)', 'within-method cosine (min)'],
      methods.map(([name, m]) => [name, String(m.nOk), pct(m.coherent), pct(m.garbled), pct(m.normal), fixed(m.withinMethodCosineMin, 10)]),
    ),
    '',
    `**Pairwise parity (${score.modelKey})**, float64, worst over repeats:`,
    '',
    score.pairs.length === 0
      ? '_one method: no pairs_'
      : table(['Pair', 'cosine (min)', 'L2 (max)'], score.pairs.map((p) => [`${p.a} ↔ ${p.b}`, fixed(p.cosine, 10), sci(p.l2)])),
    '',
    `Steered outputs identical across methods: **${String(score.outputsIdentical)}**`,
    '',
    `**parity_pass: ${String(score.parityPass)}**`,
  ].join('\n');
}

function ledgerTable(ledger: LedgerEntry[]): string {
  if (ledger.length === 0) return '_no attempts_';
  return table(
    ['Model', 'Attempt', 'GPU', 'Seconds', 'Basis', 'USD', 'Outcome'],
    ledger.map((e) => [e.modelKey, `${e.attempt}${e.earlierRun ? ' (earlier run)' : ''}`, e.gpu, e.seconds.toFixed(1), e.secondsBasis, usd(e.usd), cell(e.outcome + (e.error ? ` (${e.error.slice(0, 80)})` : ''))]),
  );
}

function gates(state: PhaseState): string {
  const signed = (s: SignatureRecord): string => `signature verified, key \`${s.keyFingerprint}\``;
  const approvals = state.budget.approvals.map((a) => `- Budget approved by **${a.by}**: ${formatMicros(a.usdMicros)} (${a.at}; ${signed(a.signature)})${a.note ? ` — ${cell(a.note)}` : ''}`);
  const review = state.review
    ? `- Review: **${state.review.verdict}** by **${state.review.by}** (${state.review.at}; ${signed(state.review.signature)})${state.review.ref ? `, ref ${cell(state.review.ref)}` : ''}${state.review.notes ? ` — ${cell(state.review.notes)}` : ''}`
    : '- Review: none recorded';
  const reminders = state.events.filter((e) => e.kind === 'reminder').map((e) => `- Reminder: ${e.message} (${e.at})`);
  return [...approvals, review, ...reminders].join('\n');
}

export function renderCloseout(data: CloseoutData): string {
  const { input, state } = data.freeze;
  const p = input.protocol;
  const score = state.score;
  const scores = score?.models ?? [];
  const spent = spentUsd(state.ledger);
  const closure = scores.map((s) => {
    const ms = Object.values(s.methods);
    return [s.modelKey, `${s.methodsPassing.length}/${ms.length}`, String(s.parityPass), range(ms.map((m) => m.coherent.mean)), range(ms.map((m) => m.garbled.mean)), range(ms.map((m) => m.normal.mean))];
  });
  return [
    `# ${p.title} — Closeout`,
    '',
    `**Phase:** \`${input.phaseId}\`  `,
    `**Generated:** ${data.generatedAt} by phasegate from workflow state (not edited by hand)  `,
    `**Status:** FROZEN — artifacts read-only, listed with sha256 in MANIFEST.sha256; \`phasegate verify ${input.phaseId}\` rechecks them.`,
    input.reopenOf ? `**Reopens:** \`${input.reopenOf.phaseId}\` because: ${input.reopenOf.defect}` : '',
    '',
    '---',
    '',
    '## 1. Scope Statement',
    '',
    p.scope,
    '',
    table(['Model key', 'Model', 'GPU'], p.models.map((m) => [m.key, `\`${m.id}\``, m.gpu])),
    '',
    '## 2. Protocol Lock',
    '',
    table(['Parameter', 'Value'], [
      ['Protocol hash', `\`${input.protocolHash}\``],
      ['Eval prompts', String(p.eval_prompt_count)],
      ['Sampling', `Greedy decode (do_sample=false), max new tokens ${p.sampling.max_new_tokens}, batch ${p.sampling.batch_size}`],
      ['Repeats', String(p.repeats)],
      ['Methods', p.methods.join(', ')],
      ['Execution', `${p.backend} backend (${p.models.map((m) => `${m.gpu} for ${m.key}`).join(', ')})`],
      ['Steering site', `Residual stream, output of decoder block ${p.site.layer} (= hidden_states[${p.site.layer + 1}]), token position ${p.site.position}`],
      ['Direction', 'Mean-difference (harmful − harmless), L2-normalized'],
      ['Steering alpha', String(p.steering.alpha)],
      ['Parity thresholds', `cosine ≥ ${p.parity.min_cosine}, L2 ≤ ${p.parity.max_l2}`],
      ['Prompt files', `harmful ${input.prompts.harmful.sha256.slice(0, 12)}…, harmless ${input.prompts.harmless.sha256.slice(0, 12)}…, eval ${input.prompts.eval.sha256.slice(0, 12)}…`],
      ['Pricing', `${input.pricing.source} (read ${input.pricing.readOn})`],
    ]),
    '',
    '## 3. Gates',
    '',
    gates(state),
    '',
    '## 4. Canonical Artifacts',
    '',
    table(['Model', 'Artifact Path', 'Backend ids'], data.models.map((m) => [m.modelKey, `\`${m.artifactPath}\``, Object.entries(m.backendIds).map(([k, v]) => `${k}=${v}`).join(', ') || '—'])),
    '',
    '## 5. Results Summary',
    '',
    '### Per-Model, Per-Method Metrics',
    '',
    ...scores.map((s) => `${modelSection(s, p.repeats)}\n`),
    '![parity](parity.svg)',
    '',
    '### Cross-Model Closure',
    '',
    table(['Model', 'Methods passing', 'parity_pass', 'coherent range', 'garbled range', 'normal range'], closure),
    '',
    `**Phase parity_pass: ${String(score?.parityPass ?? false)}**${score?.parityPass === false ? ' — parity FAILED; this is a result, recorded and frozen as such.' : ''}`,
    '',
    '## 6. Cost',
    '',
    `Estimate ${usd(state.estimate?.totalUsd ?? 0)} · approved $${state.budget.approvedUsd.toFixed(2)} (cap requested $${p.budget.cap_usd.toFixed(2)}) · charged ${usd(spent)} over ${state.ledger.length} attempt(s).`,
    '',
    ledgerTable(state.ledger),
    '',
    '![cost](cost.svg)',
    '',
    '## 7. Provenance',
    '',
    `- **Git commit at freeze:** \`${data.gitCommit}\`${data.gitDirty ? ' (working tree DIRTY: uncommitted changes were present)' : ' (clean)'}`,
    `- **Protocol:** \`${input.protocolPath}\` sha256-lock \`${input.protocolHash}\``,
    ...data.models.map((m) => `- **${m.modelKey}:** resolved model \`${m.resolvedPath}\`; ${Object.entries(m.versions).map(([k, v]) => `${k} ${v}`).join(', ')}`),
    '',
    '## 8. Limitations',
    '',
    ...(p.limitations.length > 0 ? p.limitations.map((l, i) => `${i + 1}. ${l}`) : ['_none recorded in the protocol_']),
    '',
    '## 9. Next-Phase Handoff',
    '',
    ...(p.next_phase.length > 0 ? p.next_phase.map((l, i) => `${i + 1}. ${l}`) : ['_none recorded in the protocol_']),
    '',
  ]
    .filter((line, i, all) => !(line === '' && all[i - 1] === ''))
    .join('\n');
}
