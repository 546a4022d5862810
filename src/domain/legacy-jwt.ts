import { errors, jwtVerify, type CryptoKey, type JWTPayload, type KeyObject } from "jose";
import { parseEnvironment, type Environment } from "./environment.js";
import type { TokenClaims } from "./model.js";

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
