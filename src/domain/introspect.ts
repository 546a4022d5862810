import type { Environment } from "./environment.js";
import type { RequestMeta, TokenClaims, TokenRecord } from "./model.js";
import { tokenState } from "./model.js";
import type { TokenDeps } from "./ports.js";
import { classifyToken, digestToken, displayHint } from "./token-format.js";

/** Why a presented token is not active. */
export type InactiveReason = "malformed" | "unknown" | "expired" | "revoked" | "environment_mismatch";

/** What kind of credential was presented. */
export type TokenKind = "opaque" | "legacy_jwt";

/** The claims of an active token, as introspection reports them. */
export interface IntrospectedClaims extends TokenClaims {
  /** The token's id: `jti`. */
  readonly id: string;
  readonly kind: TokenKind;
}

/**
 * The answer to "what is this token?". Inactive is an expected outcome, not an
 * error (RFC 7662 §2.2): it carries a reason for the trusted caller and a
 * message the gateway may show, and no claims at all.
 */
export type IntrospectResult =
  | { readonly active: true; readonly claims: IntrospectedClaims }
  | {
      readonly active: false;
      readonly reason: InactiveReason;
      readonly message: string;
      /** The environment the token belongs to, when its shape says. */
      readonly tokenEnvironment?: Environment;
    };

const MESSAGES: Readonly<Record<Exclude<InactiveReason, "environment_mismatch">, string>> = Object.freeze({
  malformed: "The token is malformed.",
  unknown: "The token is not recognised.",
  expired: "The token has expired.",
  revoked: "The token has been revoked.",
});

/** Frozen inactive answers, shared: the common outcomes allocate nothing. */
const INACTIVE = Object.freeze({
  malformed: Object.freeze({ active: false, reason: "malformed", message: MESSAGES.malformed }),
  unknown: Object.freeze({ active: false, reason: "unknown", message: MESSAGES.unknown }),
  expired: Object.freeze({ active: false, reason: "expired", message: MESSAGES.expired }),
  revoked: Object.freeze({ active: false, reason: "revoked", message: MESSAGES.revoked }),
} satisfies Record<string, IntrospectResult>);

/** The exact message for a token from another environment. */
export function environmentMismatchMessage(token: Environment, service: Environment): string {
  return `Token environment mismatch: ${token} token used in ${service}`;
}

/**
 * Resolves a presented token. The environment guard runs first, on the
 * token's prefix alone, so a foreign token is refused whatever the store
 * holds. A store failure propagates as `TokenError("unavailable")`: an outage
 * must never read as "inactive".
 */
export async function introspectToken(deps: TokenDeps, presented: string, meta: RequestMeta): Promise<IntrospectResult> {
  const shape = classifyToken(presented);
  if (shape.shape !== "opaque") return INACTIVE.malformed;

  const service = deps.policy.environment;
  if (shape.environment !== service) {
    const message = environmentMismatchMessage(shape.environment, service);
    deps.events.record({
      type: "environment_mismatch",
      severity: "critical",
      message,
      serviceEnvironment: service,
      tokenEnvironment: shape.environment,
      tokenHint: displayHint(presented),
      ...metaFields(meta),
    });
    return { active: false, reason: "environment_mismatch", message, tokenEnvironment: shape.environment };
  }

  const record = await deps.store.findByDigest(digestToken(presented));
  // A row from another environment can only exist in a store shared across
  // environments; the prefix check above already makes this unreachable, but
  // the record's own environment is the authority.
  if (record === undefined || record.environment !== service) return INACTIVE.unknown;

  const now = deps.clock.now();
  const state = tokenState(record, now);
  if (state !== "active") return INACTIVE[state];

  deps.usage.note(record.id, now);
  return { active: true, claims: claimsOf(record) };
}

/** The claims of a stored opaque token. */
export function claimsOf(record: TokenRecord): IntrospectedClaims {
  return {
    id: record.id,
    kind: "opaque",
    subject: record.subject,
    fullName: record.fullName,
    teams: record.teams,
    scopes: record.scopes,
    namespaces: record.namespaces,
    isAdmin: record.isAdmin,
    name: record.name,
    metadata: record.metadata,
    environment: record.environment,
    issuedAt: record.createdAt,
    expiresAt: record.expiresAt,
  };
}

/** The request facts every security event carries. */
export function metaFields(meta: RequestMeta): { method: string; peer?: string; userAgent?: string } {
  return { method: meta.method, ...(meta.peer ? { peer: meta.peer } : {}), ...(meta.userAgent ? { userAgent: meta.userAgent } : {}) };
}
