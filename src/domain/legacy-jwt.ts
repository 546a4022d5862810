import { errors, jwtVerify, type CryptoKey, type JWTPayload, type KeyObject } from "jose";
import { parseEnvironment, type Environment } from "./environment.js";
import type { TokenClaims } from "./model.js";
import { TokenCache, type CacheEntry } from "./token-cache.js";

/**
 * Legacy JWTs from the old system, accepted through a deprecation window.
 *
 * Everything cheap is checked before any signature work: size, shape (a JWS
 * compact serialisation has three parts; five is a JWE, refused), header
 * (`alg` from the allow-list and never `none`; no `jwk`, `jku`, `x5u`, `x5c`
 * or `crit`, RFC 8725 §3.1 and §3.10), then a key bound to that algorithm.
 * A key is only ever used with the one algorithm it was configured for, so an
 * RS256 public key can never be fed to an HS256 check (algorithm confusion,
 * RFC 8725 §2.1).
 */

/** Signature algorithms a legacy key may be bound to. `none` is never among them. */
export const LEGACY_ALGORITHMS = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"] as const;

/** One of the allowed legacy algorithms. */
export type LegacyAlgorithm = (typeof LEGACY_ALGORITHMS)[number];

/** A verification key bound to one algorithm. */
export interface LegacyKey {
  /** Matches the JWT header's `kid` when both have one. */
  readonly kid?: string;
  readonly alg: LegacyAlgorithm;
  /** Imported once, at start-up. */
  readonly key: CryptoKey | KeyObject;
  /** For logs: which configured key this is, e.g. `hmac-current`. */
  readonly label: string;
}

/** How legacy JWTs are checked and retired. */
export interface LegacyJwtPolicy {
  /** Empty: legacy JWTs are not accepted at all. */
  readonly keys: readonly LegacyKey[];
  readonly issuer?: string;
  readonly audience?: readonly string[];
  /** Refuse JWTs without `jti` (they cannot be revoked one by one). */
  readonly requireJti: boolean;
  /** When the deprecation window opened (the release of API tokens). */
  readonly releaseAt: Date;
  /** After this instant legacy JWTs are inactive (`legacy_jwt_sunset`). */
  readonly sunsetAt: Date;
  /** Where callers learn how to migrate. */
  readonly migrationUrl: string;
  /** Longest JWT looked at, in characters. */
  readonly maxLength: number;
  /** Allowed clock skew for `exp`/`nbf`/`iat`, in seconds. */
  readonly clockToleranceSec: number;
  /**
   * Refuse JWTs without an `env` claim (`LEGACY_JWT_REQUIRE_ENV`): without
   * one, nothing tells a production JWT from a development one signed with a
   * secret shared across environments.
   */
  readonly requireEnv: boolean;
}

/** The deprecation notice that rides on every successful legacy answer. */
export interface Deprecation {
  readonly notice: string;
  readonly link: string;
  readonly sunsetAt: Date;
  readonly deprecatedSince: Date;
}

/** The fixed text of the deprecation notice (also the `X-Auth-Deprecation` header). */
export const DEPRECATION_NOTICE = "JWT tokens are deprecated. Please migrate to API tokens.";

/** The claims of a verified legacy JWT. */
export interface LegacyClaims extends TokenClaims {
  /** `jti`, or undefined when the JWT has none. */
  readonly jti: string | undefined;
  /** `iss`, when present. */
  readonly issuer: string | undefined;
  readonly audience: readonly string[];
  readonly notBefore: Date | undefined;
  /** The environment the JWT names in its `env` claim, if any (see `LegacyJwtPolicy.requireEnv`). */
  readonly claimedEnvironment: Environment | undefined;
}

/** Why a legacy JWT was refused. */
export type LegacyRefusal = {
  readonly ok: false;
  readonly reason: "malformed" | "invalid" | "expired";
  readonly message: string;
};

/** The outcome of checking a legacy JWT. */
export type LegacyCheck = { readonly ok: true; readonly claims: LegacyClaims } | LegacyRefusal;

/** The NumericDates (RFC 7519 §2) accepted: years 1 to 9999, protobuf's Timestamp range. */
const MIN_TIME_CLAIM_SECONDS = -62_135_596_800;
const MAX_TIME_CLAIM_SECONDS = 253_402_300_799;

const REFUSED_HEADERS = ["jwk", "jku", "x5u", "x5c", "crit"] as const;
const MAX_HEADER_LENGTH = 1024;

function refuse(reason: LegacyRefusal["reason"], message: string): LegacyRefusal {
  return { ok: false, reason, message };
}

/**
 * Verifies a legacy JWT against the configured keys at `now`. Returns the
 * claims, or a refusal with a reason and a caller-safe message.
 */
export async function verifyLegacyJwt(policy: LegacyJwtPolicy, jwt: string, now: Date): Promise<LegacyCheck> {
  if (jwt.length > policy.maxLength) return refuse("malformed", "The token is malformed.");
  const parts = jwt.split(".");
  if (parts.length === 5) return refuse("malformed", "Encrypted JWTs (JWE) are not accepted.");
  if (parts.length !== 3 || parts[0]!.length > MAX_HEADER_LENGTH) return refuse("malformed", "The token is malformed.");
  // RFC 7515 §2 and §7.1: each part is base64url without padding. Decoders
  // (jose's among them) skip whitespace and padding and ignore spare bits, so
  // many strings would verify as one JWT; only its one canonical spelling is
  // accepted, so a JWT is always the same string (in logs, hints, deny lists).
  if (!parts.every(isCanonicalBase64url)) return refuse("malformed", "The token is malformed.");

  let header: Record<string, unknown>;
  try {
    header = JSON.parse(Buffer.from(parts[0]!, "base64url").toString("utf8")) as Record<string, unknown>;
  } catch {
    return refuse("malformed", "The token is malformed.");
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) return refuse("malformed", "The token is malformed.");
  const alg = header.alg;
  if (typeof alg !== "string" || alg.toLowerCase() === "none") return refuse("invalid", "Unsigned JWTs are not accepted.");
  for (const name of REFUSED_HEADERS) {
    if (name in header) return refuse("invalid", `JWTs with a "${name}" header are not accepted.`);
  }
  const kid = typeof header.kid === "string" ? header.kid : undefined;
  // Only keys bound to the header's algorithm are candidates: the algorithm
  // picks the key family, never the other way round.
  const candidates = policy.keys.filter((k) => k.alg === alg && (kid === undefined || k.kid === undefined || k.kid === kid));
  if (candidates.length === 0) return refuse("invalid", "The token is not signed with an accepted key and algorithm.");

  let payload: JWTPayload | undefined;
  for (const candidate of candidates) {
    try {
      ({ payload } = await jwtVerify(jwt, candidate.key, {
        algorithms: [candidate.alg],
        ...(policy.issuer !== undefined ? { issuer: policy.issuer } : {}),
        ...(policy.audience !== undefined && policy.audience.length > 0 ? { audience: [...policy.audience] } : {}),
        currentDate: now,
        clockTolerance: policy.clockToleranceSec,
        requiredClaims: ["exp"],
      }));
      break;
    } catch (error) {
      if (error instanceof errors.JWSSignatureVerificationFailed) continue; // try the previous secret
      return refusalOf(error);
    }
  }
  if (payload === undefined) return refuse("invalid", "The token's signature is not valid.");
  // jose checks `iat` only against a maximum age; an issue time in the future
  // (beyond the skew allowed for exp and nbf) means a wrong clock or a forgery.
  if (typeof payload.iat === "number" && payload.iat > now.getTime() / 1000 + policy.clockToleranceSec) {
    return refuse("invalid", "The token's issue time (iat) is in the future.");
  }
  return claimsOf(payload, now);
}

const BASE64URL = /^[A-Za-z0-9_-]*$/;
const BASE64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/**
 * Whether a string is the canonical base64url encoding (RFC 4648 §5, no
 * padding, RFC 7515 §2) of some bytes: alphabet only, no length that leaves a
 * lone 6-bit character, and the unused low bits of the last character zero
 * (RFC 4648 §3.5), so no two strings decode to the same bytes.
 */
export function isCanonicalBase64url(text: string): boolean {
  if (!BASE64URL.test(text)) return false;
  const tail = text.length % 4;
  if (tail === 1) return false;
  if (tail === 0) return true;
  const last = BASE64URL_ALPHABET.indexOf(text[text.length - 1]!);
  // Two characters carry one byte (4 spare bits), three carry two (2 spare bits).
  return (last & (tail === 2 ? 0x0f : 0x03)) === 0;
}

function refusalOf(error: unknown): LegacyRefusal {
  if (error instanceof errors.JWTExpired) return refuse("expired", "The token has expired.");
  if (error instanceof errors.JWTClaimValidationFailed) {
    switch (error.claim) {
      case "iss":
        return refuse("invalid", "The token was issued by an issuer this service does not accept.");
      case "aud":
        return refuse("invalid", "The token is not meant for this audience.");
      case "nbf":
        return refuse("invalid", "The token is not valid yet.");
      case "exp":
        return refuse("invalid", "The token has no expiry.");
      default:
        return refuse("invalid", `The token's "${error.claim}" claim is not valid.`);
    }
  }
  if (error instanceof errors.JOSEAlgNotAllowed) return refuse("invalid", "The token is not signed with an accepted key and algorithm.");
  if (error instanceof errors.JOSEError) return refuse("malformed", "The token is malformed.");
  throw error;
}

function stringList(value: unknown): string[] | undefined {
  if (value === undefined) return [];
  if (!Array.isArray(value) || !value.every((v) => typeof v === "string")) return undefined;
  return value as string[];
}

function claimsOf(payload: JWTPayload, now: Date): LegacyCheck {
  const user = (typeof payload.user === "object" && payload.user !== null ? payload.user : {}) as Record<string, unknown>;
  const subject = typeof payload.sub === "string" && payload.sub !== "" ? payload.sub : typeof user.email === "string" ? user.email : "";
  if (subject === "") return refuse("invalid", "The token names no subject.");
  const teams = stringList(payload.teams);
  const namespaces = stringList(payload.namespaces);
  const scopes = typeof payload.scope === "string" && payload.scopes === undefined ? payload.scope.split(" ").filter((s) => s !== "") : stringList(payload.scopes);
  if (!teams || !namespaces || !scopes) return refuse("invalid", "The token's claims are not in the expected shape.");
  const env = typeof payload.env === "string" ? parseEnvironment(payload.env) : undefined;
  if (typeof payload.env === "string" && env === undefined) return refuse("invalid", `The token's "env" claim is not an environment.`);
  // jose checks `iss` and `aud` only when told what to expect, and the time
  // claims only as numbers: any JSON may sit there. RFC 7519 §4.1 fixes their
  // types; a number past what a Date holds (e.g. exp 1e300) would make an
  // invalid Date that no later comparison catches.
  const audience = payload.aud === undefined ? [] : Array.isArray(payload.aud) ? payload.aud : [payload.aud];
  if (!audience.every((a) => typeof a === "string") || (payload.iss !== undefined && typeof payload.iss !== "string")) {
    return refuse("invalid", "The token's claims are not in the expected shape.");
  }
  for (const claim of ["exp", "iat", "nbf"] as const) {
    const value = payload[claim];
    if (value !== undefined && !(typeof value === "number" && value >= MIN_TIME_CLAIM_SECONDS && value <= MAX_TIME_CLAIM_SECONDS)) {
      return refuse("invalid", `The token's "${claim}" claim is not a time.`);
    }
  }
  return {
    ok: true,
    claims: {
      subject,
      fullName: typeof user.full_name === "string" ? user.full_name : "",
      teams,
      scopes,
      namespaces,
      isAdmin: user.is_admin === true || payload.is_admin === true,
      name: "legacy-jwt",
      metadata: {},
      // Filled in by the caller once the environment guard has run.
      environment: env ?? "development",
      issuedAt: typeof payload.iat === "number" ? new Date(payload.iat * 1000) : now,
      expiresAt: new Date(payload.exp! * 1000),
      jti: typeof payload.jti === "string" && payload.jti !== "" ? payload.jti : undefined,
      issuer: payload.iss,
      audience,
      notBefore: typeof payload.nbf === "number" ? new Date(payload.nbf * 1000) : undefined,
      claimedEnvironment: env,
    },
  };
}

/** The deprecation notice for the window of a policy. */
export function deprecationOf(policy: LegacyJwtPolicy): Deprecation {
  return { notice: DEPRECATION_NOTICE, link: policy.migrationUrl, sunsetAt: policy.sunsetAt, deprecatedSince: policy.releaseAt };
}

/** The message for a legacy JWT presented after the sunset date. */
export function sunsetMessage(policy: LegacyJwtPolicy): string {
  return `Legacy JWTs stopped working on ${policy.sunsetAt.toISOString().slice(0, 10)}. Create an API token (tokenctl issue, or the IssueToken RPC) and send it instead; see ${policy.migrationUrl}`;
}

/** What a cached legacy answer must say about itself for the cache to keep it honest. */
export interface LegacyCacheable {
  /** Its `jti`: a revocation of it evicts the answer. Undefined: cannot be revoked one by one. */
  readonly jti: string | undefined;
  /** Its `exp` (ms): never served at or past it. */
  readonly expiresAtMs: number;
  /** Its `nbf` (ms) less the clock tolerance: never served before it (a clock set back). */
  readonly validFromMs: number;
}

/** Limits of a {@link LegacyJwtCache}. */
export interface LegacyJwtCacheOptions {
  readonly maxEntries: number;
  readonly maxBytes: number;
  /** As `TokenCacheOptions.stalenessMs`: confirmed by the revocation channel's heartbeats. */
  readonly stalenessMs: number;
}

/**
 * Verified legacy JWTs by digest, so a repeat costs one SHA-256 and one Map
 * lookup instead of a signature check and a store read.
 *
 * An answer is kept until the JWT's `exp` and never served at or past it,
 * nor before its `nbf`; the sunset date is checked by the caller on every
 * read, before the cache. Revocation is by `jti` (that is all the revocation
 * log knows of a legacy JWT), so the cache keeps an index `jti → digests`,
 * maintained as entries come and go, so it is never larger than the cache:
 * `evictJti` drops every cached answer of that jti and fences lookups in
 * flight, like `TokenCache.evict`. Freshness works as for opaque tokens: the
 * revocation channel's heartbeats confirm entries, and without them entries
 * age out within `stalenessMs`.
 *
 * A JWT without `jti` (accepted with `REQUIRE_JTI=false`) is cached too: it
 * cannot be revoked one by one anyway, with or without a cache. Rotating the
 * legacy HMAC secret or JWKS evicts nothing: a signature that verified stays
 * valid until `exp` (to cut off all legacy JWTs at once, move the sunset date).
 */
export class LegacyJwtCache<V extends LegacyCacheable> {
  private readonly cache: TokenCache<V>;
  /** jti → the digest key of its one cached JWT, or several (re-signed copies of one jti). */
  private readonly byJti = new Map<string, string | string[]>();

  constructor(options: LegacyJwtCacheOptions) {
    this.cache = new TokenCache<V>({
      maxEntries: options.maxEntries,
      maxBytes: options.maxBytes,
      stalenessMs: options.stalenessMs,
      negativeTtlMs: 0,
      negativeMaxEntries: 1,
      // Every kept answer (active, revoked, refused by the environment guard) holds until exp.
      isNegative: () => false,
      sizeOf: (key, value) => 600 + 2 * (key.length + (value.jti?.length ?? 0)),
      onDrop: (key, value) => this.unindex(key, value.jti),
    });
  }

  /** The kept answer for a digest, if it may be served at `nowMs`. */
  get(key: string, nowMs: number): V | undefined {
    const entry: CacheEntry<V> | undefined = this.cache.get(key, nowMs);
    if (entry === undefined) return undefined;
    const value = entry.record;
    if (nowMs >= value.expiresAtMs) {
      // Never again: an expired JWT stays expired.
      this.cache.drop(key);
      return undefined;
    }
    return nowMs >= value.validFromMs ? value : undefined;
  }

  /** The generation to hand back to `put`: take it before the store read of the revocation. */
  fence(): number {
    return this.cache.fence();
  }

  /** Keeps an answer read under `fence`, unless something was evicted since or it has already expired. */
  put(key: string, value: V, fence: number, nowMs: number): void {
    if (fence !== this.cache.fence() || value.expiresAtMs <= nowMs) return;
    this.cache.put(key, value, fence, nowMs);
    if (value.jti === undefined) return;
    const known = this.byJti.get(value.jti);
    if (known === undefined) this.byJti.set(value.jti, key);
    else if (typeof known === "string") {
      if (known !== key) this.byJti.set(value.jti, [known, key]);
    } else if (!known.includes(key)) known.push(key);
  }

  /** A legacy jti was revoked: drops every answer kept for it and fences lookups in flight. */
  evictJti(jti: string): void {
    const known = this.byJti.get(jti);
    if (known === undefined) {
      // Still fence: a lookup of this jti may be reading the store right now.
      this.cache.evict("");
      return;
    }
    for (const key of typeof known === "string" ? [known] : [...known]) this.cache.evict(key);
    this.byJti.delete(jti);
  }

  /** Drops everything (revocations may have been missed). */
  clear(): void {
    this.cache.clear();
    this.byJti.clear();
  }

  /** Every revocation committed before `atMs` has been applied. */
  confirmUntil(atMs: number): void {
    this.cache.confirmUntil(atMs);
  }

  /** Counters, with the index's size. */
  stats() {
    return { ...this.cache.stats(), jtis: this.byJti.size };
  }

  private unindex(key: string, jti: string | undefined): void {
    if (jti === undefined) return;
    const known = this.byJti.get(jti);
    if (known === key) this.byJti.delete(jti);
    else if (Array.isArray(known)) {
      const rest = known.filter((k) => k !== key);
      if (rest.length === 0) this.byJti.delete(jti);
      else this.byJti.set(jti, rest.length === 1 ? rest[0]! : rest);
    }
  }
}
