import type { Config } from "../../config.js";
import type { Logger } from "../../domain/ports.js";
import type { HttpRequest, HttpResponse } from "../http-server.js";
import { sendJson } from "./io.js";

/** Where RFC 8414 §3 puts the metadata of an issuer without a path. */
export const METADATA_PATH = "/.well-known/oauth-authorization-server";

/** The client authentication methods both endpoints accept (RFC 6749 §2.3.1; names from the IANA OAuth registry, RFC 7591 §2). */
export const CLIENT_AUTH_METHODS = Object.freeze(["client_secret_basic", "client_secret_post"] as const);

/** What the metadata endpoint and the RFC 9701 answers need, decided once at start-up. */
export interface OAuthMetadataOptions {
  /**
   * The issuer identifier (RFC 8414 §2) for a request, or undefined when
   * there is none (staging or production without `PUBLIC_BASE_URL`): then the
   * metadata is not served. Never read from the request's `Host` header.
   */
  readonly issuer: (req: HttpRequest) => string | undefined;
  /** The path the issuer URL carries (`""` for none), for the RFC 8414 §3.1 path-inserted location. */
  readonly issuerPath: string;
  /** The algorithm RFC 9701 answers are signed with (`BACKEND_JWT_ALGORITHM`). */
  readonly signingAlg: Config["backendJwtAlgorithm"];
}

/** The configuration {@link oauthMetadataOptions} reads. */
export type OAuthMetadataConfig = Pick<Config, "environment" | "publicBaseUrl" | "listenHost" | "backendJwtAlgorithm">;

/**
 * Who the issuer is, decided once at start-up and said in the log.
 *
 * The issuer must be the URL clients discover from and compare with (RFC
 * 8414 §3.3), and every endpoint URL in the metadata is built from it. It is
 * never derived from the request's `Host` header: that header is the
 * client's to choose, and a cache in front would hand an attacker's issuer
 * and endpoints (where clients then send their secrets) to everyone.
 *
 * - `PUBLIC_BASE_URL` set: that URL, everywhere.
 * - Unset in development: the listen address as this process serves it,
 *   `http(s)://LISTEN_HOST:<port the connection reached>` (127.0.0.1 or
 *   [::1] for a wildcard address), which is what a local client uses.
 * - Unset in staging or production: no issuer, the metadata is not served
 *   (404), with a start-up warning: guessing a public name there would
 *   publish a wrong one.
 *
 * @param https whether the HTTP port terminates TLS.
 */
export function oauthMetadataOptions(config: OAuthMetadataConfig, log: Logger, https: boolean): OAuthMetadataOptions {
  const signingAlg = config.backendJwtAlgorithm;
  if (config.publicBaseUrl !== undefined) {
    const issuer = config.publicBaseUrl;
    const path = new URL(issuer).pathname;
    return { issuer: () => issuer, issuerPath: path === "/" ? "" : path, signingAlg };
  }
  if (config.environment !== "development") {
    log.warn({ oauth_metadata: "not_served" }, `OAuth metadata: ${METADATA_PATH} is NOT served: in ${config.environment} set PUBLIC_BASE_URL to the URL clients reach this service's HTTP port at (it is the issuer identifier, RFC 8414 §2)`);
    return { issuer: () => undefined, issuerPath: "", signingAlg };
  }
  const host = hostForUrl(config.listenHost);
  const scheme = https ? "https" : "http";
  return { issuer: (req) => `${scheme}://${host}:${req.socket.localPort}`, issuerPath: "", signingAlg };
}

/** A listen address as the host part of a URL: wildcards become loopback, IPv6 literals get brackets (RFC 3986 §3.2.2). */
function hostForUrl(listenHost: string): string {
  if (listenHost === "0.0.0.0" || listenHost === "") return "127.0.0.1";
  if (listenHost === "::" || listenHost === "[::]") return "[::1]";
  return listenHost.includes(":") && !listenHost.startsWith("[") ? `[${listenHost}]` : listenHost;
}

/** Whether a request path asks for the metadata: the plain location, or the RFC 8414 §3.1 one for an issuer with a path. */
export function isMetadataPath(path: string, o: OAuthMetadataOptions): boolean {
  return path === METADATA_PATH || (o.issuerPath !== "" && path === `${METADATA_PATH}${o.issuerPath}`);
}

/**
 * The RFC 8414 §2 metadata of an issuer. This service is an authorization
 * server only in the RFC 7662 / RFC 7009 sense: it has no authorization or
 * token endpoint. So `response_types_supported` (REQUIRED) and
 * `grant_types_supported` (whose default would claim `authorization_code`
 * and `implicit`) are empty lists: none. `token_endpoint_auth_methods_supported`
 * is left out, as there is no token endpoint.
 */
export function authorizationServerMetadata(issuer: string, signingAlg: Config["backendJwtAlgorithm"]): Record<string, unknown> {
  return {
    issuer,
    jwks_uri: `${issuer}/.well-known/jwks.json`,
    response_types_supported: [],
    grant_types_supported: [],
    introspection_endpoint: `${issuer}/oauth2/introspect`,
    introspection_endpoint_auth_methods_supported: CLIENT_AUTH_METHODS,
    // RFC 9701 §7: what a client asking for a signed answer must expect; clients assume RS256 otherwise.
    introspection_signing_alg_values_supported: [signingAlg],
    revocation_endpoint: `${issuer}/oauth2/revoke`,
    revocation_endpoint_auth_methods_supported: CLIENT_AUTH_METHODS,
  };
}

/**
 * `GET /.well-known/oauth-authorization-server` (RFC 8414 §3): the metadata
 * as JSON, or 404 when there is no issuer (staging or production without
 * `PUBLIC_BASE_URL`).
 */
export function metadataEndpoint(o: OAuthMetadataOptions, req: HttpRequest, res: HttpResponse): void {
  const issuer = o.issuer(req);
  if (issuer === undefined) {
    sendJson(req, res, 404, { error: "not_found", error_description: "OAuth metadata is not served: PUBLIC_BASE_URL is not set" }, { "cache-control": "no-store" });
    return;
  }
  sendJson(req, res, 200, authorizationServerMetadata(issuer, o.signingAlg), { "cache-control": "public, max-age=300" });
}
