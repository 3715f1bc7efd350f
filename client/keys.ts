/**
 * Each person's Ed25519 key pair, and signing decisions with it. Private keys stay in the person's own key folder
 * (`$PHASEGATE_KEYS_DIR`, default ~/.config/phasegate/keys), one PKCS#8 PEM file per person, mode 0600; a key
 * file that others can read is refused. Nothing else in phasegate ever reads a private key: the server, the
 * worker and the workflow see only signatures and the public keys the protocol names.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes, sign, type KeyObject } from 'node:crypto';
import { closeSync, constants, fstatSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { decisionMessage, PERSON_NAME, PERSON_NAME_RULE, type DecisionContent, type DecisionKind, type SignedDecision, type UnsignedDecision } from '../domain/decisions';
import { toBase64 } from '../domain/encoding';
import { PhaseError } from './errors';

export function defaultKeysDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.PHASEGATE_KEYS_DIR ?? path.join(os.homedir(), '.config', 'phasegate', 'keys');
}

function checkName(name: string): void {
  if (!PERSON_NAME.test(name)) throw new PhaseError('invalid', `NAME: must be ${PERSON_NAME_RULE}`);
}

const keyFile = (dir: string, name: string): string => path.join(dir, `${name}.key`);

/** `ed25519:` + base64 of the raw 32-byte public key: the form protocols name people by. */
export function publicKeyText(key: KeyObject): string {
  const jwk = createPublicKey(key).export({ format: 'jwk' });
  return `ed25519:${toBase64(Buffer.from(jwk.x!, 'base64url'))}`;
}

/** Makes NAME's key pair; refuses to overwrite an existing key. Returns the public key. */
export function newKey(dir: string, name: string): string {
  checkName(name);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const { privateKey } = generateKeyPairSync('ed25519');
  const pem = privateKey.export({ format: 'pem', type: 'pkcs8' });
  let fd: number;
  try {
    // O_EXCL: never replace a key someone may already have given the public half of.
    fd = openSync(keyFile(dir, name), constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new PhaseError('invalid', `a key for ${name} already exists in ${dir}; \`phasegate keys show ${name}\` prints its public key`);
    throw new PhaseError('invalid', `cannot write a key in ${dir}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  try {
    writeSync(fd, String(pem));
  } finally {
    closeSync(fd);
  }
  return publicKeyText(privateKey);
}

/** NAME's private key, after checking that only its owner can read the file. */
export function loadPrivateKey(dir: string, name: string): KeyObject {
  checkName(name);
  const file = keyFile(dir, name);
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new PhaseError('invalid', `no key for ${name} in ${dir} (make one with \`phasegate keys new ${name}\`, or set PHASEGATE_KEYS_DIR)`);
    throw new PhaseError('invalid', `cannot read the key for ${name} in ${dir}: ${code ?? 'error'}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new PhaseError('invalid', `${file} is not a regular file`);
    if ((st.mode & 0o077) !== 0) {
      throw new PhaseError('invalid', `${file} can be read by others (mode ${(st.mode & 0o777).toString(8)}); refusing to use it: chmod 600 ${file}`);
    }
    if (typeof process.getuid === 'function' && st.uid !== process.getuid()) throw new PhaseError('invalid', `${file} belongs to another user; refusing to use it`);
    try {
      const key = createPrivateKey(readFileSync(fd));
      if (key.asymmetricKeyType !== 'ed25519') throw new Error('not ed25519');
      return key;
    } catch {
      throw new PhaseError('invalid', `${file} is not an Ed25519 private key in PEM form`);
    }
  } finally {
    closeSync(fd);
  }
}

export function showKey(dir: string, name: string): string {
  return publicKeyText(loadPrivateKey(dir, name));
}

/** What a decision says before it is signed: the phase (and the run of it) it is for and its content. */
export interface DecisionDraft<K extends DecisionKind> {
  kind: K;
  phaseId: string;
  protocolHash: string;
  run: string;
  by: string;
  content: DecisionContent[K];
}

export function signDecision<K extends DecisionKind>(key: KeyObject, draft: DecisionDraft<K>, now: Date = new Date()): SignedDecision<K> {
  const unsigned: UnsignedDecision<K> = { v: 2, ...draft, nonce: randomBytes(16).toString('hex'), signedAt: now.toISOString() };
  const signature = sign(null, decisionMessage(unsigned), key).toString('base64');
  return { ...unsigned, signature };
}
