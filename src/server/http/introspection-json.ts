import type { IntrospectResult, IntrospectedClaims } from "../../domain/introspect.js";
import type { TokenPolicy } from "../../domain/ports.js";

/**
 * The RFC 7662 §2.2 JSON answer, built from the same domain result as the
 * `IntrospectToken` RPC's answer and saying the same thing field for field:
 * `client_id` and `jti` are the token's id, `username` and `sub` its subject,
 * `token_type` is `Bearer` (RFC 7662 §2.2 wants an RFC 6749 §7.1 type: how the
 * token is presented, which is RFC 6750 Bearer for both kinds) and what kind
 * of token it is stays in our own `token_kind` (`opaque` or `legacy_jwt`), times are JSON
 * numbers of seconds. Extension claims are snake_case members beside them
 * (RFC 7662 §2.2 allows them). Members with no value are left out rather
 * than sent empty: a token without expiry has no `exp`.
 */
export type IntrospectionJson = Readonly<Record<string, unknown>>;

/** An inactive answer: exactly `{"active":false}`, nothing that could tell why (RFC 7662 §2.2). */
export const INACTIVE_JSON: IntrospectionJson = Object.freeze({ active: false });
const INACTIVE_TEXT = JSON.stringify(INACTIVE_JSON);

/** The service's issuer and audience, reported for its opaque tokens. */
export type ClaimsContext = Pick<TokenPolicy, "issuer" | "audience">;

/** Answers per claims object: the cache hands out the same claims on every hit. */
const BUILT = new WeakMap<IntrospectedClaims, { readonly json: IntrospectionJson; readonly text: string }>();

/** The answer as an object and as its JSON text, built once per cached token. */
export function introspectionJson(result: IntrospectResult, context: ClaimsContext): { readonly json: IntrospectionJson; readonly text: string } {
  if (!result.active) return { json: INACTIVE_JSON, text: INACTIVE_TEXT };
  let built = BUILT.get(result.claims);
  if (built === undefined) {
    const json = Object.freeze(activeJson(result.claims, context));
    built = { json, text: JSON.stringify(json) };
    BUILT.set(result.claims, built);
  }
  return built;
}

const seconds = (date: Date): number => Math.floor(date.getTime() / 1000);

/**
 * RFC 7662 §2.2 `token_type`: an RFC 6749 §7.1 access token type. Every token
 * this service answers for is sent as `Authorization: Bearer` (RFC 6750).
 */
export const TOKEN_TYPE = "Bearer";

function activeJson(c: IntrospectedClaims, context: ClaimsContext): Record<string, unknown> {
  const audience = c.audience ?? context.audience;
  const issuer = c.kind === "opaque" ? context.issuer : (c.issuer ?? "");
  return {
    active: true,
    scope: c.scopes.join(" "),
    ...(c.id !== "" ? { client_id: c.id } : {}),
    username: c.subject,
    token_type: TOKEN_TYPE,
    ...(c.expiresAt ? { exp: seconds(c.expiresAt) } : {}),
    iat: seconds(c.issuedAt),
    nbf: seconds(c.notBefore ?? c.issuedAt),
    sub: c.subject,
    // RFC 7662 §2.2 / RFC 7519 §4.1.3: one audience as a string, several as a list.
    ...(audience.length === 1 ? { aud: audience[0] } : audience.length > 1 ? { aud: [...audience] } : {}),
    ...(issuer !== "" ? { iss: issuer } : {}),
    ...(c.id !== "" ? { jti: c.id } : {}),
    teams: [...c.teams],
    namespaces: [...c.namespaces],
    is_admin: c.isAdmin,
    environment: c.environment,
    token_name: c.name,
    token_kind: c.kind,
    full_name: c.fullName,
    metadata: { ...c.metadata },
  };
}
