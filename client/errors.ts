/**
 * Errors meant for the person at the CLI or the HTTP API, by kind. One table maps each kind to the CLI's exit
 * code and the HTTP status, so no caller ever routes an error by its message text.
 */
import { ArtifactStoreError } from '../common/artifact-store';

export const ERROR_KINDS = {
  /** Bad input: a field is missing, malformed or out of range. Nothing was started or changed. */
  invalid: { exitCode: 2, httpStatus: 400 },
  /** A well-formed request the phase refused (a gate's validator, a frozen phase, an unmet prerequisite). */
  refused: { exitCode: 2, httpStatus: 409 },
  notFound: { exitCode: 2, httpStatus: 404 },
  /** No or an unknown bearer token (HTTP only). */
  unauthorized: { exitCode: 2, httpStatus: 401 },
  /** Authenticated, but not allowed: a decision signed by someone else, a foreign Origin or Host (HTTP only). */
  forbidden: { exitCode: 2, httpStatus: 403 },
  /** Temporal (or another service) cannot be reached. */
  unavailable: { exitCode: 1, httpStatus: 503 },
  /** The operation ran and the answer is "no": verification failed, the phase ended elsewhere, a wait timed out. */
  failed: { exitCode: 1, httpStatus: 500 },
} as const;

export type ErrorKind = keyof typeof ERROR_KINDS;

export class PhaseError extends Error {
  override readonly name = 'PhaseError';
  constructor(
    readonly kind: ErrorKind,
    message: string,
  ) {
    super(message);
  }

  get exitCode(): 1 | 2 {
    return ERROR_KINDS[this.kind].exitCode;
  }

  get httpStatus(): number {
    return ERROR_KINDS[this.kind].httpStatus;
  }
}

/** An error of a lower layer as the person should see it, by its kind; anything else unchanged. */
export function asPhaseError(err: unknown): unknown {
  // The artifact store: unreachable is 'unavailable' (try again), refused (credentials, bucket, key) is final.
  if (err instanceof ArtifactStoreError) return new PhaseError(err.kind, err.message);
  return err;
}
