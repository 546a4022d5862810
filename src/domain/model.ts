import type { Environment } from "./environment.js";
import type { TokenRateLimit } from "./usage-binding.js";

/** What a token says about its holder: the attributes every kind of token carries. */
export interface TokenAttributes {
  /** A human name for the token. */
  readonly name: string;
  readonly subject: string;
  readonly fullName: string;
  readonly teams: readonly string[];
  readonly scopes: readonly string[];
  readonly namespaces: readonly string[];
  readonly isAdmin: boolean;
  readonly metadata: Readonly<Record<string, string>>;
  readonly environment: Environment;
  /** Null only when the service allows tokens without expiry. */
  readonly expiresAt: Date | null;
  /** Networks (canonical CIDR) the token may be used from; absent or empty: any (see `usage-binding.ts`). */
  readonly allowedNetworks?: readonly string[];
  /** The token's own rate limit, per replica; absent: none. */
  readonly rateLimit?: TokenRateLimit | undefined;
}

/** A stored token: everything the service keeps about it. Never the token itself. */
export interface TokenRecord extends TokenAttributes {
  /** UUID; also the `jti` claim. */
  readonly id: string;
  /** SHA-256 of the token. */
  readonly digest: Uint8Array;
  /** Prefix and last four characters. */
  readonly displayHint: string;
  readonly createdAt: Date;
  readonly createdBy: string;
  /**
   * The id of the token whose holder issued this one; null for bootstrap
   * tokens (and tokens stored before it was recorded). Revocation with
   * cascade follows this link down.
   */
  readonly issuedByTokenId: string | null;
  readonly lastUsedAt: Date | null;
  readonly revokedAt: Date | null;
  readonly revokedBy: string | null;
  readonly revokeReason: string | null;
  /** Set only for a token that was rotated or is a rotation's successor (see `domain/rotate.ts`). */
  readonly rotation?: RotationLinks;
}

/** How a token is linked through rotation (`RotateToken`). */
export interface RotationLinks {
  /** The token this one replaced. */
  readonly predecessorId: string | null;
  /** The token that replaced this one. */
  readonly successorId: string | null;
  /** When this token's grace period ends and it is revoked. */
  readonly scheduledRevokeAt: Date | null;
  /** Revoke this token at its successor's first use. */
  readonly revokeOnSuccessorUse: boolean;
  /** When the successor was first used (on any replica). */
  readonly successorUsedAt: Date | null;
}

/** What a token stands for: the claims every issuing path builds through `buildClaims`. */
export interface TokenClaims extends TokenAttributes {
  readonly issuedAt: Date;
}

/** The token's state at a given time. */
export type TokenState = "active" | "expired" | "revoked";

/** Computes a record's state at `now`. Revocation wins over expiry. */
export function tokenState(record: Pick<TokenRecord, "revokedAt" | "expiresAt">, now: Date): TokenState {
  if (record.revokedAt !== null) return "revoked";
  if (record.expiresAt !== null && record.expiresAt.getTime() <= now.getTime()) return "expired";
  return "active";
}

/** The authenticated caller of an RPC: the claims of its bearer token. */
export interface Caller {
  readonly tokenId: string;
  readonly subject: string;
  readonly fullName: string;
  readonly scopes: readonly string[];
  readonly teams: readonly string[];
  readonly namespaces: readonly string[];
  readonly isAdmin: boolean;
  readonly expiresAt: Date | null;
  /** The caller's token's networks: a non-admin may not issue a token usable from elsewhere. */
  readonly allowedNetworks?: readonly string[];
  /** The caller's token's rate limit: a non-admin may not issue a looser one. */
  readonly rateLimit?: TokenRateLimit | undefined;
}

/** Facts about the request, for security events. Never the credentials. */
export interface RequestMeta {
  /** Full RPC method name, e.g. `/tokens.v1.TokenService/IntrospectToken`. */
  readonly method: string;
  readonly peer?: string;
  readonly userAgent?: string;
  /** The request's id (`x-request-id`), so a security event can be traced to its request. */
  readonly requestId?: string;
}

/** Permission scopes of this service itself. */
export const SCOPES = Object.freeze({
  introspect: "tokens.introspect",
  create: "tokens.create",
  read: "tokens.read",
  revoke: "tokens.revoke",
} as const);

/** One of this service's own permission scopes. */
export type ServiceScope = (typeof SCOPES)[keyof typeof SCOPES];

/** How serious a security event is. */
export type Severity = "info" | "warning" | "critical";

/** The kinds of security event the service raises. */
export type SecurityEventType =
  | "environment_mismatch"
  | "permission_denied"
  | "authentication_failed"
  | "platform_admin_bootstrap"
  | "token_revoked"
  | "legacy_jwt_without_jti"
  | "legacy_jwt_without_env"
  /** A caller or an address went past a rate limit (see `domain/rate-limit.ts`). */
  | "rate_limit_exceeded"
  /** A token bound to networks was used from outside them, or without a client address (`usage-binding.ts`). */
  | "token_network_denied"
  /** A token was reported leaked (secret scanning) and revoked. */
  | "token_leaked"
  /** A rotated token was used after its successor had been used: an old copy is still deployed. */
  | "rotated_token_reused"
  /** A `RevokeTokens` operation finished: one event with the selector and the count. */
  | "tokens_bulk_revoked";

/** A security event as raised. Identical events are folded into one stored row with a count. */
export interface SecurityEvent {
  readonly type: SecurityEventType;
  readonly severity: Severity;
  readonly message: string;
  readonly serviceEnvironment: Environment;
  readonly tokenEnvironment?: Environment;
  readonly callerTokenId?: string;
  readonly callerSubject?: string;
  readonly peer?: string;
  readonly userAgent?: string;
  /** Display hint of the presented token; never the token. */
  readonly tokenHint?: string;
  readonly tokenId?: string;
  readonly method?: string;
  /**
   * The id of the request that raised it, for the log line only: it is not
   * stored and not part of what makes two events identical (else no two
   * events would ever fold).
   */
  readonly requestId?: string;
}

/**
 * A stored security event: one or more occurrences folded by what identifies
 * the actor (type, severity, message, peer, caller, method, environments,
 * token id), not by what the actor presented. `tokenHint` and `userAgent` are
 * those of the first occurrence; when the folded occurrences presented more
 * than one, the samples and distinct counts say so.
 */
export interface SecurityEventRow extends SecurityEvent {
  readonly id: string;
  readonly firstSeen: Date;
  readonly lastSeen: Date;
  readonly count: number;
  /** A few of the distinct display hints presented (never tokens), first seen first; set only when there were several. */
  readonly tokenHintSample?: readonly string[];
  /** How many distinct display hints were presented: exact up to 64, estimated (±7 %) above. Set with the sample. */
  readonly distinctTokenHints?: number;
  /** A few of the distinct user agents, first seen first; set only when there were several. */
  readonly userAgentSample?: readonly string[];
  /** How many distinct user agents: exact up to 64, estimated above. Set with the sample. */
  readonly distinctUserAgents?: number;
  /**
   * Set only on an overflow row, which stands for every event of its type and
   * severity beyond the per-window row cap: how many distinct fold keys
   * (actors) it folded, exact up to 64, estimated above.
   */
  readonly foldedSources?: number;
}
