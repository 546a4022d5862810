import type { Environment } from "./environment.js";
import type { InactiveReason, IntrospectedClaims, IntrospectionUse, TokenKind, IntrospectionCache, LegacyAnswerCache } from "./introspect.js";

import type { RateLimits } from "./rate-limit.js";
import type { TokenRateLimiter } from "./usage-binding.js";
import type { RevocationHub } from "./revocation-hub.js";
import type { LegacyJwtPolicy } from "./legacy-jwt.js";
import type { RequestMeta, SecurityEvent, SecurityEventRow, Severity, TokenRecord } from "./model.js";

/** A token about to be stored. */
export type NewToken = Omit<TokenRecord, "lastUsedAt" | "revokedAt" | "revokedBy" | "revokeReason">;

/** Filters and keyset position for listing tokens, newest first. */
export interface TokenListQuery {
  /** Only tokens of this environment: environments may share one store. */
  readonly environment: Environment;
  readonly subject?: string;
  readonly team?: string;
  /** Only tokens issued directly by this token id. */
  readonly issuedByTokenId?: string;
  readonly includeRevoked: boolean;
  readonly includeExpired: boolean;
  /** The time "expired" is judged against. */
  readonly now: Date;
  /** Rows to return. */
  readonly limit: number;
  /** Only rows strictly after this position in (createdAt desc, id desc) order. */
  readonly after?: { readonly createdAt: Date; readonly id: string };
}

/** The outcome of a revocation in the store. */
export interface RevokeOutcome {
  readonly record: TokenRecord;
  /** True when the token had been revoked before; the record then shows the first revocation. */
  readonly alreadyRevoked: boolean;
}

/**
 * Which token `TokenStore.revokeOne` revokes: by id or by SHA-256 digest,
 * only within `environment` and, when `subject` is given, only if it is that
 * subject's (a non-admin revoking by id).
 */
export type RevokeTarget = ({ readonly id: string } | { readonly digest: Uint8Array }) & {
  readonly environment: Environment;
  readonly subject?: string;
};

/**
 * What `TokenStore.revokeOne` did: the outcome of a revocation; `other_subject`
 * when the token exists but is not `subject`'s (left untouched, and never
 * shown); undefined when there is no such token in the environment.
 */
export type RevokeOneOutcome = RevokeOutcome | "other_subject" | undefined;

/** The outcome of revoking a token and everything issued below it. */
export interface CascadeOutcome {
  /** The named token, as for a single revocation. */
  readonly root: RevokeOutcome;
  /** Its descendants revoked by this call (not those revoked before), in no particular order. */
  readonly descendants: readonly TokenRecord[];
}

/**
 * Token persistence. Implementations translate driver failures into
 * `TokenError("unavailable")` so that an outage is never mistaken for an
 * unknown token.
 */
export interface TokenStore {
  /**
   * Stores a token, atomically refusing with `TokenError("resource_exhausted")`
   * when its subject already holds `maxActivePerSubject` active tokens of the
   * token's environment at `now`, and with `TokenError("unauthenticated")`
   * when the issuing token (`issuedByTokenId`) is revoked by the time the
   * row is written (so a cascade racing an issue cannot leave a live child).
   */
  insert(token: NewToken, limits: { readonly maxActivePerSubject: number; readonly now: Date }): Promise<TokenRecord>;
  /**
   * The token with this SHA-256 digest, if any. A store that may answer from
   * a read replica calls `provenAt` with the time (ms) up to which its answer
   * is proven to reflect every revocation (earlier than the call); an answer
   * without it is current as of the call (see domain/replica-reads.ts).
   */
  findByDigest(digest: Uint8Array, provenAt?: (atMs: number) => void): Promise<TokenRecord | undefined>;
  /** The token with this id, if any. */
  findById(id: string): Promise<TokenRecord | undefined>;
  /** Marks a token revoked, durably, before resolving. Undefined when no such id. */
  revoke(id: string, revocation: { readonly by: string; readonly reason: string; readonly at: Date }): Promise<RevokeOutcome | undefined>;
  /**
   * Finds and revokes one token in one step (one round trip to the store),
   * durably, before resolving, with the same guarantees as `revoke`: the
   * first revocation wins, and a repeat gets the record of the first.
   */
  revokeOne(target: RevokeTarget, revocation: { readonly by: string; readonly reason: string; readonly at: Date }): Promise<RevokeOneOutcome>;
  /**
   * Revokes a token and every token below it through `issuedByTokenId`
   * (children, grandchildren, …) in one transaction, durably, before
   * resolving; each revocation is announced like a single one. Undefined
   * when no such id.
   */
  revokeCascade(id: string, revocation: { readonly by: string; readonly reason: string; readonly at: Date }): Promise<CascadeOutcome | undefined>;
  /** Tokens matching the query, newest first. */
  list(query: TokenListQuery): Promise<TokenRecord[]>;
  /** Records last-use times in one batch; unknown ids are ignored. */
  touchLastUsed(entries: ReadonlyMap<string, Date>): Promise<void>;
  /** How many tokens have ever been stored (for the first-start bootstrap). */
  count(): Promise<number>;
  /** Resolves when the store answers a trivial query. */
  ping(): Promise<void>;
}

/** What a revocation records. */
export interface Revocation {
  readonly by: string;
  readonly reason: string;
  readonly at: Date;
}

/**
 * Picks tokens for `RevokeTokens`: every field set must match. Always within
 * one environment.
 */
export interface TokenSelector {
  readonly subject?: string;
  readonly team?: string;
  readonly issuedByTokenId?: string;
  readonly name?: string;
  readonly createdBefore?: Date;
  readonly expireBefore?: Date;
}

/** A recorded `RevokeTokens` operation. */
export interface BulkRevocation {
  readonly id: string;
  readonly environment: Environment;
  readonly selector: TokenSelector;
  readonly reason: string;
  readonly requestedBy: string;
  readonly callerTokenId: string | null;
  /** Only tokens issued at or before this time are revoked: the set cannot grow while it runs. */
  readonly startedAt: Date;
  readonly revokedCount: number;
  readonly finishedAt: Date | null;
}

/**
 * Persistence for rotation and bulk revocation (issue 13). Every revocation
 * here is the same conditional UPDATE as `TokenStore.revoke`, with the same
 * notice to every replica, so each token is revoked exactly once whoever
 * races for it.
 */
export interface LifecycleStore {
  /**
   * Links a successor to the token it replaces and schedules the old one's
   * revocation, in one transaction; undefined (nothing changed) when the old
   * token is revoked or already has a successor.
   */
  linkRotation(oldId: string, successorId: string, link: { readonly scheduledRevokeAt: Date | null; readonly revokeOnSuccessorUse: boolean }): Promise<{ readonly predecessor: TokenRecord; readonly successor: TokenRecord } | undefined>;
  /** Ids of unrevoked tokens of the environment whose scheduled revocation is due at `now`, soonest first. */
  dueRevocations(environment: Environment, now: Date, limit: number): Promise<string[]>;
  /**
   * Revokes those of `ids` still unrevoked (and, with `dueBy`, only those
   * whose scheduled revocation is due by then), durably, each announced like
   * a single revocation; returns the tokens this call revoked.
   */
  revokeMany(ids: readonly string[], revocation: Revocation, options?: { readonly dueBy?: Date }): Promise<TokenRecord[]>;
  /**
   * Records the first use of a successor on its predecessor; returns the
   * predecessor's record (undefined when the link does not hold).
   */
  markSuccessorUsed(predecessorId: string, successorId: string, at: Date): Promise<TokenRecord | undefined>;
  /**
   * Unrevoked rotated tokens of the environment whose successor has been
   * used (at most `limit`): replicas drop their cached answers once, so the
   * next use of an old copy sees the link and raises `rotated_token_reused`.
   */
  usedRotations(environment: Environment, limit: number): Promise<TokenRecord[]>;
  /** Unrevoked tokens matching the selector: how many, and the newest `limit`. */
  matching(environment: Environment, selector: TokenSelector, limit: number): Promise<{ readonly count: number; readonly first: TokenRecord[] }>;
  /** Records a bulk revocation before any token is revoked, leased to the caller until `leaseUntil`. */
  createBulkRevocation(operation: BulkRevocation, leaseUntil: Date): Promise<void>;
  /**
   * Revokes up to `limit` more tokens of the operation in one transaction,
   * adds them to its count and extends its lease; returns those revoked
   * (none: the operation has nothing left).
   */
  bulkRevokeBatch(id: string, at: Date, limit: number, leaseUntil: Date): Promise<TokenRecord[]>;
  /** Marks the operation finished; returns it only to the one caller that finished it. */
  finishBulkRevocation(id: string, at: Date): Promise<BulkRevocation | undefined>;
  /** Takes over an unfinished operation of the environment whose lease ran out, if any. */
  claimBulkRevocation(environment: Environment, now: Date, leaseUntil: Date): Promise<BulkRevocation | undefined>;
}

/** Filters and keyset position for listing security events, newest first. */
export interface SecurityEventQuery {
  readonly type?: string;
  readonly minSeverity?: Severity;
  readonly since?: Date;
  readonly limit: number;
  /** Only rows strictly after this position in (firstSeen desc, id desc) order. */
  readonly after?: { readonly firstSeen: Date; readonly id: string };
}

/**
 * Persistence of security events. Failures are `TokenError`s: `unavailable`
 * for an outage (worth retrying), anything else for a refusal (not).
 */
export interface SecurityEventStore {
  /**
   * Stores folded events, in as many statements as the driver's parameter
   * limit needs. Idempotent by row id: a batch retried after a partial
   * failure stores each row once.
   */
  insertMany(rows: readonly SecurityEventRow[]): Promise<void>;
  /** Events matching the query, newest first. */
  list(query: SecurityEventQuery): Promise<SecurityEventRow[]>;
  /**
   * Deletes at most `limit` rows last seen before `cutoff` and returns how
   * many it deleted. Safe to run from several replicas at once: each skips
   * rows another is deleting.
   */
  pruneBefore(cutoff: Date, limit: number): Promise<number>;
}

/**
 * What the security event recorder counts besides each event, for metrics.
 * Optional members so that a metrics port without them still fits.
 */
export interface SecurityEventMetrics extends Pick<DomainMetrics, "securityEvent"> {
  /** Events folded into a per-window overflow row because the window's row cap was reached. */
  securityEventsOverflowed?(count: number): void;
  /**
   * Events never stored: `buffer_full` when the store was away longer than
   * the retry buffer lasts, `refused` when the store refused the write.
   */
  securityEventsDropped?(reason: "buffer_full" | "refused", count: number): void;
}

/** Where security events go: a log line at once, a folded row soon after. */
export interface EventSink {
  /** Raises an event. Never throws, never waits: it runs on request paths. */
  record(event: SecurityEvent): void;
  /** Writes everything buffered. */
  flush(): Promise<void>;
}

/**
 * Counters of what the domain decided, for metrics. The domain only calls
 * these; `src/observability` implements them (Prometheus), so no metrics
 * library reaches the domain. They run on the hot path: each must be a few
 * array increments, never throw and never wait.
 */
export interface DomainMetrics {
  /**
   * A presented token was resolved: its kind ("unrecognized" when it has
   * neither shape), "active" or the inactive reason, and why it was presented.
   */
  introspected(kind: TokenKind | "unrecognized", outcome: "active" | InactiveReason, use: IntrospectionUse): void;
  /** A security event was raised (every occurrence, including those folded into one row). */
  securityEvent(event: SecurityEvent): void;
}

/** What the introspection cache answered for a presented token: a record, a remembered unknown, or nothing. */
export type CacheOutcome = "hit" | "negative" | "miss";

/**
 * Tracing of what the domain decides, for the span of the call in progress.
 * Implemented in `src/observability/tracing.ts` (OpenTelemetry), so no
 * tracing library reaches the domain; absent when tracing is off, so the hot
 * path pays one property check. Never given a token, digest or credential.
 */
export interface DomainTracing {
  /** Notes the cache's answer on the current call's span, by why the token was presented. */
  cacheOutcome(outcome: CacheOutcome, use: IntrospectionUse): void;
}

/** Time, injected so tests can freeze it. */
export interface Clock {
  now(): Date;
}

/** The system clock. */
export const systemClock: Clock = Object.freeze({ now: () => new Date() });

/** Structured logging, shaped like pino's: fields first, then the message. */
export interface Logger {
  debug(fields: object, message: string): void;
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  error(fields: object, message: string): void;
}

/** Policy the domain needs from configuration. */
export interface TokenPolicy {
  readonly environment: Environment;
  /** Issuer (`iss`) claim of opaque tokens. */
  readonly issuer: string;
  /** Audience (`aud`) claim of opaque tokens; may be empty. */
  readonly audience: readonly string[];
  /** Lifetime applied when a request sets none, in milliseconds. */
  readonly defaultTtlMs: number;
  /** Longest lifetime allowed, in milliseconds. */
  readonly maxTtlMs: number;
  /** When true (the default) every token expires: a request without expiry gets `defaultTtlMs`. When false, such a request gets a token that never expires. */
  readonly requireExpiry: boolean;
  /** Cap on active tokens per subject. */
  readonly maxActiveTokensPerSubject: number;
  /**
   * Metadata keys a non-admin caller may set when issuing. Gateways may read
   * metadata as claims, so any other key needs an admin. Empty: none.
   */
  readonly metadataAllowedKeys: readonly string[];
}

/** Where last-use times go; batched off the request path. */
export interface UsageRecorder {
  /** Notes that a token was used at a time. Never throws, never waits. */
  note(tokenId: string, at: Date): void;
}

/** What legacy JWT handling needs. */
export interface LegacyDeps {
  readonly policy: LegacyJwtPolicy;
  readonly store: LegacyJwtStore;
  /** Notes a legacy introspection by a subject; batched off the request path. */
  readonly usage: { note(subject: string, at: Date): void };
  /**
   * Verified answers kept until the JWT's `exp`, evicted by `jti` on a
   * revocation (`LegacyJwtCache`). Unset: every legacy JWT is verified anew.
   */
  readonly cache?: LegacyAnswerCache;
}

/** A keyset position in a list: the sort time and the id that breaks ties. */
export interface Cursor {
  readonly at: Date;
  readonly id: string;
}

/**
 * Makes and reads the page tokens of every list. They are authenticated with
 * a key all replicas share (`domain/paging.ts`), so a page from one replica
 * continues on another and a forged token is refused.
 */
export interface PageTokenCodec {
  /** The token for the page after `cursor`, bound to these filters. */
  encode(cursor: Cursor, filters: unknown): string;
  /**
   * The cursor in a token made by `encode` for the same filters; undefined for
   * "" (the first page). Anything else throws `invalid_argument` naming `field`.
   */
  decode(field: string, token: string, filters: unknown, isId?: (id: string) => boolean): Cursor | undefined;
}

/**
 * Small secrets the service keeps for itself and every replica must share
 * (the page-token key). Stored in the database, never in configuration.
 */
export interface ServerSecretStore {
  /**
   * The secret stored under `name`; when there is none, `candidate` is stored
   * first. Race-safe: replicas calling this together all get the same bytes.
   */
  getOrCreate(name: string, candidate: Uint8Array): Promise<Uint8Array>;
}

/** Everything the use cases need, built once in main.ts. */
export interface TokenDeps {
  /** Introspection answers by token digest; see `TokenCache`. */
  readonly cache: IntrospectionCache;
  /** Revocation notices of this process, for WatchRevocations streams. */
  readonly revocations: RevocationHub;
  readonly legacy: LegacyDeps;
  readonly backendJwt: BackendJwtMinter;
  readonly store: TokenStore;
  readonly securityEvents: SecurityEventStore;
  readonly events: EventSink;
  readonly usage: UsageRecorder;
  readonly clock: Clock;
  readonly policy: TokenPolicy;
  readonly log: Logger;
  /** Page tokens of every list, under the key all replicas share. */
  readonly pageTokens: PageTokenCodec;
  /** Where outcomes are counted; absent in tests and tools that do not export metrics. */
  readonly metrics?: DomainMetrics;
  /** The replica's rate limits and lookup caps; absent: nothing is limited (tools, most tests). */
  readonly limits?: RateLimits;
  /** Where the current call's trace is annotated; absent when tracing is off. */
  readonly tracing?: DomainTracing;
  /** Buckets of tokens with a rate limit of their own; absent: one shared per process. */
  readonly tokenRates?: TokenRateLimiter;
  /** Rotation and bulk revocation; absent: those calls answer FAILED_PRECONDITION (tools, most tests). */
  readonly lifecycle?: LifecycleDeps;
}

/** What rotation and bulk revocation need. */
export interface LifecycleDeps {
  readonly store: LifecycleStore;
  /** Longest grace period a rotation may ask for, in milliseconds. */
  readonly maxGraceMs: number;
  /** Grace period of a rotation that asks for none, in milliseconds. */
  readonly defaultGraceMs: number;
  /** Watches rotated tokens and successors being used (see `domain/rotate.ts`). */
  readonly watcher: RotationUseWatcher;
}

/** Told by introspection when a token linked by rotation is used. Never throws, never waits. */
export interface RotationUseWatcher {
  /** An active token with a predecessor was used. */
  successorUsed(successorId: string, predecessorId: string): void;
  /** An active token with a successor was used. */
  rotatedTokenUsed(tokenId: string, hint: string | undefined, meta: RequestMeta): void;
}

/** Use of legacy JWTs by one subject, so operators know who still has to migrate. */
export interface LegacyUsage {
  readonly subject: string;
  readonly count: number;
  readonly firstSeen: Date;
  readonly lastSeen: Date;
}

/** Persistence for legacy JWT revocations (by `jti`) and usage. */
export interface LegacyJwtStore {
  /** Whether this `jti` was revoked. */
  isRevoked(jti: string): Promise<boolean>;
  /** Records a revoked `jti`, durably, before resolving. */
  revoke(jti: string, revocation: { readonly by: string; readonly reason: string; readonly at: Date; readonly expiresAt: Date | null }): Promise<{ readonly alreadyRevoked: boolean }>;
  /** Adds folded usage counts in one write. */
  recordUsage(batch: readonly LegacyUsage[]): Promise<void>;
  /** Usage per subject, most recently seen first. */
  listUsage(query: { readonly limit: number; readonly after?: { readonly lastSeen: Date; readonly subject: string } }): Promise<LegacyUsage[]>;
}

/** A key that signs backend JWTs; shared by every replica through the store. */
export interface SigningKey {
  readonly kid: string;
  readonly alg: "ES256" | "EdDSA";
  /** The private JWK (RFC 7517) as stored, so every replica signs with the same keys. */
  readonly privateKey: StoredPrivateKey;
  /** Public JWK, published in the JWKS. */
  readonly publicJwk: Readonly<Record<string, unknown>>;
  readonly createdAt: Date;
  /** Not used for signing before this time, so every replica publishes it first. */
  readonly activatesAt: Date;
}

/**
 * A private key at rest: wrapped (encrypted and authenticated) under the
 * key-encryption key named by `kekId`, or, only in rows written before keys
 * were encrypted (or by a replica of that older version during an upgrade),
 * the plaintext JWK, which the next replica holding a key-encryption key wraps.
 */
export type StoredPrivateKey =
  | { readonly kekId: string; readonly wrapped: Uint8Array }
  | { readonly kekId?: undefined; readonly plaintextJwk: Readonly<Record<string, unknown>> };

/** Persistence of backend JWT signing keys. */
export interface SigningKeyStore {
  /** Every stored key, newest first. */
  list(): Promise<SigningKey[]>;
  /** Stores a key; a key with the same kid is left as it is. */
  insert(key: SigningKey): Promise<void>;
  /** Deletes keys created before this time that are no longer published. */
  prune(kids: readonly string[]): Promise<void>;
  /**
   * Offers every stored key to `reseal`, all of them locked in one
   * transaction, and stores the new private key it answers for a key
   * (`undefined`: leave it). All or nothing: when `reseal` throws, nothing
   * changes. Returns how many keys changed.
   */
  reseal(reseal: (key: SigningKey) => StoredPrivateKey | undefined): Promise<number>;
}

/** Mints short-lived JWTs carrying an opaque token's claims, for backends. */
export interface BackendJwtMinter {
  /** A signed JWT for these claims, reused while it stays valid long enough. */
  mint(claims: IntrospectedClaims, now: Date): Promise<string>;
  /** The public keys that verify them (RFC 7517 §5). */
  jwks(): { keys: Readonly<Record<string, unknown>>[] };
}
