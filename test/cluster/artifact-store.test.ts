/**
 * The S3 artifact store against a real MinIO (built from the Go module proxy by scripts/cluster/build.sh): files
 * and text round-trip by key, a folder ref fetches its files, phase records live there with a FROZEN record
 * final, and errors come by kind (wrong credentials: refused; nothing listening: unavailable).
 */
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ArtifactStoreError, childRef, fetchFile, parentRef, S3ArtifactStore, type S3StoreConfig } from '../../common/artifact-store';
import { RecordRefused, RecordUnreadable, StoredPhaseRecords } from '../../common/phase-records';
import { phaseInputOf } from '../../protocols/load';
import { initialState } from '../../workflows/phase-logic';
import { startMinio, type Minio } from '../helpers/cluster';
import { freePort, testProtocol } from '../helpers/temporal';

let minio: Minio;
const saved = { ...process.env };

beforeAll(async () => {
  minio = await startMinio();
  minio.createBucket('phasegate-test');
  // The SDK's default credential chain reads these, as a deployment's worker would.
  Object.assign(process.env, minio.credentials);
});
afterAll(async () => {
  process.env = saved;
  await minio?.stop();
});

const config = (over: Partial<S3StoreConfig> = {}): S3StoreConfig => ({ bucket: 'phasegate-test', prefix: 'deploy-a', endpoint: minio.endpoint, region: 'us-east-1', forcePathStyle: true, ...over });

function runFolder(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'phasegate-run-'));
  mkdirSync(path.join(dir, 'directions'));
  writeFileSync(path.join(dir, 'directions', 'a.npy'), Buffer.from([0, 1, 2, 255]));
  writeFileSync(path.join(dir, 'result.json'), '{"ok":true}\n');
  return dir;
}

test('a run folder stored under a key is fetched whole into another folder by the ref of its result', async () => {
  const store = new S3ArtifactStore(config());
  const ref = childRef(await store.putFiles('runs/p-1/m/attempt-1', runFolder(), ['directions/a.npy', 'result.json']), 'result.json');
  expect(ref).toBe('s3://phasegate-test/deploy-a/runs/p-1/m/attempt-1/result.json');
  expect(parentRef(ref)).toBe(store.refOf('runs/p-1/m/attempt-1'));

  const scratch = path.join(mkdtempSync(path.join(os.tmpdir(), 'phasegate-fetch-')), 'copy');
  const local = await fetchFile(store, ref, scratch);
  expect(local).toBe(path.join(scratch, 'result.json'));
  expect(readFileSync(local!, 'utf8')).toBe('{"ok":true}\n');
  expect([...readFileSync(path.join(scratch, 'directions', 'a.npy'))]).toEqual([0, 1, 2, 255]);
  expect(await store.list('runs/p-1/')).toEqual(['runs/p-1/m/attempt-1/directions/a.npy', 'runs/p-1/m/attempt-1/result.json']);
  // Another prefix in the same bucket is another deployment: it sees nothing of this one.
  expect(await new S3ArtifactStore(config({ prefix: 'deploy-b' })).list('runs/')).toEqual([]);
  expect(await fetchFile(store, store.refOf('runs/p-1/m/attempt-2/result.json'), scratch)).toBeNull();
  store.destroy();
});

test('refuses keys that climb out of their prefix and refs of another bucket', async () => {
  const store = new S3ArtifactStore(config());
  await expect(store.putText('records/../../x.json', '{}')).rejects.toMatchObject({ kind: 'refused' });
  await expect(store.fetch('s3://elsewhere/runs/x', os.tmpdir())).rejects.toMatchObject({ kind: 'refused' });
  store.destroy();
});

test('phase records live in the store: written by one worker, read by another, FROZEN final', async () => {
  const a = new StoredPhaseRecords(new S3ArtifactStore(config()));
  const b = new StoredPhaseRecords(new S3ArtifactStore(config()));
  const loaded = testProtocol('store-records');
  const input = phaseInputOf(loaded);
  const state = initialState(input, '2026-01-01T00:00:00.000Z');
  await a.write(input, state);
  expect((await b.read(input.phaseId))?.state.status).toBe('AWAITING_BUDGET');
  expect((await b.list()).records.map((r) => r.phaseId)).toContain(input.phaseId);
  await a.write(input, { ...state, status: 'FROZEN' });
  await expect(b.write(input, { ...state, status: 'RUNNING' })).rejects.toBeInstanceOf(RecordRefused);
  expect(await b.read('no-such-phase')).toBeNull();
});

test('an unreadable record in the store is named by list, not dropped, and kept aside when its phase writes again', async () => {
  const store = new S3ArtifactStore(config());
  const records = new StoredPhaseRecords(store);
  const input = phaseInputOf(testProtocol('store-unreadable'));
  const good = phaseInputOf(testProtocol('store-readable'));
  await records.write(good, initialState(good, '2026-01-01T00:00:00.000Z'));
  const key = `records/${input.phaseId}.json`;
  await store.putText(key, '{"phaseId": "truncated mid-wr');
  const listed = await records.list();
  expect(listed.unreadable).toEqual([input.phaseId]);
  expect(listed.records.map((r) => r.phaseId)).toContain(good.phaseId);
  const err = await records.read(input.phaseId).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(RecordUnreadable);
  expect((err as Error).message).not.toContain('truncated');
  const fresh = initialState(input, '2026-01-01T00:00:00.000Z');
  await expect(records.write(input, fresh)).rejects.toBeInstanceOf(RecordRefused);
  await records.write(input, { ...fresh, appliedDecisions: ['approve:demo-approver:1000000'] });
  expect((await records.read(input.phaseId))?.state.status).toBe('AWAITING_BUDGET');
  const aside = (await store.list('records/')).filter((k) => k.startsWith(`${key}.unreadable-`));
  expect(aside).toHaveLength(1);
  expect(await store.getText(aside[0]!)).toBe('{"phaseId": "truncated mid-wr');
  expect((await records.list()).unreadable).toEqual([]);
  store.destroy();
});

test('wrong credentials are refused (not retried); a store nobody listens on is unavailable', async () => {
  process.env.AWS_SECRET_ACCESS_KEY = 'wrong';
  try {
    const wrong = new S3ArtifactStore(config());
    const err = await wrong.getText('records/x.json').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ArtifactStoreError);
    expect(err).toMatchObject({ kind: 'refused' });
    expect((err as Error).message).toContain('s3://phasegate-test/deploy-a');
  } finally {
    Object.assign(process.env, minio.credentials);
  }
  const nobody = new S3ArtifactStore(config({ endpoint: `http://127.0.0.1:${await freePort()}` }));
  await expect(nobody.putText('records/x.json', '{}')).rejects.toMatchObject({ kind: 'unavailable' });
});
