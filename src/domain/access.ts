import { TokenError } from "./errors.js";
import { introspectToken, metaFields, type IntrospectedClaims } from "./introspect.js";
import { memoByObject } from "./memo.js";
import { RateLimitedError } from "./rate-limit.js";
import type { Caller, RequestMeta, ServiceScope } from "./model.js";
import type { TokenDeps } from "./ports.js";
import { MAX_PRESENTED_TOKEN_LENGTH, displayHint } from "./token-format.js";

const BEARER = /^Bearer +(\S+)\s*$/i;

/** Caller credentials are counted apart from introspected tokens in the metrics. */
const AS_CALLER = Object.freeze({ use: "authenticate" } as const);

/**
 * Who is calling: resolves the `Authorization: Bearer <token>` header (RFC
 * 6750 §2.1) into the caller's claims through the same introspection path as
 * any other token. Missing or unusable credentials are `unauthenticated`; the
 * message says why without repeating the credential.
 */
export async function authenticate(deps: TokenDeps, authorization: string | undefined, meta: RequestMeta): Promise<Caller> {
  if (authorization === undefined || authorization === "") {
    throw new TokenError("unauthenticated", "missing credentials: send `Authorization: Bearer <token>` with a token issued by this service");
  }
  if (authorization.length > MAX_PRESENTED_TOKEN_LENGTH + 16) {
    throw new TokenError("unauthenticated", "the Authorization header is too long");
  }
  const match = BEARER.exec(authorization);
  if (!match) throw new TokenError("unauthenticated", "the Authorization header must use the Bearer scheme: `Authorization: Bearer <token>`");
  const token = match[1]!;

  const result = await introspectToken(deps, token, meta, AS_CALLER);
  if (!result.active) {
    // A valid credential over its own limit: come back later, not "who are you?".
    if (result.reason === "token_rate_limited") throw new RateLimitedError(result.message, result.retryAfterMs ?? 1000, "token_own");
    // The environment guard raised its own event already.
    if (result.reason !== "environment_mismatch") {
      deps.events.record({
        type: "authentication_failed",
        severity: "warning",
        message: `caller credential refused: ${result.reason}`,
        serviceEnvironment: deps.policy.environment,
        tokenHint: displayHint(token),
        ...metaFields(meta),
      });
    }
    throw new TokenError("unauthenticated", `caller credential refused: ${result.message}`);
  }
  if (result.claims.kind !== "opaque") {
    throw new TokenError("unauthenticated", "caller credential refused: call this service with a token it issued");
  }
  return callerOf(result.claims);
}

/** Callers per claims object: built once per cached token, not per call. */
const callerOf: (claims: IntrospectedClaims) => Caller = memoByObject(buildCaller);

function buildCaller(claims: IntrospectedClaims): Caller {
  return {
    tokenId: claims.id,
    subject: claims.subject,
    fullName: claims.fullName,
    scopes: claims.scopes,
    teams: claims.teams,
    namespaces: claims.namespaces,
    isAdmin: claims.isAdmin,
    expiresAt: claims.expiresAt,
    ...(claims.allowedNetworks !== undefined && claims.allowedNetworks.length > 0 ? { allowedNetworks: claims.allowedNetworks } : {}),
    ...(claims.rateLimit !== undefined ? { rateLimit: claims.rateLimit } : {}),
  };
}

/** Whether the caller holds a permission scope (admins hold them all). */
export function holds(caller: Caller, scope: ServiceScope): boolean {
  return caller.isAdmin || caller.scopes.includes(scope);
}

/** Requires a permission scope, or denies the call. */
export function requireScope(deps: TokenDeps, caller: Caller, scope: ServiceScope, meta: RequestMeta): void {
  if (!holds(caller, scope)) deny(deps, caller, meta, `this call needs the \`${scope}\` scope, which your token does not have`);
}

/** Requires an admin caller, or denies the call. */
export function requireAdmin(deps: TokenDeps, caller: Caller, meta: RequestMeta, what: string): void {
  if (!caller.isAdmin) deny(deps, caller, meta, `only admins may ${what}`);
}

/** Records a `permission_denied` security event and throws `permission_denied`. */
export function deny(deps: TokenDeps, caller: Caller, meta: RequestMeta, message: string): never {
  deps.events.record({
    type: "permission_denied",
    severity: "warning",
    message,
    serviceEnvironment: deps.policy.environment,
    callerTokenId: caller.tokenId,
    callerSubject: caller.subject,
    ...metaFields(meta),
  });
  throw new TokenError("permission_denied", message);
}
