/**
 * The launcher's double of the Modal SDK (runtime/src/phasegate_runtime/modal_fake.py), as tests select it: every
 * launcher process of a test shares one state file, which the test reads back (what was spawned, what cancelled).
 */

/** The environment that points launchers at the double, with fake credentials and a quick poll. */
export function fakeModalEnv(statePath: string, outcome = 'ok'): Record<string, string> {
  return {
    PHASEGATE_MODAL_FAKE: '1',
    PHASEGATE_MODAL_FAKE_STATE: statePath,
    PHASEGATE_MODAL_FAKE_OUTCOME: outcome,
    MODAL_TOKEN_ID: 'ak-test',
    MODAL_TOKEN_SECRET: 'as-test',
    PHASEGATE_MODAL_POLL_SECONDS: '0.05',
  };
}
