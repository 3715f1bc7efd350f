/**
 * The freeze manifest: sha256 of every artifact file, in `sha256sum` format (so `sha256sum -c MANIFEST.sha256`
 * works without phasegate), and its verification.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';

export const MANIFEST = 'MANIFEST.sha256';

export function fileSha256(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex');
}

/** Every file under dir (relative, sorted), except the manifest itself. */
export function listFiles(dir: string, prefix = ''): string[] {
  const out: string[] = [];
  for (const name of readdirSync(path.join(dir, prefix)).sort()) {
    const rel = path.join(prefix, name);
    if (statSync(path.join(dir, rel)).isDirectory()) out.push(...listFiles(dir, rel));
    else if (rel !== MANIFEST) out.push(rel);
  }
  return out;
}

export function renderManifest(dir: string): string {
  return listFiles(dir).map((rel) => `${fileSha256(path.join(dir, rel))}  ${rel}`).join('\n') + '\n';
}

export function parseManifest(text: string): Map<string, string> {
  const entries = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]{64}) {2}(.+)$/.exec(line);
    if (m) entries.set(m[2]!, m[1]!);
  }
  return entries;
}

export interface VerifyReport {
  ok: boolean;
  checked: number;
  /** false when MANIFEST.sha256 itself is not the one recorded at freeze time. */
  manifestIntact: boolean;
  changed: string[];
  missing: string[];
  unexpected: string[];
}

/** Checks every file against the manifest, and the manifest against the sha256 recorded at freeze, if given. */
export function verifyManifest(dir: string, expectedManifestSha256?: string): VerifyReport {
  const manifestPath = path.join(dir, MANIFEST);
  if (!existsSync(manifestPath)) return { ok: false, checked: 0, manifestIntact: false, changed: [], missing: [MANIFEST], unexpected: [] };
  const manifestIntact = expectedManifestSha256 === undefined || fileSha256(manifestPath) === expectedManifestSha256;
  const expected = parseManifest(readFileSync(manifestPath, 'utf8'));
  const present = new Set(listFiles(dir));
  const changed: string[] = [];
  const missing: string[] = [];
  for (const [rel, sum] of expected) {
    if (!present.has(rel)) missing.push(rel);
    else if (fileSha256(path.join(dir, rel)) !== sum) changed.push(rel);
  }
  const unexpected = [...present].filter((rel) => !expected.has(rel));
  if (!manifestIntact) changed.unshift(MANIFEST);
  return { ok: manifestIntact && changed.length + missing.length + unexpected.length === 0, checked: expected.size, manifestIntact, changed, missing, unexpected };
}
