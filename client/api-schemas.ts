/**
 * The HTTP API's request shapes, declared once as zod schemas: the routes validate requests with them and the
 * OpenAPI document (`GET /openapi.json`) is generated from them. The signed decision's schema restates the
 * field formats of domain/decisions.ts from its own constants; the domain check (`decisionShapeProblem`) and,
 * finally, the workflow's validator stay the authorities on what a decision may say.
 */
import { z } from '@hono/zod-openapi';
import { DECISION_TEXT_LIMITS, PERSON_NAME, REVIEW_VERDICTS, RUN_ID, type DecisionKind } from '../domain/decisions';
import { PHASE_ID } from './phases';

export const phaseIdParam = z.object({
  id: z
    .string()
    .regex(PHASE_ID, 'must be a phase id (lowercase letters, digits and dashes, as `start` prints it)')
    .openapi({ param: { name: 'id', in: 'path' }, example: 'demo-tooling-parity-0123456789ab' }),
});

export const startBody = z.strictObject({ protocol: z.string().min(1).max(4096).openapi({ description: 'Path of a protocol file inside a configured protocol folder' }) }).openapi('StartRequest');

export const listQuery = z.object({
  status: z.string().max(40).optional().openapi({ description: 'Only phases in this status (e.g. AWAITING_BUDGET)' }),
  waiting: z.enum(['me']).optional().openapi({ description: '"me": only phases whose open gate waits for the caller' }),
});

const text = (limit: number): z.ZodString => z.string().max(limit);

export const decisionContentSchemas = {
  'approve-budget': z.strictObject({ usd: z.string().max(40).openapi({ example: '0.05', description: 'Decimal dollars, at most 6 decimals' }), note: text(DECISION_TEXT_LIMITS.note) }),
  'reject-budget': z.strictObject({ reason: text(DECISION_TEXT_LIMITS.reason).min(1) }),
  review: z.strictObject({ verdict: z.enum(REVIEW_VERDICTS), ref: text(DECISION_TEXT_LIMITS.ref), notes: text(DECISION_TEXT_LIMITS.notes) }),
} as const;

const decisionFields = {
  v: z.literal(2),
  phaseId: z.string().max(200),
  protocolHash: z.string().regex(/^[0-9a-f]{64}$/, 'must be 64 hex digits'),
  run: z.string().regex(RUN_ID, "must be the phase's run id (a UUID)"),
  by: z.string().regex(PERSON_NAME, "must be a person's name"),
  nonce: z.string().regex(/^[0-9a-f]{32}$/, 'must be 32 lowercase hex digits'),
  signedAt: z.string().max(40).openapi({ example: '2025-01-01T00:00:00.000Z' }),
};

/** A decision before it is signed: what `POST /decisions/message` turns into the exact bytes to sign. */
export function unsignedDecisionSchema<K extends DecisionKind>(kind: K) {
  return z.strictObject({ ...decisionFields, kind: z.literal(kind), content: decisionContentSchemas[kind] });
}

/** A signed decision as the CLI or the console sends it: the fields above plus an Ed25519 signature. */
export function signedDecisionSchema<K extends DecisionKind>(kind: K) {
  return unsignedDecisionSchema(kind)
    .extend({ signature: z.string().length(88, 'missing or not an Ed25519 signature (88 base64 characters): decisions must be signed') })
    .openapi(`SignedDecision_${kind.replace('-', '_')}`);
}

export const anyUnsignedDecision = z
  .discriminatedUnion('kind', [unsignedDecisionSchema('approve-budget'), unsignedDecisionSchema('reject-budget'), unsignedDecisionSchema('review')])
  .openapi('UnsignedDecision');

export const errorBody = z.object({ error: z.string(), kind: z.string() }).openapi('Error');
