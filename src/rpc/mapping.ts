import { durationFromMs, timestampFromDate, timestampFromMs, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { WatchEvent } from "../domain/watch.js";
import { invalidArgument } from "../domain/errors.js";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  Environment as PbEnvironment,
  InactiveReason as PbInactiveReason,
  Severity as PbSeverity,
  TokenKind as PbTokenKind,
  TokenState as PbTokenState,
  IntrospectTokenResponseSchema,
  type IntrospectTokenResponse,
  type JsonWebKeySchema,
  type WatchRevocationsResponseSchema,
  type SecurityEventSchema,
  type TokenInfoSchema,
  type TokenRateLimitSchema,
} from "../../gen/tokens/v1/token_service_pb.js";
import type { TokenRateLimit } from "../domain/usage-binding.js";
import type { Environment } from "../domain/environment.js";
import type { InactiveReason, IntrospectResult, TokenKind } from "../domain/introspect.js";
import type { Deprecation } from "../domain/legacy-jwt.js";
import type { SecurityEventRow, Severity, TokenRecord } from "../domain/model.js";
import { foldedValues } from "../domain/security-events.js";
import { tokenState } from "../domain/model.js";
import { HotAnswers } from "./hot-answers.js";

/**
 * Protobuf ⇄ domain mapping: the only place that knows both shapes.
 */

/** Domain environment → protobuf enum. */
export const PB_ENVIRONMENT: Readonly<Record<Environment, PbEnvironment>> = Object.freeze({
  development: PbEnvironment.DEVELOPMENT,
  staging: PbEnvironment.STAGING,
  production: PbEnvironment.PRODUCTION,
});

const PB_REASON: Readonly<Record<InactiveReason, PbInactiveReason>> = Object.freeze({
  malformed: PbInactiveReason.MALFORMED,
  unknown: PbInactiveReason.UNKNOWN,
  expired: PbInactiveReason.EXPIRED,
  revoked: PbInactiveReason.REVOKED,
  environment_mismatch: PbInactiveReason.ENVIRONMENT_MISMATCH,
  invalid: PbInactiveReason.INVALID,
  legacy_jwt_sunset: PbInactiveReason.LEGACY_JWT_SUNSET,
  network_not_allowed: PbInactiveReason.NETWORK_NOT_ALLOWED,
  token_rate_limited: PbInactiveReason.TOKEN_RATE_LIMITED,
});

/** A token's own rate limit → `TokenRateLimit`; undefined when it has none. */
function rateLimitPb(limit: TokenRateLimit | undefined): MessageInitShape<typeof TokenRateLimitSchema> | undefined {
  return limit === undefined ? undefined : { requests: limit.requests, window: durationFromMs(limit.windowMs) };
}

/**
 * `TokenRateLimit` → domain, for the issue request: undefined when unset; an
 * invalid window becomes NaN, which the domain's range check refuses by name.
 */
export function rateLimitFromPb(limit: { readonly requests: number; readonly window?: Duration | undefined } | undefined): TokenRateLimit | undefined {
  if (limit === undefined) return undefined;
  return { requests: limit.requests, windowMs: limit.window === undefined ? Number.NaN : durationMsFromPb(limit.window) };
}

const PB_KIND: Readonly<Record<TokenKind, PbTokenKind>> = Object.freeze({
  opaque: PbTokenKind.OPAQUE,
  legacy_jwt: PbTokenKind.LEGACY_JWT,
});

const PB_SEVERITY: Readonly<Record<Severity, PbSeverity>> = Object.freeze({
  info: PbSeverity.INFO,
  warning: PbSeverity.WARNING,
  critical: PbSeverity.CRITICAL,
});

/**
 * Protobuf severity → domain; undefined for UNSPECIFIED (no filter). Proto3
 * enums are open, so any int32 can arrive: a value the contract does not
 * define is refused rather than read as "no filter".
 */
export function severityFromPb(value: PbSeverity): Severity | undefined {
  switch (value) {
    case PbSeverity.UNSPECIFIED:
      return undefined;
    case PbSeverity.INFO:
      return "info";
    case PbSeverity.WARNING:
      return "warning";
    case PbSeverity.CRITICAL:
      return "critical";
    default:
      throw invalidArgument("min_severity", "must be SEVERITY_INFO, SEVERITY_WARNING, SEVERITY_CRITICAL or unset");
  }
}

function ts(date: Date | null | undefined): Timestamp | undefined {
  return date ? timestampFromDate(date) : undefined;
}

/**
 * The ranges google/protobuf/timestamp.proto and duration.proto give their
 * fields. A value outside them is not a valid message, whatever its bytes
 * decoded to; int64 seconds can hold far more than a Date or a double can.
 */
const MIN_TIMESTAMP_SECONDS = -62_135_596_800n; // 0001-01-01T00:00:00Z
const MAX_TIMESTAMP_SECONDS = 253_402_300_799n; // 9999-12-31T23:59:59Z
const MAX_DURATION_SECONDS = 315_576_000_000n; // about 10,000 years
const MAX_NANOS = 999_999_999;

/**
 * A protobuf Timestamp → Date, or undefined when unset. A Timestamp outside
 * its defined range (or with nanos outside 0..999,999,999) becomes an invalid
 * Date, which the domain's range check refuses with the field's own message;
 * the seconds are range-checked as bigint, before any conversion can lose them.
 */
export function dateFromPb(value: Timestamp | undefined): Date | undefined {
  if (value === undefined) return undefined;
  const { seconds, nanos } = value;
  if (seconds < MIN_TIMESTAMP_SECONDS || seconds > MAX_TIMESTAMP_SECONDS || !Number.isInteger(nanos) || nanos < 0 || nanos > MAX_NANOS) return new Date(Number.NaN);
  return new Date(Number(seconds) * 1000 + Math.floor(nanos / 1_000_000));
}

/**
 * A protobuf Duration → whole milliseconds (sub-millisecond nanos dropped).
 * NaN for a Duration outside its defined range, with nanos outside
 * ±999,999,999, or with seconds and nanos of opposite signs (all invalid per
 * duration.proto); the domain's range check then refuses it with the field's
 * own message.
 */
export function durationMsFromPb(value: Duration): number {
  const { seconds, nanos } = value;
  if (seconds < -MAX_DURATION_SECONDS || seconds > MAX_DURATION_SECONDS || !Number.isInteger(nanos) || nanos < -MAX_NANOS || nanos > MAX_NANOS) return Number.NaN;
  if ((seconds > 0n && nanos < 0) || (seconds < 0n && nanos > 0)) return Number.NaN;
  // |seconds| ≤ 3.2e11, so the product stays well inside a double's exact integers.
  return Number(seconds) * 1000 + Math.trunc(nanos / 1_000_000);
}

/** A stored token → `TokenInfo`. Never the token or its digest. */
export function tokenInfo(record: TokenRecord, now: Date): MessageInitShape<typeof TokenInfoSchema> {
  const state = tokenState(record, now);
  return {
    id: record.id,
    name: record.name,
    subject: record.subject,
    fullName: record.fullName,
    teams: [...record.teams],
    scopes: [...record.scopes],
    namespaces: [...record.namespaces],
    isAdmin: record.isAdmin,
    metadata: { ...record.metadata },
    environment: PB_ENVIRONMENT[record.environment],
    displayHint: record.displayHint,
    state: state === "active" ? PbTokenState.ACTIVE : state === "expired" ? PbTokenState.EXPIRED : PbTokenState.REVOKED,
    createTime: ts(record.createdAt),
    createdBy: record.createdBy,
    issuedByTokenId: record.issuedByTokenId ?? "",
    expireTime: ts(record.expiresAt),
    lastUsedTime: ts(record.lastUsedAt),
    revokeTime: ts(record.revokedAt),
    revokedBy: record.revokedBy ?? "",
    revokeReason: record.revokeReason ?? "",
    allowedNetworks: [...(record.allowedNetworks ?? [])],
    ...(record.rateLimit !== undefined ? { rateLimit: rateLimitPb(record.rateLimit) } : {}),
    ...rotationInfo(record),
  };
}

/** The rotation links of `TokenInfo` (fields 30–33); nothing for a token never rotated. */
function rotationInfo(record: TokenRecord): { predecessorId?: string; successorId?: string; scheduledRevokeTime?: Timestamp; revokeOnSuccessorUse?: boolean } {
  const rotation = record.rotation;
  if (rotation === undefined) return {};
  return {
    predecessorId: rotation.predecessorId ?? "",
    successorId: rotation.successorId ?? "",
    // Pending only: once revoked, `revoke_time` tells when it happened.
    ...(rotation.scheduledRevokeAt !== null && record.revokedAt === null ? { scheduledRevokeTime: timestampFromDate(rotation.scheduledRevokeAt) } : {}),
    revokeOnSuccessorUse: rotation.revokeOnSuccessorUse,
  };
}

const seconds = (date: Date): bigint => BigInt(Math.floor(date.getTime() / 1000));

/**
 * An introspection result → the RFC 7662-shaped answer. Inactive answers hold
 * no claims at all, only the reason and message (RFC 7662 §2.2).
 */
export function introspectResponse(
  result: IntrospectResult,
  claimsContext: { readonly issuer: string; readonly audience: readonly string[] },
): MessageInitShape<typeof IntrospectTokenResponseSchema> {
  if (!result.active) {
    const retryAfter = result.retryAfterMs === undefined ? {} : { retryAfter: durationFromMs(result.retryAfterMs) };
    return { active: false, reason: PB_REASON[result.reason], message: result.message, ...retryAfter };
  }
  const c = result.claims;
  const d = result.deprecation;
  return {
    active: true,
    scope: c.scopes.join(" "),
    scopes: [...c.scopes],
    clientId: c.id,
    username: c.subject,
    tokenType: "Bearer", // RFC 7662 §2.2 / RFC 6749 §7.1; the kind is in token_kind
    exp: c.expiresAt ? seconds(c.expiresAt) : 0n,
    iat: seconds(c.issuedAt),
    nbf: seconds(c.notBefore ?? c.issuedAt),
    sub: c.subject,
    aud: [...(c.audience ?? claimsContext.audience)],
    iss: c.kind === "opaque" ? claimsContext.issuer : (c.issuer ?? ""),
    jti: c.id,
    teams: [...c.teams],
    namespaces: [...c.namespaces],
    isAdmin: c.isAdmin,
    environment: PB_ENVIRONMENT[c.environment],
    tokenName: c.name,
    metadata: { ...c.metadata },
    fullName: c.fullName,
    tokenKind: PB_KIND[c.kind],
    backendJwt: result.backendJwt ?? "",
    allowedNetworks: [...(c.allowedNetworks ?? [])],
    ...(c.rateLimit !== undefined ? { rateLimit: rateLimitPb(c.rateLimit) } : {}),
    ...(d ? { deprecation: { notice: d.notice, link: d.link, sunsetTime: ts(d.sunsetAt), deprecatedSinceTime: ts(d.deprecatedSince) } } : {}),
  };
}

/**
 * Built answers of the hottest tokens. The cache hands out the same claims on
 * every hit, so a repeat introspection can re-send a message built once
 * (frozen, which also lets the gRPC adapter reuse its encoded bytes). Bounded
 * to a hot set rather than kept per cached token: a message costs about 2 KB,
 * more than the cached token itself. Weakly keyed (see HotAnswers): a token
 * the cache let go takes its answer with it. Answers carrying per-call parts
 * (a backend JWT) are built each time.
 */
const HOT_ANSWERS = new HotAnswers<object, IntrospectTokenResponse>(10_000);

/** How many built answers are kept now (for tests and metrics). */
export function hotAnswerCount(): number {
  return HOT_ANSWERS.size();
}

/** The introspection answer as a message, reused for hot tokens. */
export function introspectAnswer(result: IntrospectResult, claimsContext: { readonly issuer: string; readonly audience: readonly string[] }): IntrospectTokenResponse {
  // Only tokens seen again (answered from the cache) earn a kept answer: a
  // one-off token would only churn the hot set.
  // A rate-limited answer is new each time (its retry-after): not kept.
  // A kept legacy answer's deprecation notice is one object per policy, so its built answer is reusable too.
  const memoKey = result.active ? (result.fromCache === true && result.backendJwt === undefined ? result.claims : undefined) : result.retryAfterMs === undefined ? result : undefined;
  if (memoKey !== undefined) {
    const known = HOT_ANSWERS.get(memoKey);
    if (known !== undefined) return known;
  }
  const answer = create(IntrospectTokenResponseSchema, introspectResponse(result, claimsContext));
  if (memoKey !== undefined) {
    HOT_ANSWERS.set(memoKey, Object.freeze(answer));
  }
  return answer;
}

/**
 * An answer stamped with the revocation position and freshness its replica
 * had when it started answering (read before the cache or the store, so the
 * answer reflects at least that much). A copy: answers may be shared, frozen.
 */
export function withRevocationMark(answer: IntrospectTokenResponse, mark: { readonly position: number; readonly confirmedAt: number }): IntrospectTokenResponse {
  if (!Object.isFrozen(answer)) {
    // Built for this call alone: stamp it in place.
    answer.revocationPosition = BigInt(mark.position);
    if (mark.confirmedAt > 0) answer.revocationConfirmedAt = timestampFromMs(mark.confirmedAt);
    return answer;
  }
  // A shared hot answer: one frozen stamped copy per mark (the hub hands out
  // the same mark object until it changes), so its encoding is reused too.
  const known = STAMPED.get(answer);
  if (known !== undefined && known.mark === mark) return known.stamped;
  const stamped = Object.freeze({
    ...answer,
    revocationPosition: BigInt(mark.position),
    ...(mark.confirmedAt > 0 ? { revocationConfirmedAt: timestampFromMs(mark.confirmedAt) } : {}),
  });
  STAMPED.set(answer, { mark, stamped });
  return stamped;
}

/** Hot answers stamped with the latest mark they were sent with. */
const STAMPED = new WeakMap<IntrospectTokenResponse, { readonly mark: object; readonly stamped: IntrospectTokenResponse }>();

/**
 * The response headers for a legacy JWT answer, so a gateway can pass the
 * notice on unchanged: `X-Auth-Deprecation`, `Deprecation` (RFC 9745, an
 * `@`-prefixed epoch), `Sunset` (RFC 8594, an HTTP-date) and `Link` to the
 * migration documentation (RFC 8288, relation `deprecation`).
 */
export function deprecationHeaders(d: Deprecation): readonly (readonly [string, string])[] {
  // One notice per policy: its headers are built once, off the hot path of a kept legacy answer.
  const known = DEPRECATION_HEADERS.get(d);
  if (known !== undefined) return known;
  const headers = Object.freeze(buildDeprecationHeaders(d));
  DEPRECATION_HEADERS.set(d, headers);
  return headers;
}

const DEPRECATION_HEADERS = new WeakMap<Deprecation, readonly (readonly [string, string])[]>();

function buildDeprecationHeaders(d: Deprecation): [string, string][] {
  return [
    ["x-auth-deprecation", d.notice],
    ["deprecation", `@${Math.floor(d.deprecatedSince.getTime() / 1000)}`],
    ["sunset", d.sunsetAt.toUTCString()],
    ["link", `<${d.link}>; rel="deprecation"; type="text/html"`],
  ];
}

/** A stored security event → protobuf. */
export function securityEvent(row: SecurityEventRow): MessageInitShape<typeof SecurityEventSchema> {
  return {
    id: row.id,
    type: row.type,
    severity: PB_SEVERITY[row.severity],
    firstSeenTime: ts(row.firstSeen),
    lastSeenTime: ts(row.lastSeen),
    count: BigInt(row.count),
    serviceEnvironment: PB_ENVIRONMENT[row.serviceEnvironment],
    tokenEnvironment: row.tokenEnvironment ? PB_ENVIRONMENT[row.tokenEnvironment] : PbEnvironment.UNSPECIFIED,
    callerTokenId: row.callerTokenId ?? "",
    callerSubject: row.callerSubject ?? "",
    peer: row.peer ?? "",
    // A row folded from several user agents or tokens shows a sample and how many (no proto field for more).
    userAgent: foldedValues(row.userAgent, row.userAgentSample, row.distinctUserAgents),
    tokenHint: foldedValues(row.tokenHint, row.tokenHintSample, row.distinctTokenHints),
    tokenId: row.tokenId ?? "",
    message: row.message,
    method: row.method ?? "",
  };
}

/** A public JWK → protobuf; only the members EC and OKP signing keys have. */
export function jsonWebKey(jwk: Readonly<Record<string, unknown>>): MessageInitShape<typeof JsonWebKeySchema> {
  const text = (name: string) => (typeof jwk[name] === "string" ? (jwk[name] as string) : "");
  return { kty: text("kty"), kid: text("kid"), alg: text("alg"), use: text("use"), crv: text("crv"), x: text("x"), y: text("y") };
}

/** A revocation stream event → protobuf. */
export function watchResponse(event: WatchEvent): MessageInitShape<typeof WatchRevocationsResponseSchema> {
  switch (event.kind) {
    case "revocation":
      return { event: { case: "revocation", value: { tokenDigest: Buffer.from(event.key, "base64"), tokenId: event.tokenId, position: BigInt(event.position ?? 0) } } };
    case "legacy_revocation":
      // No digest: the log knows a legacy JWT only by its jti, which goes in
      // `token_id`. A gateway evicts the legacy answers it keeps with that jti;
      // older gateways never cached legacy answers and evict nothing.
      return { event: { case: "revocation", value: { tokenDigest: new Uint8Array(0), tokenId: event.jti, position: BigInt(event.position) } } };
    case "heartbeat":
      return { event: { case: "heartbeat", value: { time: timestampFromMs(event.atMs), confirmedAge: durationFromMs(event.confirmedAgeMs), position: BigInt(event.position ?? 0) } } };
    case "reset":
      return { event: { case: "reset", value: {} } };
  }
}
