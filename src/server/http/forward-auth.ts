import { FORWARD_AUTH_FIX, forwardAuthProtected, type Config } from "../../config.js";
import { introspectToken, metaFields } from "../../domain/introspect.js";
import type { Logger, TokenDeps } from "../../domain/ports.js";
import { RateLimitedError, retryAfterSeconds } from "../../domain/rate-limit.js";
import { MAX_PRESENTED_TOKEN_LENGTH } from "../../domain/token-format.js";
import { bearerChallenge, bearerToken, claimHeaders, headerSafe, secretMatches } from "../../rpc/gateway-auth.js";
import { ProxyTrust, normalizeAddress } from "../../domain/usage-binding.js";
import { deprecationHeaders } from "../../rpc/mapping.js";
import type { HttpRequest, HttpResponse } from "../http-server.js";
import { RETRY_AFTER, header, httpError, requestMeta, send, sendJson, type Headers } from "./io.js";

/** How `/auth` behaves, from configuration. */
export interface ForwardAuthOptions {
  /**
   * When set, every request must carry `X-Forward-Auth-Secret` with this
   * value: only the proxy knows it, so only the proxy may ask.
   */
  readonly secret: string | undefined;
  /** Whether an active opaque token's answer carries `X-Auth-Backend-Jwt`. */
  readonly backendJwt: boolean;
  /** Whose `X-Forwarded-For` is believed, for tokens bound to networks (`TRUSTED_PROXIES`). */
  readonly proxyTrust?: ProxyTrust;
}

/** The configuration {@link forwardAuthOptions} reads. */
export type ForwardAuthConfig = Pick<
  Config,
  "environment" | "forwardAuthEnabled" | "forwardAuthSecret" | "forwardAuthBackendJwt" | "tlsCertFile" | "tlsClientCaFile" | "tlsPorts"
> &
  Partial<Pick<Config, "trustedProxies">>;

/**
 * Whether `/auth` is served, decided once at start-up and said in the log.
 * `/auth` answers anyone who reaches it about any token (and, with backend
 * JWTs, hands out signed JWTs), so it must know that the caller is the proxy:
 * the proxy sends `FORWARD_AUTH_SECRET`, or the HTTP port requires client
 * certificates (mutual TLS).
 *
 * - Protected: served.
 * - Unprotected in development: served, for convenience, with a warning.
 * - Unprotected in staging or production: not served (404), with an error
 *   naming the fix. Only a default lands here: `FORWARD_AUTH_ENABLED=true`
 *   set explicitly without protection already failed `loadConfig`, because
 *   an operator who asks for `/auth` should learn at deploy time, not from a
 *   proxy answering 500. A default does not stop the service: gRPC
 *   introspection and the rest of the HTTP port keep serving.
 *
 * Returns the endpoint's options, or `undefined` when it is not served.
 */
export function forwardAuthOptions(config: ForwardAuthConfig, log: Logger): ForwardAuthOptions | undefined {
  if (!config.forwardAuthEnabled) return undefined;
  const options = { secret: config.forwardAuthSecret, backendJwt: config.forwardAuthBackendJwt, proxyTrust: new ProxyTrust(config.trustedProxies ?? []) };
  if (forwardAuthProtected(config)) return options;
  if (config.environment === "development") {
    log.warn({ forward_auth: "open" }, `forward auth: /auth is served without FORWARD_AUTH_SECRET or mutual TLS, so anyone who can reach the HTTP port may ask it about any token (tolerated in development only; in staging and production it is not served): ${FORWARD_AUTH_FIX}`);
    return options;
  }
  log.error({ forward_auth: "not_served" }, `forward auth: /auth is NOT served: in ${config.environment} it needs FORWARD_AUTH_SECRET or mutual TLS on the HTTP port: ${FORWARD_AUTH_FIX}`);
  return undefined;
}

/** The header a proxy proves itself with, when `FORWARD_AUTH_SECRET` is set. */
export const FORWARD_AUTH_SECRET_HEADER = "x-forward-auth-secret";

const NO_STORE = { "cache-control": "no-store" } as const;

/**
 * Forward authentication for reverse proxies: nginx `auth_request`, Traefik
 * ForwardAuth, Caddy `forward_auth`, Envoy's HTTP `ext_authz`. The proxy
 * passes the end user's `Authorization: Bearer <token>`; the answer is
 *
 * - `200`, empty body, the claims in `X-Auth-*` headers for the proxy to
 *   copy onto the upstream request (plus the deprecation headers for a
 *   legacy JWT, for the proxy to pass to the client);
 * - `401` with an RFC 6750 §3 challenge: without credentials a bare
 *   `Bearer`; for an inactive token `error="invalid_token"` and the inactive
 *   reason's message; for a credential that is not a Bearer token
 *   `error="invalid_request"` (§3.1 would say 400, but proxies pass on only
 *   2xx, 401 and 403 and turn anything else into a 500);
 * - `403` when `FORWARD_AUTH_SECRET` is set and the proxy did not send it
 *   (when `/auth` is not served at all, see {@link forwardAuthOptions}, the
 *   router answers 404);
 * - `503` with `Retry-After` when the store does not answer: an outage is
 *   never an authentication failure.
 *
 * The caller of `/auth` is not authenticated as a token holder: the endpoint
 * grants nothing beyond the token presented to it. Every method and every
 * path below `/auth/` is accepted, because Envoy's `ext_authz` forwards the
 * original request's method and appends its path; a request body is never read.
 */
export async function forwardAuthEndpoint(deps: TokenDeps, options: ForwardAuthOptions, req: HttpRequest, res: HttpResponse): Promise<void> {
  const route = `${req.method ?? "GET"} /auth`;
  try {
    const meta = requestMeta(req, route);
    if (options.secret !== undefined && !secretMatches(header(req, FORWARD_AUTH_SECRET_HEADER), options.secret)) {
      // A wrong proxy secret is a failed authentication: past its address's budget, 429.
      const nowMs = deps.clock.now().getTime();
      const wait = deps.limits?.authenticationWait(meta, nowMs) ?? 0;
      if (wait > 0) deps.limits!.refuseAuthentication(meta, wait);
      deps.limits?.authenticationFailed(meta, nowMs);
      deps.events.record({
        type: "authentication_failed",
        severity: "warning",
        message: "forward auth refused: missing or wrong X-Forward-Auth-Secret; only the configured proxy may call /auth",
        serviceEnvironment: deps.policy.environment,
        ...metaFields(meta),
      });
      return sendJson(req, res, 403, { error: "forbidden", error_description: "this endpoint answers only the configured proxy" }, NO_STORE);
    }
    const authorization = header(req, "authorization");
    if (authorization === undefined || authorization === "") {
      // RFC 6750 §3.1: no error code when the request carried no credentials.
      return sendJson(req, res, 401, { error: "invalid_request", error_description: "send Authorization: Bearer <token>" }, { ...NO_STORE, "www-authenticate": "Bearer" });
    }
    const token = bearerToken(authorization);
    if (token === undefined) return challenge(req, res, "invalid_request", "The Authorization header must be `Bearer <token>`.");

    // The end client's address, for tokens bound to networks: read lazily, only they need it.
    const result = await introspectToken(deps, token, meta, { backendJwt: options.backendJwt, clientAddress: () => clientAddressOf(options, req) });
    if (!result.active) {
      if (result.reason === "token_rate_limited") {
        // RFC 6585 §4: the token is fine, it is used too often; RFC 9110 §10.2.3 says when to return.
        return sendJson(req, res, 429, { error: "rate_limited", error_description: result.message }, { ...NO_STORE, "retry-after": String(retryAfterSeconds(result.retryAfterMs ?? 1000)) });
      }
      return challenge(req, res, "invalid_token", result.message);
    }
    const headers: Headers = { ...NO_STORE, ...claimHeaders(result.claims) };
    if (result.backendJwt !== undefined) headers["x-auth-backend-jwt"] = headerSafe(result.backendJwt);
    if (result.deprecation) Object.assign(headers, Object.fromEntries(deprecationHeaders(result.deprecation)));
    send(req, res, 200, "", headers);
  } catch (error) {
    if (res.headersSent || res.writableEnded) return;
    if (error instanceof RateLimitedError) {
      return sendJson(req, res, 429, { error: "temporarily_unavailable", error_description: error.message }, { ...NO_STORE, "retry-after": String(retryAfterSeconds(error.retryAfterMs)) });
    }
    const e = httpError(error, deps.log, route);
    // Only an outage is a 503; anything else unexpected stays a 500.
    const status = e.status === 503 ? 503 : 500;
    sendJson(req, res, status, { error: e.error, error_description: e.description }, { ...NO_STORE, ...(status === 503 ? RETRY_AFTER : {}) });
  }
}

/**
 * The end client's address: the right-most `X-Forwarded-For` entry not
 * appended by a trusted proxy (see `ProxyTrust`); the socket's peer when the
 * peer is not a trusted proxy. Never the header taken blindly.
 */
function clientAddressOf(options: ForwardAuthOptions, req: HttpRequest): string | undefined {
  const peer = req.socket?.remoteAddress;
  if (options.proxyTrust === undefined) return normalizeAddress(peer)?.address;
  return options.proxyTrust.clientAddress(peer, header(req, "x-forwarded-for"));
}

/** 401 with `WWW-Authenticate: Bearer error=…, error_description=…` (RFC 6750 §3) and the same in JSON. */
function challenge(req: HttpRequest, res: HttpResponse, error: "invalid_token" | "invalid_request", description: string): void {
  sendJson(req, res, 401, { error, error_description: description }, { ...NO_STORE, "www-authenticate": bearerChallenge(error, description) });
}

// Moved to rpc/gateway-auth.ts (shared with Envoy's ext_authz); re-exported for existing importers.
export { challengeText, claimHeaders, headerSafe } from "../../rpc/gateway-auth.js";
