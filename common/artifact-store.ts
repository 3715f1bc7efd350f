/**
 * The artifact store: where one activity leaves files for another, and where frozen artifacts and phase records
 * live. Activities hand each other *refs* (strings in the workflow's state), never open file handles:
 *
 * - `local` (the embedded default): a ref is a path on the worker's own disk and nothing is copied. Right when
 *   every activity runs on one host, as with `phasegate server`.
 * - `s3` (workers on several hosts): a ref is `s3://bucket/key`. A model run uploads its outputs under a key per
 *   phase, model and attempt; scoring and the freeze download what they need into their own work folder; the
 *   freeze uploads the canonical artifacts and their manifest. Any S3-compatible server (MinIO here, in tests).
 *
 * A ref that is a plain path is always read from the local disk, so phases started before a switch to `s3` (whose
 * state holds local paths) still finish on the host that ran them.
 */
import {
  GetObjectCommand,
  ListObjectsV2Command,
  NoSuchKey,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Env } from './config';

export interface ArtifactStore {
  readonly kind: 'local' | 's3';
  /** Where the store is, for messages: a folder's description or `s3://bucket/prefix`. */
  readonly location: string;
  /**
   * Makes the files of `dir` (paths relative to it) available under `key` and returns the ref of `key`. The files
   * are stored in the order given, so a last file that marks the set complete (result.json, a manifest) is
   * stored only after every other.
   */
  putFiles(key: string, dir: string, files: readonly string[]): Promise<string>;
  /**
   * A local folder holding every file under `ref` (a ref returned by putFiles): the folder itself for a local
   * ref, else a copy downloaded into `scratch`. null when the store has nothing under `ref`.
   */
  fetch(ref: string, scratch: string): Promise<string | null>;
  /** The ref `key` has in this store (whether or not anything is stored there yet). */
  refOf(key: string): string;
  /** A small text object (a phase record), null when absent. */
  getText(key: string): Promise<string | null>;
  putText(key: string, text: string): Promise<void>;
  /** Keys under a prefix, relative to the store's own prefix. */
  list(prefix: string): Promise<string[]>;
}

/** Why the store could not do what was asked, by kind: `unavailable` is retried by the caller, `refused` is not. */
export class ArtifactStoreError extends Error {
  override readonly name = 'ArtifactStoreError';
  constructor(
    readonly kind: 'unavailable' | 'refused',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** True when a ref names an object in a store rather than a path on this host. */
export function isStoreRef(ref: string): boolean {
  return /^s3:\/\//.test(ref);
}

/** The folder a ref is in (the ref of a run's result.json -> the ref of its run folder). */
export function parentRef(ref: string): string {
  return isStoreRef(ref) ? ref.slice(0, ref.lastIndexOf('/')) : path.dirname(ref);
}

/** The ref of a file inside a folder ref. */
export function childRef(ref: string, name: string): string {
  return isStoreRef(ref) ? `${ref}/${name}` : path.join(ref, name);
}

const KEY = /^[A-Za-z0-9][A-Za-z0-9._/-]*$/;

function checkKey(key: string): string {
  if (!KEY.test(key) || key.split('/').some((part) => part === '..' || part === '.' || part === '')) {
    throw new ArtifactStoreError('refused', `not a store key: ${key.slice(0, 120)}`);
  }
  return key;
}

/**
 * The worker's own disk: a ref is the folder the files are already in, so nothing is copied, and text objects
 * (none are used with this store: phase records have their own folder store) live under `root`.
 */
export class LocalArtifactStore implements ArtifactStore {
  readonly kind = 'local';
  readonly location: string;

  constructor(private readonly root: string) {
    this.location = `this host's disk (${root})`;
  }

  refOf(key: string): string {
    return path.join(this.root, checkKey(key));
  }

  putFiles(_key: string, dir: string): Promise<string> {
    return Promise.resolve(path.resolve(dir));
  }

  async fetch(ref: string): Promise<string | null> {
    return (await exists(ref)) ? ref : null;
  }

  async getText(key: string): Promise<string | null> {
    try {
      return await readFile(path.join(this.root, checkKey(key)), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  async putText(key: string, text: string): Promise<void> {
    const file = path.join(this.root, checkKey(key));
    await mkdir(path.dirname(file), { recursive: true });
    await writeFile(file, text);
  }

  list(): Promise<string[]> {
    return Promise.reject(new ArtifactStoreError('refused', 'the local artifact store lists nothing: its refs are paths'));
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

export interface S3StoreConfig {
  bucket: string;
  /** Prepended to every key (no leading or trailing slash); '' for the bucket's root. */
  prefix: string;
  /** An S3-compatible endpoint (MinIO: http://127.0.0.1:9000); undefined for AWS itself. */
  endpoint?: string;
  region: string;
  /** Path-style addressing (http://host/bucket/key): what MinIO and most S3-compatible servers expect. */
  forcePathStyle: boolean;
}

/** An S3-compatible bucket (AWS S3, MinIO, ...), through the AWS SDK. */
export class S3ArtifactStore implements ArtifactStore {
  readonly kind = 's3';
  readonly location: string;
  private readonly client: S3Client;

  constructor(private readonly config: S3StoreConfig) {
    this.client = new S3Client({
      region: config.region,
      forcePathStyle: config.forcePathStyle,
      ...(config.endpoint !== undefined ? { endpoint: config.endpoint } : {}),
      // Credentials come from the SDK's default chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, a role).
      // The SDK retries throttling and 5xx answers itself; callers (activities) retry the rest.
      maxAttempts: 4,
    });
    this.location = `s3://${config.bucket}${config.prefix === '' ? '' : `/${config.prefix}`}`;
  }

  private objectKey(key: string): string {
    checkKey(key);
    return this.config.prefix === '' ? key : `${this.config.prefix}/${key}`;
  }

  refOf(key: string): string {
    return `s3://${this.config.bucket}/${this.objectKey(key)}`;
  }

  /** The object key a ref of this store names; refused for a ref of another bucket. */
  private keyOfRef(ref: string): string {
    const head = `s3://${this.config.bucket}/`;
    if (!ref.startsWith(head)) throw new ArtifactStoreError('refused', `${ref} is not in this store (${this.location})`);
    return ref.slice(head.length);
  }

  async putFiles(key: string, dir: string, files: readonly string[]): Promise<string> {
    for (const rel of files) {
      const body = await readFile(path.join(dir, rel));
      const objectKey = this.objectKey(`${key}/${rel.split(path.sep).join('/')}`);
      await this.attempt(`put ${objectKey}`, () => this.client.send(new PutObjectCommand({ Bucket: this.config.bucket, Key: objectKey, Body: body })));
    }
    return this.refOf(key);
  }

  async fetch(ref: string, scratch: string): Promise<string | null> {
    if (!isStoreRef(ref)) return (await exists(ref)) ? ref : null;
    const folder = this.keyOfRef(ref);
    const keys = await this.listObjects(`${folder}/`);
    if (keys.length === 0) return null;
    for (const objectKey of keys) {
      const rel = objectKey.slice(folder.length + 1);
      const file = path.join(scratch, ...rel.split('/'));
      if (!file.startsWith(path.resolve(scratch) + path.sep)) throw new ArtifactStoreError('refused', `object ${objectKey} would land outside ${scratch}`);
      const bytes = await this.getBytes(objectKey);
      if (bytes === null) throw new ArtifactStoreError('unavailable', `object ${objectKey} vanished while it was fetched`);
      await mkdir(path.dirname(file), { recursive: true });
      await writeFile(file, bytes);
    }
    return scratch;
  }

  async getText(key: string): Promise<string | null> {
    const bytes = await this.getBytes(this.objectKey(key));
    return bytes === null ? null : Buffer.from(bytes).toString('utf8');
  }

  async putText(key: string, text: string): Promise<void> {
    const objectKey = this.objectKey(key);
    await this.attempt(`put ${objectKey}`, () => this.client.send(new PutObjectCommand({ Bucket: this.config.bucket, Key: objectKey, Body: text })));
  }

  async list(prefix: string): Promise<string[]> {
    const strip = this.config.prefix === '' ? 0 : this.config.prefix.length + 1;
    // A prefix may end in '/' (a folder); the rest of it is a key like any other.
    const folder = prefix.endsWith('/');
    const objectPrefix = this.objectKey(folder ? prefix.slice(0, -1) : prefix) + (folder ? '/' : '');
    return (await this.listObjects(objectPrefix)).map((k) => k.slice(strip));
  }

  private async getBytes(objectKey: string): Promise<Uint8Array | null> {
    try {
      const out = await this.client.send(new GetObjectCommand({ Bucket: this.config.bucket, Key: objectKey }));
      return out.Body === undefined ? new Uint8Array() : await out.Body.transformToByteArray();
    } catch (err) {
      if (err instanceof NoSuchKey) return null;
      throw this.failure(err, `get ${objectKey}`);
    }
  }

  private async listObjects(prefix: string): Promise<string[]> {
    const keys: string[] = [];
    let token: string | undefined;
    do {
      const after = token;
      const page = await this.attempt(`list ${prefix}`, () => this.client.send(new ListObjectsV2Command({ Bucket: this.config.bucket, Prefix: prefix, ContinuationToken: after })));
      for (const o of page.Contents ?? []) if (o.Key !== undefined) keys.push(o.Key);
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
    return keys.sort();
  }

  private async attempt<T>(what: string, call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (err) {
      throw this.failure(err, what);
    }
  }

  private failure(err: unknown, what: string): ArtifactStoreError {
    // Access and configuration errors (4xx) will not go away on a retry; everything else (a network error, a 5xx) may.
    const status = err instanceof S3ServiceException ? err.$metadata.httpStatusCode : undefined;
    const kind = status !== undefined && status >= 400 && status < 500 && status !== 408 && status !== 429 ? 'refused' : 'unavailable';
    const why = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    return new ArtifactStoreError(kind, `artifact store ${this.location}: ${what} failed (${why})`, { cause: err });
  }

  destroy(): void {
    this.client.destroy();
  }
}

/**
 * A local copy of the file a ref names, with the files of its folder (a run's result.json and the direction files
 * it names): the file itself for a local ref, else downloaded into `scratch` (emptied first). null when absent.
 */
export async function fetchFile(store: ArtifactStore, ref: string, scratch: string): Promise<string | null> {
  if (isStoreRef(ref)) await rm(scratch, { recursive: true, force: true });
  const folder = await store.fetch(parentRef(ref), scratch);
  if (folder === null) return null;
  const file = path.join(folder, ref.slice(ref.lastIndexOf('/') + 1));
  return (await exists(file)) ? file : null;
}

/** The store the environment configures (common/config.ts validates the fields); `localRoot` for the local one. */
export function artifactStoreFromEnv(env: Readonly<Env>, localRoot: string): ArtifactStore {
  if (env.PHASEGATE_ARTIFACT_STORE === 'local') return new LocalArtifactStore(localRoot);
  return new S3ArtifactStore({
    bucket: env.PHASEGATE_S3_BUCKET!,
    prefix: env.PHASEGATE_S3_PREFIX,
    ...(env.PHASEGATE_S3_ENDPOINT !== undefined ? { endpoint: env.PHASEGATE_S3_ENDPOINT } : {}),
    region: env.PHASEGATE_S3_REGION,
    forcePathStyle: env.PHASEGATE_S3_FORCE_PATH_STYLE,
  });
}
