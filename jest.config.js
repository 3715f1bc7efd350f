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
  // Two test files at a time. Measured on this 2-core machine: one file at a time keeps 0.9 cores busy on average
  // (a file mostly waits on timers, heartbeat timeouts and the Modal double's holds), and the suite took 805 s;
  // two at a time took 416 s at 1.4 cores. Each file has its own server, task queues and folders.
  maxWorkers: 2,
};
