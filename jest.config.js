/** Jest runs TypeScript through swc (type-checking is `tsc --noEmit`, a separate step of `make test`). */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  // The native cluster's tests (real Temporal services, PostgreSQL, MinIO) run with `make cluster-test`, which
  // builds their binaries first (and lifts this pattern).
  testPathIgnorePatterns: ['/node_modules/', '/test/cluster/'],
  transform: { '^.+\\.ts$': ['@swc/jest', { jsc: { target: 'es2022' } }] },
  // Integration tests start a real Temporal server and the real Python runtime on a 2-core machine.
  testTimeout: 240_000,
  // One test file at a time: each file starts its own server, and two servers plus two runtimes overload 2 cores.
  maxWorkers: 1,
};
