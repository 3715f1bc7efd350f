/** Environment configuration: explicit coercion and one clear error per bad variable. */
import path from 'node:path';
import { ConfigError, parseEnv, repoRoot } from '../common/config';
import { runProcess } from './helpers/temporal';
import { connectionSettings } from '../common/temporal-connection';

test('defaults to the embedded dev server', () => {
  const env = parseEnv({});
  expect(connectionSettings(env)).toEqual({ address: '127.0.0.1:7233', namespace: 'default', external: false });
  expect(env.PHASEGATE_STATE_DIR).toBe('.phasegate');
});

test('"false" is false, and TEMPORAL_ADDRESS points at an external cluster', () => {
  const env = parseEnv({ TEMPORAL_ADDRESS: 'temporal.example:7233', TEMPORAL_TLS: 'false', TEMPORAL_NAMESPACE: 'research' });
  expect(env.TEMPORAL_TLS).toBe(false);
  expect(connectionSettings(env)).toEqual({ address: 'temporal.example:7233', namespace: 'research', external: true });
  expect(connectionSettings(parseEnv({ TEMPORAL_ADDRESS: 'x:1', TEMPORAL_API_KEY: 'k' }))).toMatchObject({ tls: true, apiKey: 'k' });
});

test('reports every bad variable by name', () => {
  expect(() => parseEnv({ PHASEGATE_DEV_PORT: 'seventy', TEMPORAL_TLS: 'maybe', LOG_LEVEL: 'loud' })).toThrow(ConfigError);
  try {
    parseEnv({ PHASEGATE_DEV_PORT: 'seventy', TEMPORAL_TLS: 'maybe', LOG_LEVEL: 'loud' });
  } catch (err) {
    const message = (err as Error).message;
    expect(message).toContain('PHASEGATE_DEV_PORT');
    expect(message).toContain('TEMPORAL_TLS');
    expect(message).toContain('LOG_LEVEL');
  }
  expect(() => parseEnv({ TEMPORAL_TLS_CERT_PATH: '/a.pem' })).toThrow(/set both or neither/);
});

test('the s3 artifact store needs a bucket and takes its settings explicitly coerced; the default is this host', () => {
  expect(parseEnv({}).PHASEGATE_ARTIFACT_STORE).toBe('local');
  expect(() => parseEnv({ PHASEGATE_ARTIFACT_STORE: 's3' })).toThrow(/PHASEGATE_S3_BUCKET: required when PHASEGATE_ARTIFACT_STORE is s3/);
  expect(() => parseEnv({ PHASEGATE_ARTIFACT_STORE: 'nfs' })).toThrow(/PHASEGATE_ARTIFACT_STORE/);
  expect(() => parseEnv({ PHASEGATE_ARTIFACT_STORE: 's3', PHASEGATE_S3_BUCKET: 'B_ad' })).toThrow(/PHASEGATE_S3_BUCKET: an S3 bucket name/);
  expect(() => parseEnv({ PHASEGATE_S3_ENDPOINT: 'minio:9000' })).toThrow(/PHASEGATE_S3_ENDPOINT/);
  expect(() => parseEnv({ PHASEGATE_S3_PREFIX: '/abs/' })).toThrow(/PHASEGATE_S3_PREFIX/);
  const env = parseEnv({ PHASEGATE_ARTIFACT_STORE: 's3', PHASEGATE_S3_BUCKET: 'phasegate', PHASEGATE_S3_ENDPOINT: 'http://127.0.0.1:9000', PHASEGATE_S3_FORCE_PATH_STYLE: 'false' });
  expect(env.PHASEGATE_S3_FORCE_PATH_STYLE).toBe(false);
  expect(env.PHASEGATE_S3_REGION).toBe('us-east-1');
});

test('the CLI refuses a bad store configuration by name with exit 2, before connecting to anything', async () => {
  const r = await runProcess(path.join(repoRoot, 'bin', 'phasegate'), ['list'], { PATH: process.env.PATH, PHASEGATE_ARTIFACT_STORE: 's3', PHASEGATE_S3_ENDPOINT: 'http://127.0.0.1:9' });
  expect(r.out).toContain('PHASEGATE_S3_BUCKET: required when PHASEGATE_ARTIFACT_STORE is s3');
  expect(r.code).toBe(2);
});
