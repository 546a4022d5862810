import { createHash, hash, timingSafeEqual } from "node:crypto";
import type { IntrospectedClaims } from "../domain/introspect.js";
import { MAX_PRESENTED_TOKEN_LENGTH } from "../domain/token-format.js";

/**
 * What every gateway-facing authorizer shares, whatever its wire format:
 * forward auth on the HTTP port (`server/http/forward-auth.ts`) and Envoy's
 * ext_authz on the gRPC port (`rpc/ext-authz.ts`). Reading the end user's
 * `Bearer` credential, the `X-Auth-*` claim headers the gateway passes
 * upstream, the RFC 6750 challenge, and the proxy's shared secret are the
 * same on both, so they live here once.
 */

const BEARER = /^Bearer +(\S+)\s*$/i;

/**
 * The token of an `Authorization: Bearer <token>` value (RFC 6750 §2.1), or
 * undefined when the value is not that shape (or is far longer than any
 * token, refused before the regular expression looks at it).
 */
export function bearerToken(authorization: string): string | undefined {
  if (authorization.length > MAX_PRESENTED_TOKEN_LENGTH + 16) return undefined;
  return BEARER.exec(authorization)?.[1];
}

/** The `WWW-Authenticate` value of a refused credential (RFC 6750 §3). */
export function bearerChallenge(error: "invalid_token" | "invalid_request", description: string): string {
  return `Bearer error="${error}", error_description="${challengeText(description)}"`;
}

/**
 * RFC 6750 §3: `error_description` may hold only %x20-21 / %x23-5B /
 * %x5D-7E, so no `"` or `\` (no escaping is defined) and nothing outside
 * printable ASCII: quotes become apostrophes, the rest is dropped.
 */
export function challengeText(text: string): string {
  return text.replace(/"/g, "'").replace(/[^\x20\x21\x23-\x5B\x5D-\x7E]/g, "");
}

/** Claim headers per claims object: the cache hands out the same claims on every hit. */
const HEADERS = new WeakMap<IntrospectedClaims, Readonly<Record<string, string>>>();

/** The `X-Auth-*` headers of an active token's claims. */
export function claimHeaders(claims: IntrospectedClaims): Readonly<Record<string, string>> {
  let headers = HEADERS.get(claims);
  if (headers === undefined) {
    headers = Object.freeze({
      "x-auth-subject": headerSafe(claims.subject),
      // Scope tokens never hold a space (RFC 6749 §3.3); labels never a comma.
      "x-auth-scopes": claims.scopes.map((s) => headerSafe(s, " ")).join(" "),
      "x-auth-teams": claims.teams.map((t) => headerSafe(t, ",")).join(","),
      "x-auth-namespaces": claims.namespaces.map((n) => headerSafe(n, ",")).join(","),
      "x-auth-is-admin": claims.isAdmin ? "true" : "false",
      "x-auth-token-id": headerSafe(claims.id),
      "x-auth-token-kind": claims.kind,
    });
    HEADERS.set(claims, headers);
  }
  return headers;
}

/**
 * A claim as a header value that cannot break out of its header or its list
 * (RFC 9110 §5.5). The domain validates issued claims, but a legacy JWT's
 * claims come from elsewhere: anything outside printable ASCII, `%` itself
 * and the list separator are percent-encoded as UTF-8 (RFC 3986 §2.1), so
 * ordinary values pass unchanged and nothing can inject a header.
 */
export function headerSafe(value: string, separator = ""): string {
  let out = "";
  for (const ch of value) {
    const code = ch.codePointAt(0)!;
    if (code < 0x20 || code > 0x7e || ch === "%" || ch === separator) {
      for (const byte of Buffer.from(ch, "utf8")) out += `%${byte.toString(16).toUpperCase().padStart(2, "0")}`;
    } else {
      out += ch;
    }
  }
  return out.trim();
}

/** Constant-time comparison of the proxy's secret (compared as SHA-256 digests, so lengths do not leak). */
export function secretMatches(presented: string | undefined, expected: string): boolean {
  if (presented === undefined) return false;
  const a = createHash("sha256").update(presented).digest();
  const b = createHash("sha256").update(expected).digest();
  return timingSafeEqual(a, b);
}

/**
 * {@link secretMatches} for a secret fixed at start-up, its digest computed
 * once: per call, one one-shot SHA-256 of what was presented (a hot path:
 * Envoy sends the secret with every Check).
 */
export function secretMatcher(expected: string): (presented: string | undefined) => boolean {
  const want = hash("sha256", expected, "buffer");
  return (presented) => presented !== undefined && timingSafeEqual(hash("sha256", presented, "buffer"), want);
}
