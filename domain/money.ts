/**
 * Money as integer micro-dollars. Amounts arrive as decimal strings ("15", "0.05", "1234.5"), never as binary
 * floats or exponents, so "0x10", "1e308" and "5e-324" are refused by their shape, and sums are exact.
 *
 * Part of the workflow bundle: pure, no Node.
 */

/** The largest amount phasegate accepts anywhere: one million dollars. */
export const MAX_USD_MICROS = 1_000_000 * 1_000_000;

const DECIMAL = /^(0|[1-9][0-9]{0,6})(?:\.([0-9]{1,6}))?$/;

/** Parses a decimal dollar amount; returns micro-dollars, or the reason it is refused. */
export function parseUsd(text: unknown): { micros: number } | { error: string } {
  if (typeof text !== 'string') return { error: 'must be a decimal amount in dollars written as a string, e.g. "15" or "0.05"' };
  if (text.length > 20 || !DECIMAL.test(text)) {
    return { error: 'must be a decimal amount in dollars with at most 6 decimals (e.g. "15" or "0.05"); no signs, exponents or hex' };
  }
  const [whole, frac = ''] = text.split('.') as [string, string?];
  const micros = Number(whole) * 1_000_000 + Number(frac.padEnd(6, '0'));
  if (micros <= 0) return { error: 'must be more than $0' };
  if (micros > MAX_USD_MICROS) return { error: 'must be at most $1000000' };
  return { micros };
}

/** Dollars (a float rounded to the micro-dollar, as the ledger keeps them) to micro-dollars. */
export function usdToMicros(usd: number): number {
  return Math.round(usd * 1_000_000);
}

export function microsToUsd(micros: number): number {
  return micros / 1_000_000;
}

/** "$15.00", "$0.0500": at least two decimals, more where the amount has them. */
export function formatMicros(micros: number): string {
  const usd = microsToUsd(micros);
  const decimals = micros % 10_000 === 0 ? 2 : 6;
  return `$${usd.toFixed(decimals)}`;
}
