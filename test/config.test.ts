/** Environment configuration: explicit coercion and one clear error per bad variable. */
import { ConfigError, parseEnv } from '../common/config';
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
