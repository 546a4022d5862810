import { randomUUID } from "node:crypto";
import type { Environment } from "./environment.js";
import type { TokenClaims } from "./model.js";
import type { NewToken } from "./ports.js";
import type { MintedToken } from "./token-format.js";
import type { TokenRateLimit } from "./usage-binding.js";

/** What any issuing path knows about the token it is about to create. */
export interface ClaimsParams {
  readonly subject: string;
  readonly name: string;
  readonly environment: Environment;
  readonly issuedAt: Date;
  readonly expiresAt: Date | null;
  readonly fullName?: string;
  readonly teams?: readonly string[];
  readonly scopes?: readonly string[];
  readonly namespaces?: readonly string[];
  readonly isAdmin?: boolean;
  readonly metadata?: Readonly<Record<string, string>>;
  /** Canonical CIDRs, validated; empty or absent: any network. */
  readonly allowedNetworks?: readonly string[];
  readonly rateLimit?: TokenRateLimit | undefined;
}

/**
 * The one place that builds a token's claims. `IssueToken`, the bootstrap
 * path and the CLI all come through here, so the same parameters always give
 * the same claims. Inputs are expected to be validated already.
 */
export function buildClaims(params: ClaimsParams): TokenClaims {
  return Object.freeze({
    subject: params.subject,
    fullName: params.fullName ?? "",
    teams: Object.freeze([...(params.teams ?? [])]),
    scopes: Object.freeze([...(params.scopes ?? [])]),
    namespaces: Object.freeze([...(params.namespaces ?? [])]),
    isAdmin: params.isAdmin ?? false,
    name: params.name,
    metadata: Object.freeze({ ...(params.metadata ?? {}) }),
    environment: params.environment,
    issuedAt: params.issuedAt,
    expiresAt: params.expiresAt,
    // Only when set, so an unbound token's claims are what they always were.
    ...(params.allowedNetworks !== undefined && params.allowedNetworks.length > 0 ? { allowedNetworks: Object.freeze([...params.allowedNetworks]) } : {}),
    ...(params.rateLimit !== undefined ? { rateLimit: params.rateLimit } : {}),
  });
}

/**
 * The row to store for freshly minted claims: the digest and hint, never the
 * token. `issuedByTokenId` is the id of the caller's own token (null for
 * bootstrap), the link a cascading revocation follows.
 */
export function newTokenRecord(claims: TokenClaims, minted: MintedToken, createdBy: string, issuedByTokenId: string | null): NewToken {
  return {
    // Every credential carries a jti (RFC 7519 §4.1.7), so it can be revoked by id.
    id: randomUUID(),
    digest: minted.digest,
    displayHint: minted.displayHint,
    name: claims.name,
    subject: claims.subject,
    fullName: claims.fullName,
    teams: claims.teams,
    scopes: claims.scopes,
    namespaces: claims.namespaces,
    isAdmin: claims.isAdmin,
    metadata: claims.metadata,
    environment: claims.environment,
    createdAt: claims.issuedAt,
    createdBy,
    issuedByTokenId,
    expiresAt: claims.expiresAt,
    ...(claims.allowedNetworks !== undefined ? { allowedNetworks: claims.allowedNetworks } : {}),
    ...(claims.rateLimit !== undefined ? { rateLimit: claims.rateLimit } : {}),
  };
}

/**
 * The payload of a backend JWT (RFC 7519 §4): the token's claims as services
 * behind the gateway read them. Built here, beside the token's own claims, so
 * that both always say the same thing. Registered claims (`iat`, `exp`) are
 * set by the signer.
 */
export function backendJwtPayload(
  claims: TokenClaims & { readonly id: string },
  context: { readonly issuer: string; readonly audience: readonly string[]; readonly jti: string },
): Record<string, unknown> {
  return {
    iss: context.issuer,
    sub: claims.subject,
    ...(context.audience.length > 0 ? { aud: context.audience.length === 1 ? context.audience[0] : [...context.audience] } : {}),
    // A new jti per JWT (every credential the service creates has one); the token's own id rides along.
    jti: context.jti,
    token_id: claims.id,
    scope: claims.scopes.join(" "),
    teams: [...claims.teams],
    namespaces: [...claims.namespaces],
    is_admin: claims.isAdmin,
    env: claims.environment,
    token_name: claims.name,
    user: { email: claims.subject, full_name: claims.fullName, is_admin: claims.isAdmin },
  };
}
