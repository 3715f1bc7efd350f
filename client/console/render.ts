/**
 * The console's HTML, rendered on the server from the same views the CLI prints (pure functions of the data).
 * Every value that came from a protocol, a person or a file is escaped here; the page's script only inserts
 * these fragments and never builds markup from data itself.
 */
import MarkdownIt from 'markdown-it';
import { recordProblem, type SignatureRecord } from '../../domain/decisions';
import { formatMicros } from '../../domain/money';
import { spentUsd } from '../../workflows/phase-logic';
import type { PhaseDetail, ListedPhase } from './data';
import { isLive } from './data';

/** Escapes text for an HTML element or a quoted attribute. */
export function esc(value: string | number | boolean | null | undefined): string {
  return String(value ?? '').replace(/[&<>"'`]/g, (ch) => `&#${ch.charCodeAt(0)};`);
}

const usd = (v: number | null | undefined): string => (v === null || v === undefined ? 'n/a' : `$${v.toFixed(4)}`);
const num = (v: number | null | undefined, digits = 6): string => (v === null || v === undefined ? 'n/a' : v.toFixed(digits));
const table = (head: string[], rows: string[][], cls = ''): string =>
  `<table${cls ? ` class="${cls}"` : ''}><thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>${
    rows.length > 0 ? rows.map((r) => `<tr>${r.join('')}</tr>`).join('') : `<tr><td colspan="${head.length}" class="empty">none</td></tr>`
  }</tbody></table>`;
const td = (v: Parameters<typeof esc>[0], cls = ''): string => `<td${cls ? ` class="${cls}"` : ''}>${esc(v)}</td>`;
const section = (id: string, title: string, body: string): string => `<section id="${id}"><h2>${esc(title)}</h2>${body}</section>`;
const badge = (status: string): string => `<span class="status status-${esc(status.toLowerCase())}" data-status="${esc(status)}">${esc(status)}</span>`;

export function renderPhaseList(phases: ListedPhase[], person: string): string {
  const rows = phases.map((p) => [
    `<td><a href="/console/phases/${esc(p.phaseId)}" class="phase-link">${esc(p.phaseId)}</a></td>`,
    td(p.phase),
    `<td>${badge(p.status || p.workflowStatus)}</td>`,
    td(p.workflowStatus),
    td(p.startTime),
    `<td>${p.waitingForMe ? `<strong class="waiting">waiting for ${esc(person)}</strong>` : ''}</td>`,
  ]);
  return table(['phase id', 'phase', 'status', 'workflow', 'started', ''], rows, 'phases');
}

/** A recorded decision's signature, checked again here against the locked roster, as `verify` does. */
function signatureCheck(detail: PhaseDetail, s: SignatureRecord): string {
  const problem = recordProblem(s, { ...detail.input, run: detail.state.run ?? null });
  return problem === null
    ? `<span class="sig-ok" title="${esc(s.signed.signature)}">signature verified, key ${esc(s.keyFingerprint)}</span>`
    : `<span class="sig-bad">signature check failed: ${esc(problem)}</span>`;
}

function protocolSection(d: PhaseDetail): string {
  const p = d.input.protocol;
  const gpus = [...new Set(p.models.map((m) => m.gpu))];
  return section(
    'protocol',
    'Protocol',
    `<dl class="facts">
      <dt>title</dt><dd class="title">${esc(p.title)}</dd>
      <dt>scope</dt><dd>${esc(p.scope)}</dd>
      <dt>protocol hash</dt><dd><code>${esc(d.input.protocolHash)}</code></dd>
      <dt>backend</dt><dd>${esc(p.backend)}</dd>
      <dt>GPU types</dt><dd>${esc(gpus.join(', '))}</dd>
      <dt>methods</dt><dd>${esc(p.methods.join(', '))}</dd>
      <dt>people</dt><dd>approvers ${esc(p.budget.approvers.join(', '))}; reviewers ${esc(p.review.reviewers.join(', '))}${p.separate_duties ? ' (separate duties)' : ''}</dd>
    </dl>` + table(['model', 'id', 'GPU', 'dtype'], p.models.map((m) => [td(m.key), td(m.id), td(m.gpu), td(m.dtype)])),
  );
}

function planSection(d: PhaseDetail): string {
  const plan = d.plan;
  const est = plan.estimate;
  return section(
    'plan',
    'Run plan',
    `<h3>Commands</h3><pre>${esc(plan.commands.join('\n'))}</pre>
     <h3>Expected artifacts</h3><ul>${plan.expectedArtifacts.map((a) => `<li><code>${esc(a)}</code></li>`).join('')}</ul>
     <h3>Stop conditions</h3><ul>${plan.stopConditions.map((s) => `<li>${esc(s)}</li>`).join('')}</ul>
     <h3>Estimate and its basis</h3>` +
      (est === null
        ? '<p class="empty">not computed yet</p>'
        : table(
            ['model', 'GPU', 'GPU seconds', '$/s', 'estimate', 'basis'],
            est.models.map((m) => [td(m.modelKey), td(m.gpu), td(m.gpuSeconds.toFixed(0), 'num'), td(m.usdPerSecond, 'num'), td(usd(m.usd), 'num'), td(`${m.basis}: ${m.basisDetail}`)]),
          ) + `<p>total <strong>${esc(usd(est.totalUsd))}</strong></p>`),
  );
}

function budgetSection(d: PhaseDetail): string {
  const v = d.view;
  const cap = d.input.protocol.budget.cap_usd;
  const spent = spentUsd(d.state.ledger);
  const pctSpent = v.approvedUsd > 0 ? Math.min(100, Math.round((spent / v.approvedUsd) * 100)) : 0;
  return section(
    'budget',
    'Budget',
    `<dl class="facts money">
      <dt>estimate</dt><dd>${esc(usd(v.estimateUsd))}</dd>
      <dt>approved</dt><dd id="approved">${esc(usd(v.approvedUsd))}</dd>
      <dt>spent</dt><dd id="spent">${esc(usd(v.spentUsd))}</dd>
      <dt>remaining</dt><dd id="remaining">${esc(usd(v.remainingUsd))}</dd>
      <dt>cap</dt><dd>${esc(usd(cap))} (protocol's budget.cap_usd)</dd>
    </dl><div class="meter" role="img" aria-label="${pctSpent}% of the approval spent"><div data-width="${pctSpent}"></div></div>`,
  );
}

function gatesSection(d: PhaseDetail): string {
  const b = d.state.budget;
  const rows: string[][] = [];
  for (const a of b.approvals) rows.push([td('budget'), td(`approved ${formatMicros(a.usdMicros)}`), td(a.by), td(a.at), td(a.note), `<td>${signatureCheck(d, a.signature)}</td>`]);
  if (b.rejection) rows.push([td('budget'), td('rejected'), td(b.rejection.by), td(b.rejection.at), td(b.rejection.reason), `<td>${signatureCheck(d, b.rejection.signature)}</td>`]);
  const r = d.state.review;
  if (r) rows.push([td('review'), td(r.verdict), td(r.by), td(r.at), td([r.ref, r.notes].filter(Boolean).join(' · ')), `<td>${signatureCheck(d, r.signature)}</td>`]);
  const open = d.gate === null ? '<p>No gate is open.</p>' : `<p class="gate-open">The <strong>${esc(d.gate.gate)}</strong> gate is open; the protocol names ${esc(d.gate.deciders.join(', '))} to decide.</p>`;
  const reminders = d.state.events.filter((e) => e.kind === 'reminder');
  return section('gates', 'Gates and decisions', open + table(['gate', 'decision', 'who', 'when', 'note', 'signature'], rows, 'decisions') + reminders.map((e) => `<p class="reminder">${esc(e.at)} ${esc(e.message)}</p>`).join(''));
}

function progressSection(d: PhaseDetail): string {
  const rows = d.view.models.map((m) => {
    const p = m.progress;
    const bar = p ? `<progress max="${p.unitsTotal}" value="${p.unitsDone}"></progress> ${esc(`${p.unitsDone}/${p.unitsTotal}`)} ${esc(p.stage)} ${esc(p.lastUnit ?? '')}` : '';
    return [td(m.modelKey), `<td>${badge(m.status)}</td>`, td(m.attempts, 'num'), `<td>${bar}</td>`, td(m.parityPass === null ? '' : m.parityPass ? 'pass' : 'FAIL')];
  });
  return section('progress', 'Models', table(['model', 'status', 'attempts', 'progress', 'parity'], rows, 'models'));
}

function ledgerSection(d: PhaseDetail): string {
  const rows = d.state.ledger.map((e) => [td(e.modelKey), td(e.attempt, 'num'), td(e.gpu), td(e.seconds.toFixed(1), 'num'), td(e.secondsBasis), td(usd(e.usd), 'num'), td(e.outcome), td(`${e.error ?? ''}${e.earlierRun ? ' (earlier run)' : ''}`)]);
  return section('ledger', 'Ledger', table(['model', '#', 'GPU', 'seconds', 'basis', 'cost', 'outcome', ''], rows, 'ledger'));
}

function paritySection(d: PhaseDetail): string {
  const score = d.state.score;
  if (score === null) return section('parity', 'Parity', '<p class="empty">not scored yet</p>');
  const pairs = score.models.flatMap((m) => m.pairs.map((p) => [td(m.modelKey), td(`${p.a} vs ${p.b}`), td(num(p.cosine), 'num'), td(p.l2 === null ? 'n/a' : p.l2.toExponential(2), 'num'), td(p.textsIdentical === undefined ? '' : p.textsIdentical ? 'yes' : 'no')]));
  const models = score.models.map((m) => [td(m.modelKey), td(m.parityPass ? 'pass' : 'FAIL'), td(m.outputsIdentical ? 'yes' : 'no'), td(m.methodsPassing.join(', ')), td((m.failures ?? []).join('; '))]);
  const charts = d.charts.map((f) => `<figure><img data-artifact="${esc(f)}" alt="${esc(f)}"><figcaption>${esc(f)}</figcaption></figure>`).join('');
  return section(
    'parity',
    'Parity',
    `<p>parity_pass <strong id="parity-pass">${score.parityPass ? 'PASS' : 'FAIL'}</strong> (thresholds: cosine ≥ ${esc(d.input.protocol.parity.min_cosine)}, L2 ≤ ${esc(d.input.protocol.parity.max_l2)})</p>` +
      table(['model', 'parity', 'outputs identical', 'methods passing', 'failures'], models) +
      table(['model', 'pair', 'cosine', 'L2', 'texts identical'], pairs) +
      `<div class="charts">${charts}</div>`,
  );
}

function frozenSection(d: PhaseDetail): string {
  const f = d.state.freeze;
  if (f === null) return section('frozen', 'Frozen artifacts', '<p class="empty">written when the phase freezes</p>');
  const v = d.verification;
  const answer =
    v === null
      ? '<p class="sig-bad">verify could not run</p>'
      : v.ok
        ? `<p class="verify-ok" id="verify">OK: ${v.checked} files match the manifest; ${v.decisions.checked} signed decision(s) verified</p>`
        : `<p class="verify-bad" id="verify">FAILED: ${esc([...v.changed.map((x) => `changed ${x}`), ...v.missing.map((x) => `missing ${x}`), ...v.unexpected.map((x) => `unexpected ${x}`), ...v.decisions.problems].join('; '))}</p>`;
  return section(
    'frozen',
    'Frozen artifacts',
    `<dl class="facts"><dt>folder</dt><dd><code>${esc(f.dir)}</code></dd><dt>files</dt><dd>${f.fileCount}</dd><dt>manifest sha256</dt><dd><code>${esc(f.manifestSha256)}</code></dd><dt>git</dt><dd><code>${esc(f.gitCommit)}</code>${f.gitDirty ? ' (dirty)' : ''}</dd></dl>
     <h3>verify</h3>${answer}
     <p><a href="#report" id="open-report" class="button">Open the closeout report</a></p>
     <details><summary>Manifest</summary><pre>${esc(d.manifest ?? '(unreadable)')}</pre></details>`,
  );
}

function eventsSection(d: PhaseDetail): string {
  return section('events', 'Events', `<ol class="events">${d.state.events.map((e) => `<li><time>${esc(e.at)}</time> <em>${esc(e.kind)}</em> ${esc(e.message)}</li>`).join('')}</ol>`);
}

/** The decision forms: shown while a gate is open. The workflow, not the page, decides who may pass it. */
function decideSection(d: PhaseDetail): string {
  if (d.gate === null) return '';
  const cap = d.input.protocol.budget.cap_usd;
  const hint = d.gate.mine ? '' : `<p class="warn">The protocol names ${esc(d.gate.deciders.join(', '))} for this gate, not ${esc(d.person)}: the phase will refuse your decision.</p>`;
  const forms =
    d.gate.gate === 'budget'
      ? `<form data-kind="approve-budget" class="decision">
           <h3>Approve the budget</h3>
           <label>amount (USD) <input name="usd" required inputmode="decimal" value="${esc(d.view.estimateUsd !== null ? Math.min(cap, Math.ceil(d.view.estimateUsd * 1e6) / 1e6) : cap)}"></label>
           <label>note <input name="note" maxlength="2000"></label>
           <button type="submit">Sign and approve</button>
         </form>
         <form data-kind="reject-budget" class="decision">
           <h3>Reject</h3>
           <label>reason <input name="reason" required maxlength="2000"></label>
           <button type="submit">Sign and reject</button>
         </form>`
      : `<form data-kind="review" class="decision">
           <h3>Review</h3>
           <label>verdict <select name="verdict"><option value="APPROVED">approved</option><option value="ADVISED">advised</option><option value="CHANGES_REQUESTED">changes requested</option></select></label>
           <label>ref <input name="ref" maxlength="200"></label>
           <label>notes <textarea name="notes" maxlength="4000"></textarea></label>
           <button type="submit">Sign and submit</button>
         </form>`;
  return section('decide', 'Decide', `${hint}<p>Each decision is signed in this browser with your own key (imported above); the server never sees it.</p>${forms}`);
}

export interface PhasePage {
  phaseId: string;
  protocolHash: string;
  /** The run a decision is signed for (domain/decisions.ts); null for a phase recorded before runs were bound. */
  run: string | null;
  status: string;
  /** The page keeps polling while true. */
  live: boolean;
  /** Changes when the open gate changes: the page redraws its forms only then (never under a person's typing). */
  gateKey: string;
  /** The public key the protocol names for the person looking, to check an imported key against. */
  myPublicKey: string | null;
  header: string;
  body: string;
  decide: string;
}

export function renderPhasePage(d: PhaseDetail): PhasePage {
  return {
    phaseId: d.view.phaseId,
    protocolHash: d.input.protocolHash,
    run: d.state.run ?? null,
    status: d.state.status,
    live: isLive(d),
    gateKey: `${d.state.status}|${d.gate?.gate ?? ''}`,
    myPublicKey: d.input.people[d.person] ?? null,
    header: `<h1>${esc(d.input.protocol.title)}</h1><p><code>${esc(d.view.phaseId)}</code> ${badge(d.state.status)}${d.state.failure ? ` <span class="failure">${esc(d.state.failure)}</span>` : ''}</p>`,
    body: [protocolSection(d), budgetSection(d), gatesSection(d), progressSection(d), planSection(d), ledgerSection(d), paritySection(d), frozenSection(d), eventsSection(d)].join('\n'),
    decide: decideSection(d),
  };
}

/** The closeout report: markdown with raw HTML off (a protocol's text is data, never markup); images load with the token. */
const markdown = new MarkdownIt({ html: false, linkify: false });
markdown.renderer.rules.image = (tokens, idx) => {
  const t = tokens[idx]!;
  const src = String(t.attrGet('src') ?? '');
  return `<img data-artifact="${esc(src.replace(/^.*\//, ''))}" alt="${esc(t.content)}">`;
};

export function renderReport(text: string): string {
  return `<article class="report">${markdown.render(text)}</article>`;
}
