/**
 * Bearer tokens for the HTTP API, one per person. A token is shown once, when issued; the server keeps only its
 * sha256, in a file only its owner can read, and reads that file on every request, so a revocation is immediate.
 * A token says who is calling; it never stands in for a decision's signature.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { PERSON_NAME, PERSON_NAME_RULE } from '../domain/decisions';
import { resolvePaths, type Env } from '../common/config';
import { PhaseError } from './errors';

interface TokenStore {
  [name: string]: { sha256: string; issuedAt: string };
}

export function tokenStorePath(env: Readonly<Env>): string {
  return path.join(resolvePaths(env).stateDir, 'http-tokens.json');
}

const hash = (token: string): string => createHash('sha256').update(token).digest('hex');

function readStore(file: string): TokenStore {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as TokenStore;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new PhaseError('failed', `the token store ${file} cannot be read`);
  }
}

function writeStore(file: string, store: TokenStore): void {
  mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(store, null, 2)}\n`, { mode: 0o600 });
  renameSync(tmp, file);
}

/**
 * Runs a read-modify-write of the store under a lock (a lock directory: mkdir is atomic), so a revocation is
 * never undone by a concurrent issue. A lock older than 30 s is taken as left by a dead process.
 */
function withStoreLock<T>(file: string, fn: () => T): T {
  const lock = `${file}.lock`;
  mkdirSync(path.dirname(file), { recursive: true });
  for (let tries = 0; ; tries++) {
    try {
      mkdirSync(lock);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      try {
        if (Date.now() - statSync(lock).mtimeMs > 30_000) rmSync(lock, { recursive: true, force: true });
      } catch {
        // Gone between the two calls: try again.
      }
      if (tries > 500) throw new PhaseError('failed', `the token store ${file} is locked (${lock})`);
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
    }
  }
  try {
    return fn();
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

/** Issues NAME a new token (replacing any earlier one) and returns it; only its hash is stored. */
export function issueToken(file: string, name: string, now: Date = new Date()): string {
  if (!PERSON_NAME.test(name)) throw new PhaseError('invalid', `NAME: must be ${PERSON_NAME_RULE}`);
  const token = `pgt_${randomBytes(32).toString('base64url')}`;
  withStoreLock(file, () => {
    const store = readStore(file);
    store[name] = { sha256: hash(token), issuedAt: now.toISOString() };
    writeStore(file, store);
  });
  return token;
}

export function revokeToken(file: string, name: string): boolean {
  return withStoreLock(file, () => {
    const store = readStore(file);
    if (store[name] === undefined) return false;
    delete store[name];
    writeStore(file, store);
    return true;
  });
}

/** The person a bearer token belongs to, or null. Compared in constant time over the stored hashes. */
export function personForToken(file: string, token: string): string | null {
  if (token.length < 10 || token.length > 200) return null;
  const presented = Buffer.from(hash(token), 'hex');
  let found: string | null = null;
  for (const [name, entry] of Object.entries(readStore(file))) {
    const stored = Buffer.from(entry.sha256, 'hex');
    if (stored.length === presented.length && timingSafeEqual(stored, presented)) found = name;
  }
  return found;
}
