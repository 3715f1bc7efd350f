/**
 * What `promise` rejects with, which must be a `kind` (any other error is rethrown, a resolve fails the
 * test): so a test can assert on the error's own fields.
 */
export async function rejection<E extends Error>(
  promise: Promise<unknown>,
  kind: abstract new (...args: never[]) => E,
): Promise<E> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof kind) return err;
    throw err;
  }
  throw new Error(`expected a ${kind.name}, but the promise resolved`);
}
