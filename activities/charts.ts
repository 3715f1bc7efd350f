/**
 * Two pictures for the closeout report, as standalone SVG (no plotting dependency): parity per method pair on a
 * log scale against the protocol's threshold, and cost per model (estimate against what was charged) against the
 * approved budget. Pure functions of the data.
 */
import type { LedgerEntry, ModelScore } from '../workflows/definitions';

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
const FONT = 'font-family="Helvetica,Arial,sans-serif" font-size="12"';
const TITLE = 'font-family="Helvetica,Arial,sans-serif" font-size="14" font-weight="bold"';

/** Cosine distance 1 - cos on a log10 axis from 1e-16 ("identical in float64") to 1. */
export function parityChart(models: ModelScore[], minCosine: number): string {
  // A pair with nothing measured is drawn at the far end, in red: missing parity is not parity.
  const rows = models.flatMap((m) => m.pairs.map((p) => ({ label: `${m.modelKey}: ${p.a} ↔ ${p.b}`, distance: p.cosine === null ? 1 : 1 - p.cosine, l2: p.l2 ?? Number.NaN })));
  const left = 260;
  const width = 860;
  const plot = width - left - 40;
  const rowH = 26;
  const top = 50;
  const height = top + rows.length * rowH + 50;
  const lo = -16;
  const x = (d: number): number => {
    const v = Math.log10(Math.max(d, 10 ** lo));
    return left + ((v - lo) / -lo) * plot;
  };
  const threshold = x(1 - minCosine);
  const ticks = [-16, -12, -8, -4, 0].map(
    (e) => `<line x1="${x(10 ** e)}" y1="${top - 6}" x2="${x(10 ** e)}" y2="${top + rows.length * rowH}" stroke="#ddd"/><text x="${x(10 ** e)}" y="${top + rows.length * rowH + 16}" text-anchor="middle" ${FONT}>1e${e}</text>`,
  );
  const bars = rows.map((r, i) => {
    const y = top + i * rowH;
    const w = Math.max(2, x(r.distance) - left);
    const colour = r.distance <= 1 - minCosine ? '#2e7d32' : '#c62828';
    return (
      `<text x="${left - 8}" y="${y + 16}" text-anchor="end" ${FONT}>${esc(r.label)}</text>` +
      `<rect x="${left}" y="${y + 4}" width="${w}" height="16" fill="${colour}"/>` +
      `<text x="${left + w + 4}" y="${y + 16}" ${FONT} fill="#555">1−cos ${r.distance.toExponential(1)} · L2 ${Number.isNaN(r.l2) ? 'n/a' : r.l2.toExponential(1)}</text>`
    );
  });
  return svg(width, height, [
    `<text x="10" y="22" ${TITLE}>Parity between methods: cosine distance 1 − cos, log scale (shorter is closer)</text>`,
    ...ticks,
    ...bars,
    `<line x1="${threshold}" y1="${top - 10}" x2="${threshold}" y2="${top + rows.length * rowH}" stroke="#c62828" stroke-dasharray="4 3"/>`,
    `<text x="${threshold - 4}" y="${top - 12}" text-anchor="end" ${FONT} fill="#c62828">threshold: cosine ≥ ${minCosine}</text>`,
    `<text x="${left}" y="${height - 10}" ${FONT} fill="#555">${rows.length === 0 ? 'no method pairs (one method)' : 'values at 1e-16 are identical to float64 precision'}</text>`,
  ]);
}

export interface CostRow {
  modelKey: string;
  estimateUsd: number;
  ledger: LedgerEntry[];
}

/** Per model: the estimate (outline) against charged attempts stacked (green succeeded, red otherwise). */
export function costChart(rows: CostRow[], approvedUsd: number): string {
  const left = 140;
  const width = 860;
  const plot = width - left - 120;
  const rowH = 44;
  const top = 50;
  const height = top + rows.length * rowH + 60;
  const spent = rows.map((r) => r.ledger.reduce((s, e) => s + e.usd, 0));
  const max = Math.max(approvedUsd, ...rows.map((r) => r.estimateUsd), ...spent, 1e-9);
  const x = (usd: number): number => left + (usd / max) * plot;
  const bars = rows.map((r, i) => {
    const y = top + i * rowH;
    let cursor = left;
    const segments = r.ledger.map((e) => {
      const w = x(e.usd) - left;
      const seg = `<rect x="${cursor}" y="${y + 14}" width="${Math.max(w, 0.5)}" height="16" fill="${e.outcome === 'succeeded' ? '#2e7d32' : '#c62828'}"><title>attempt ${e.attempt}: ${e.outcome}, ${e.seconds.toFixed(1)} s, $${e.usd.toFixed(4)}</title></rect>`;
      cursor += w;
      return seg;
    });
    return (
      `<text x="${left - 8}" y="${y + 26}" text-anchor="end" ${FONT}>${esc(r.modelKey)}</text>` +
      `<rect x="${left}" y="${y + 10}" width="${x(r.estimateUsd) - left}" height="24" fill="none" stroke="#1565c0" stroke-dasharray="3 2"/>` +
      segments.join('') +
      `<text x="${Math.max(cursor, x(r.estimateUsd)) + 6}" y="${y + 26}" ${FONT} fill="#555">$${spent[i]!.toFixed(4)} of est. $${r.estimateUsd.toFixed(4)}</text>`
    );
  });
  const total = spent.reduce((a, b) => a + b, 0);
  return svg(width, height, [
    `<text x="10" y="22" ${TITLE}>Cost: charged attempts (solid) against the estimate (dashed) and the approved budget</text>`,
    ...bars,
    `<line x1="${x(approvedUsd)}" y1="${top}" x2="${x(approvedUsd)}" y2="${top + rows.length * rowH}" stroke="#ef6c00" stroke-width="2"/>`,
    `<text x="${x(approvedUsd)}" y="${top + rows.length * rowH + 16}" text-anchor="middle" ${FONT} fill="#ef6c00">approved $${approvedUsd.toFixed(2)}</text>`,
    `<text x="10" y="${height - 10}" ${FONT} fill="#555">total charged $${total.toFixed(4)} · green: succeeded attempt · red: failed, timed-out or cancelled attempt (charged too)</text>`,
  ]);
}

function svg(width: number, height: number, body: string[]): string {
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}"><rect width="100%" height="100%" fill="white"/>${body.join('')}</svg>\n`;
}
