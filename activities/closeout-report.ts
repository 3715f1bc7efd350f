/**
 * The closeout report, in the structure of the hand-written Phase-1 closeout (scope, protocol lock, canonical
 * artifacts, per-model results, cross-model closure, provenance, limitations, next-phase hand-off), generated
 * from data only. Pure: the freeze activity gathers the data and writes the file.
 */
import type { FreezeInput } from './types';
import type { Protocol } from '../protocols/schema';
import type { LedgerEntry, ModelScore, NativeCheck, NumericsUsed, ReferenceCheck, PhaseState, RateStat, SignatureRecord, SteeringCheck } from '../workflows/definitions';
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
const share = (v: number | null): string => (v === null ? 'n/a' : `${(v * 100).toFixed(1)}%`);
const onOff = (v: boolean): string => (v ? 'on' : 'off');
const fusedAsRun = (n: NumericsUsed): string => (n.fusedMode === 'exact' ? 'exact' : onOff(n.fusedKernels));
const numericsAsRun = (n: NumericsUsed): string => `decoder ${n.decoder}, fused kernels ${fusedAsRun(n)}, CUDA graphs ${onOff(n.cudaGraphs)}, grouped eager ${onOff(n.groupedEager)}`;
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

function modelSection(score: ModelScore, p: Protocol): string {
  const methods = Object.entries(score.methods);
  return [
    `#### ${score.modelKey} (n=${p.repeats} repeats)`,
    '',
    table(
      ['Method', 'n_ok', 'coherent (mean±std)', 'garbled (mean±std)', 'normal (mean±std)', 'changed vs baseline (mean±std)', 'within-method cosine (min)'],
      methods.map(([name, m]) => [name, String(m.nOk), pct(m.coherent), pct(m.garbled), pct(m.normal), m.changedFraction ? pct(m.changedFraction) : 'n/a', fixed(m.withinMethodCosineMin, 10)]),
    ),
    '',
    `**Pairwise parity (${score.modelKey})**, float64, worst over repeats:`,
    '',
    score.pairs.length === 0
      ? '_one method: no pairs_'
      : table(
          ['Pair', 'cosine (min)', 'L2 (max)', 'decoded texts identical'],
          score.pairs.map((pair) => [`${pair.a} ↔ ${pair.b}`, fixed(pair.cosine, 10), sci(pair.l2), pair.textsIdentical === undefined ? 'n/a' : String(pair.textsIdentical)]),
        ),
    '',
    // Score v1 compared decoded texts; score v2 compares token ids (and reports texts per pair above).
    score.steering === undefined
      ? `Steered outputs (decoded texts) identical across methods: **${String(score.outputsIdentical)}**`
      : `Steered token ids identical across methods: **${String(score.outputsIdentical)}**`,
    '',
    proofChecks(score, p),
    '',
    `**parity_pass: ${String(score.parityPass)}**`,
  ].join('\n');
}

/** What parity_pass rests on beyond the pairwise table (score v2); old scores say they did not record it. */
function proofChecks(score: ModelScore, p: Protocol): string {
  const { reference, steering, native, integrity } = score;
  const head = `**Proof checks (${score.modelKey})**`;
  if (reference === undefined || steering === undefined || native === undefined || integrity === undefined) {
    return [head, '', '_proof checks not recorded (scored before score v2)_'].join('\n');
  }
  const used = score.numerics;
  const failures = score.failures ?? [];
  return [
    head,
    '',
    ...steeringLines(score.modelKey, steering, p.steering.alpha),
    ...(used === undefined ? [] : [`- Numerics as run: ${numericsAsRun(used)}`]),
    '',
    ...referenceLines(reference),
    '',
    ...nativeLines(native),
    ...(integrity.ok ? ['', 'Integrity checks: **ok**'] : ['', 'Integrity problems:', '', ...integrity.problems.map((problem) => `- ${cell(problem)}`)]),
    ...(score.parityPass
      ? []
      : ['', 'parity_pass is false because:', '', ...(failures.length > 0 ? failures.map((f) => `- ${cell(f)}`) : ['- _no reason recorded_'])]),
  ].join('\n');
}

function steeringLines(modelKey: string, s: SteeringCheck, alpha: number): string[] {
  const required = `required ≥ ${share(s.minChangedFraction)} of eval prompts`;
  return [
    `- Steering at the site: steered residual − unsteered = alpha × direction (alpha ${alpha}) at every position of every forward pass: **${s.siteExact ? 'exact' : 'NOT exact'}** (${s.forwardPasses} forward passes, ${s.positions} positions, max abs error ${sci(s.maxAbsError)})`,
    `- Unsteered passes (baseline, direction reads) unchanged: max abs error ${sci(s.unsteeredMaxAbsError)}`,
    s.visible
      ? `- Visible effect: min changed fraction ${share(s.changedFractionMin)} (${required})`
      : `- **steering had no visible effect on ${modelKey}**: min changed fraction ${share(s.changedFractionMin)} (${required}); this does not fail parity`,
  ];
}

function referenceLines(r: ReferenceCheck): string[] {
  const rows = Object.entries(r.methods).map(([name, m]) => [name, fixed(m.cosine, 10), sci(m.l2), String(m.withinThresholds)]);
  return [
    `Independent reference direction (computed from output_hidden_states by code that shares nothing with the methods), worst over repeats: **${r.ok ? 'ok' : 'FAILED'}**${r.error === null ? '' : ` — ${cell(r.error)}`}`,
    '',
    rows.length === 0 ? '_no method compared_' : table(['Method', 'cosine (min)', 'L2 (max)', 'within thresholds'], rows),
  ];
}

function nativeLines(n: NativeCheck): string[] {
  const rows = Object.entries(n.methods).map(([name, m]) => [
    name,
    m.ok ? String(m.tokensIdentical) : 'not run',
    fixed(m.readCosine, 10),
    fixed(m.wallS, 1),
    m.error === null ? '—' : cell(m.error.slice(0, 200)),
  ]);
  return [
    "Library-native cross-check (repeat 0 generated through each library's own generation path on transformers' generate, compared token for token with the fast decoder's unit): " +
      `all identical **${String(n.allIdentical)}**`,
    '',
    rows.length === 0 ? '_no method cross-checked_' : table(['Method', 'tokens identical', 'read cosine without explicit position_ids', 'wall s', 'error'], rows),
  ];
}

/** The class rules as the runtime applies them, written out from the protocol's thresholds. */
function classDefinitions(p: Protocol): string {
  const c = p.classification;
  const repeats = p.deterministic
    ? `Repeats are deterministic replicas of one computation (deterministic mode, fixed seed ${p.seed}): std 0 is expected by construction, not a measured stability.`
    : `Repeats ran without deterministic mode (seed ${p.seed}): their std is run-to-run variation of the same computation.`;
  return [
    '**Class definitions**, per eval prompt, steered against the baseline: ' +
      `*normal* = the steered token ids equal the baseline's (rule \`${c.normal_rule}\`); ` +
      `*garbled* = changed, and any of: repeated ${c.garbled_ngram}-gram fraction > ${c.garbled_max_repeated_ngram_fraction}, ` +
      `distinct-token fraction < ${c.garbled_min_unique_token_fraction}, ` +
      `non-printable character fraction (U+FFFD counts as non-printable) > ${c.garbled_max_nonprintable_fraction}, or empty; ` +
      '*coherent* = changed and not garbled. ' +
      "These are phasegate's rules, not the seed closeout's labels; the rates are not comparable with its 93.3 % / 6.7 %.",
    '',
    repeats,
  ].join('\n');
}

/** What the parity claim covers and how it was computed, from the protocol and the numerics each model ran with. */
function scopeOfClaim(p: Protocol, scores: ModelScore[]): string[] {
  const n = p.numerics;
  const asRun = scores.flatMap(({ modelKey, numerics: used }) => (used === undefined ? [] : [`${modelKey} ${numericsAsRun(used)}`]));
  const fused = { auto: 'auto (on for CUDA only)', exact: 'exact (bit-exact pieces, CUDA only)', on: 'on', off: 'off' }[n.fused_kernels];
  const settings = `CUDA graphs ${onOff(n.cuda_graphs)}, fused kernels ${fused}, grouped eager ${onOff(n.grouped_eager)}`;
  const decoder =
    n.decoder === 'fast'
      ? `all fast units decode with phasegate's static-cache greedy decoder (${settings})`
      : `all units decode with transformers' own generate (numerics.decoder "hf"; ${settings})`;
  const byDtype = new Map<string, string[]>();
  for (const m of p.models) byDtype.set(m.dtype, [...(byDtype.get(m.dtype) ?? []), m.key]);
  const dtypes = [...byDtype].map(([dtype, keys]) => (byDtype.size === 1 ? dtype : `${dtype} (${keys.join(', ')})`)).join(', ');
  return [
    `${decoder}; only repeat 0 of each method is also generated through the library's own generation path on transformers' generate (the native cross-check).${asRun.length > 0 ? ` As run: ${asRun.join('; ')}.` : ''}`,
    "every method's activation reads pass explicit position_ids counted from each row's first real token; the native cross-check reports the cosine without them.",
    `cosines and L2 are computed in float64 from float32 unit vectors of ${dtypes} activations; the seed's figures were float32.`,
    "the site check sees the residual between blocks at every position of every pass, and each block's output over the prompts; an edit inside a block during decode steps only, or inside a block after the site, is not seen by it: only the token ids compared across methods and with the native cross-check would show it, where it changes a token.",
  ];
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
      ['Steering alpha', `${p.steering.alpha}; min_changed_fraction ${p.steering.min_changed_fraction} (the fraction of eval prompts whose token ids must change for steering to count as visible; it does not gate parity)`],
      ['Numerics', `decoder ${p.numerics.decoder}, fused kernels ${p.numerics.fused_kernels}, CUDA graphs ${onOff(p.numerics.cuda_graphs)}, grouped eager ${onOff(p.numerics.grouped_eager)}`],
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
    ...scores.map((s) => `${modelSection(s, p)}\n`),
    classDefinitions(p),
    '',
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
    ...[...scopeOfClaim(p, scores).map((l) => `**Scope of the claim:** ${l}`), ...p.limitations].map((l, i) => `${i + 1}. ${l}`),
    '',
    '## 9. Next-Phase Handoff',
    '',
    ...(p.next_phase.length > 0 ? p.next_phase.map((l, i) => `${i + 1}. ${l}`) : ['_none recorded in the protocol_']),
    '',
  ]
    .filter((line, i, all) => !(line === '' && all[i - 1] === ''))
    .join('\n');
}
