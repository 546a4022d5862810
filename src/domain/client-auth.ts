import { authenticate } from "./access.js";
import { TokenError } from "./errors.js";
import { metaFields } from "./introspect.js";
import { digestKey } from "./token-format.js";
import type { Caller, RequestMeta } from "./model.js";
import type { TokenDeps } from "./ports.js";
import { MAX_PRESENTED_TOKEN_LENGTH } from "./token-format.js";
import { UUID_PATTERN } from "./validation.js";

/** An authenticated client of the OAuth endpoints: the caller and its client id. */
export interface AuthenticatedClient {
  readonly caller: Caller;
  /**
   * The client id: the caller token's id (a UUID). With HTTP Basic it is the
   * user-id the client sent, checked against its secret's token; with a
   * Bearer token it is that token's id.
   */
  readonly clientId: string;
}

/** How a client presented itself, as far as the `Authorization` header says. */
export type ClientAuthScheme = "basic" | "bearer" | "none" | "other";

/** The authentication scheme of an `Authorization` header (RFC 9110 §11.1: case-insensitive). */
export function clientAuthScheme(authorization: string | undefined): ClientAuthScheme {
  if (authorization === undefined || authorization === "") return "none";
  const space = authorization.indexOf(" ");
  const scheme = (space < 0 ? authorization : authorization.slice(0, space)).toLowerCase();
  return scheme === "basic" ? "basic" : scheme === "bearer" ? "bearer" : "other";
}

const BASIC = /^Basic +([A-Za-z0-9+/]+={0,2})\s*$/i;

/**
 * Authenticates the client of the RFC 7662 and RFC 7009 endpoints from its
 * `Authorization` header, through the same `authenticate` as every RPC, so
 * there is one mechanism (`authenticateClientSecretPost` is the form
 * parameter variant of the first):
 *
 * - `Authorization: Basic` (RFC 7617; RFC 6749 §2.3.1 `client_secret_basic`):
 *   the client id is the caller token's id (a UUID) and the client secret is
 *   the caller token itself. Both are form-urlencoded before base64 (RFC 6749
 *   §2.3.1), which leaves a UUID and an opaque token unchanged. The secret is
 *   authenticated like a Bearer token, then its token's id must equal the
 *   client id: a token cannot be presented under another token's name. No
 *   client registry is needed: every token is its own client.
 * - `Authorization: Bearer <caller token>` (RFC 6750 §2.1, allowed by RFC
 *   7662 §2.1): the client id is the token's id.
 *
 * Failures are `unauthenticated` (an `authentication_failed` security event is
 * raised by `authenticate`, or here for a client id mismatch); a store outage
 * is `unavailable`, never a refusal.
 */
export function authenticateClient(deps: TokenDeps, authorization: string | undefined, meta: RequestMeta): Promise<AuthenticatedClient> {
  const basic = clientAuthScheme(authorization) === "basic";
  const presented = () => (basic ? tryParseBasic(authorization!)?.secret : bearerToken(authorization));
  return withFailureBudget(deps, meta, presented, async () => {
    if (!basic) {
      const caller = await authenticate(deps, authorization, meta);
      return { caller, clientId: caller.tokenId };
    }
    return authenticateClientSecret(deps, parseBasic(authorization!), meta);
  });
}

/**
 * `authenticate` for the RPCs, behind the same per-address budget of failed
 * authentications as the OAuth endpoints (see {@link withFailureBudget}).
 */
export function authenticateCaller(deps: TokenDeps, authorization: string | undefined, meta: RequestMeta): Promise<Caller> {
  return withFailureBudget(deps, meta, () => bearerToken(authorization), () => authenticate(deps, authorization, meta));
}

/**
 * Runs an authentication under the peer's budget of failures
 * (`deps.limits`): each `unauthenticated` outcome is charged to the request's
 * address, and an address that has spent its budget is refused with
 * RESOURCE_EXHAUSTED before any work, so guessing credentials costs no store
 * queries and no events beyond one aggregated `rate_limit_exceeded`.
 *
 * One exception keeps a shared address (a NAT, a proxy) usable while someone
 * behind it guesses: a credential this replica already holds as active in its
 * cache is let through, as it costs nothing to check.
 */
async function withFailureBudget<T>(deps: TokenDeps, meta: RequestMeta, presented: () => string | undefined, work: () => Promise<T>): Promise<T> {
  const limits = deps.limits;
  if (limits === undefined) return work();
  const nowMs = deps.clock.now().getTime();
  const wait = limits.authenticationWait(meta, nowMs);
  if (wait > 0 && !cachedActive(deps, presented(), nowMs)) limits.refuseAuthentication(meta, wait);
  return work().catch((error: unknown) => {
    if (error instanceof TokenError && error.code === "unauthenticated") limits.authenticationFailed(meta, nowMs);
    throw error;
  });
}

/** Whether the cache holds `token` as an active token now (no store read). */
function cachedActive(deps: TokenDeps, token: string | undefined, nowMs: number): boolean {
  if (token === undefined || token.length > MAX_PRESENTED_TOKEN_LENGTH) return false;
  const record = deps.cache.peek(digestKey(token), nowMs);
  return record !== undefined && record !== null && !record.revoked && record.expiresAtMs > nowMs;
}

const BEARER = /^Bearer +(\S+)\s*$/i;

/** The token of an `Authorization: Bearer` header, if it is one. */
function bearerToken(authorization: string | undefined): string | undefined {
  if (authorization === undefined || authorization.length > MAX_PRESENTED_TOKEN_LENGTH + 16) return undefined;
  return BEARER.exec(authorization)?.[1];
}

function tryParseBasic(authorization: string): { clientId: string; secret: string } | undefined {
  try {
    return parseBasic(authorization);
  } catch {
    return undefined;
  }
}

/**
 * Authenticates `client_secret_post` credentials (RFC 6749 §2.3.1): the
 * `client_id` and `client_secret` form parameters, with the same meaning
 * and checks as HTTP Basic, under the same per-address failure budget. That
 * the request used no other method as well (RFC 6749 §2.3) is the caller's
 * to check, as only it sees the request.
 */
export function authenticateClientSecretPost(deps: TokenDeps, clientId: string, clientSecret: string, meta: RequestMeta): Promise<AuthenticatedClient> {
  return withFailureBudget(deps, meta, () => clientSecret, async () => {
    if (clientId.length > 64 || clientSecret.length > MAX_PRESENTED_TOKEN_LENGTH) throw malformedCredentials();
    return authenticateClientSecret(deps, checkedCredentials(clientId, clientSecret), meta);
  });
}

/**
 * The secret is authenticated like a Bearer token (found by its digest, so
 * nothing is compared byte by byte), then its token's id must equal the
 * client id: a token cannot be presented under another token's name.
 */
async function authenticateClientSecret(deps: TokenDeps, credentials: { clientId: string; secret: string }, meta: RequestMeta): Promise<AuthenticatedClient> {
  const caller = await authenticate(deps, `Bearer ${credentials.secret}`, meta);
  if (caller.tokenId !== credentials.clientId) {
    deps.events.record({
      type: "authentication_failed",
      severity: "warning",
      message: "client credentials refused: the client id is not the id of the token given as client secret",
      serviceEnvironment: deps.policy.environment,
      callerTokenId: caller.tokenId,
      callerSubject: caller.subject,
      ...metaFields(meta),
    });
    throw new TokenError("unauthenticated", "client credentials refused: the client id must be the id of the token sent as client secret");
  }
  return { caller, clientId: caller.tokenId };
}

const malformedCredentials = () =>
  new TokenError(
    "unauthenticated",
    "malformed client credentials: send `Authorization: Basic base64(<token id>:<token>)`, the form parameters client_id=<token id> and client_secret=<token>, or `Authorization: Bearer <token>`",
  );

/** A client id must be a token id (a UUID); the secret becomes a Bearer credential, so one run of visible characters. */
function checkedCredentials(clientId: string, secret: string): { clientId: string; secret: string } {
  if (!UUID_PATTERN.test(clientId) || !/^\S+$/.test(secret)) throw malformedCredentials();
  return { clientId: clientId.toLowerCase(), secret };
}

/** Decodes `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 7617 §2, RFC 6749 §2.3.1). */
function parseBasic(authorization: string): { clientId: string; secret: string } {
  // base64 of the longest acceptable pair, with room for percent-encoding.
  if (authorization.length > 4 * MAX_PRESENTED_TOKEN_LENGTH) throw malformedCredentials();
  const match = BASIC.exec(authorization);
  if (!match) throw malformedCredentials();
  const decoded = Buffer.from(match[1]!, "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  if (colon < 0) throw malformedCredentials();
  let clientId: string;
  let secret: string;
  try {
    clientId = formDecode(decoded.slice(0, colon));
    secret = formDecode(decoded.slice(colon + 1));
  } catch {
    throw malformedCredentials();
  }
  return checkedCredentials(clientId, secret);
}

/** `application/x-www-form-urlencoded` decoding of one value (`+` is a space); throws on a bad escape. */
function formDecode(value: string): string {
  return decodeURIComponent(value.replace(/\+/g, " "));
}
