import type { TokenDeps } from "../domain/ports.js";
import { forwardAuthEndpoint, type ForwardAuthOptions } from "./http/forward-auth.js";
import { healthz, readiness, type ReadinessChecks } from "./http/health.js";
import { httpError, methodNotAllowed, sendJson } from "./http/io.js";
import { isMetadataPath, metadataEndpoint, type OAuthMetadataOptions } from "./http/metadata.js";
import { introspectEndpoint, revokeEndpoint } from "./http/oauth.js";
import { gitlabRevocationRoute, type GitlabRevocationOptions } from "./http/gitlab-revocation.js";
import { GITHUB_SECRET_SCANNING_PATH, githubSecretScanningEndpoint, type GithubSecretScanningOptions } from "./http/secret-scanning.js";
import type { HttpRequest, HttpResponse } from "./http-server.js";

/** What the plain HTTP endpoints read. */
export interface HttpRoutesDeps {
  /** The backend JWT verification keys (RFC 7517 §5). */
  readonly jwks: () => { keys: readonly object[] };
  /** The domain's dependencies, for the OAuth and forward-auth endpoints. */
  readonly tokens: TokenDeps;
  /** `iss` of RFC 9701 signed introspection answers when there is no OAuth issuer (the backend JWT issuer). */
  readonly introspectionIssuer: string;
  /** The OAuth issuer and the RFC 8414 metadata (see `oauthMetadataOptions`). */
  readonly oauthMetadata: OAuthMetadataOptions;
  /** Signs an RFC 9701 introspection answer with the backend JWT keys. */
  readonly signIntrospection: (payload: Record<string, unknown>) => Promise<string>;
  /** `/auth`; absent when it is not served (`FORWARD_AUTH_ENABLED=false`, or unprotected outside development: see `forwardAuthOptions`). */
  readonly forwardAuth: ForwardAuthOptions | undefined;
  /** What `/readyz` checks. */
  readonly readiness: ReadinessChecks;
  /** Leak reports: GitHub secret scanning and GitLab's revocation API, each absent when not configured. */
  readonly leaks?: { readonly github?: GithubSecretScanningOptions; readonly gitlab?: GitlabRevocationOptions };
}

const GET = "GET, HEAD";

/**
 * Plain HTTP endpoints beside the RPCs on the Connect port, each a thin
 * parse → domain call → format, through the same domain functions as the
 * RPC handlers:
 *
 * - `POST /oauth2/introspect` (RFC 7662, RFC 9701) and `POST /oauth2/revoke` (RFC 7009);
 * - `/auth`, forward authentication for reverse proxies;
 * - `GET /healthz` (liveness) and `GET /readyz` (readiness);
 * - `GET /.well-known/jwks.json`, the backend JWT keys;
 * - `GET /.well-known/oauth-authorization-server`, the RFC 8414 metadata.
 *
 * Returns true when it answered the request (or will, asynchronously), false
 * to hand it to the RPC router.
 */
export function httpRoutes(deps: HttpRoutesDeps): (req: HttpRequest, res: HttpResponse) => boolean {
  const metadata = deps.oauthMetadata;
  // RFC 9701 §5: `iss` is the issuer identifier, the one the metadata names and clients compare.
  const oauth = { deps: deps.tokens, issuer: (req: HttpRequest) => metadata.issuer(req) ?? deps.introspectionIssuer, signIntrospection: deps.signIntrospection };
  const readyz = readiness(deps.readiness);
  const forwardAuth = deps.forwardAuth;
  const isGet = (req: HttpRequest) => req.method === "GET" || req.method === "HEAD";

  return (req, res) => {
    const url = req.url ?? "";
    const query = url.indexOf("?");
    const path = query < 0 ? url : url.slice(0, query);
    switch (path) {
      case "/oauth2/introspect":
        if (req.method !== "POST") methodNotAllowed(req, res, "POST");
        else settle(deps.tokens, req, res, path, introspectEndpoint(oauth, req, res));
        return true;
      case "/oauth2/revoke":
        if (req.method !== "POST") methodNotAllowed(req, res, "POST");
        else settle(deps.tokens, req, res, path, revokeEndpoint(oauth, req, res));
        return true;
      case "/healthz":
        if (!isGet(req)) methodNotAllowed(req, res, GET);
        else healthz(req, res);
        return true;
      case "/readyz":
        if (!isGet(req)) methodNotAllowed(req, res, GET);
        else settle(deps.tokens, req, res, path, readyz(req, res));
        return true;
      case "/.well-known/jwks.json":
        if (!isGet(req)) methodNotAllowed(req, res, GET);
        // Short caching: rotated keys appear within two refresh intervals, before they sign.
        else sendJson(req, res, 200, deps.jwks(), { "cache-control": "public, max-age=60", "content-type": "application/jwk-set+json" });
        return true;
    }
    if (isMetadataPath(path, metadata)) {
      if (!isGet(req)) methodNotAllowed(req, res, GET);
      else metadataEndpoint(metadata, req, res);
      return true;
    }
    // Envoy's ext_authz appends the original path to its path prefix: /auth/<anything>.
    if (forwardAuth !== undefined && (path === "/auth" || path.startsWith("/auth/"))) {
      settle(deps.tokens, req, res, "/auth", forwardAuthEndpoint(deps.tokens, forwardAuth, req, res));
      return true;
    }
    const github = deps.leaks?.github;
    if (github !== undefined && path === GITHUB_SECRET_SCANNING_PATH) {
      if (req.method !== "POST") methodNotAllowed(req, res, "POST");
      else settle(deps.tokens, req, res, path, githubSecretScanningEndpoint(deps.tokens, github, req, res));
      return true;
    }
    const gitlab = deps.leaks?.gitlab === undefined ? false : gitlabRevocationRoute(deps.tokens, deps.leaks.gitlab, path, req, res);
    if (gitlab !== false) {
      settle(deps.tokens, req, res, path, gitlab);
      return true;
    }
    return false;
  };
}

/** Last resort for a handler that failed outside its own error handling: a bare 500, logged. */
function settle(tokens: TokenDeps, req: HttpRequest, res: HttpResponse, path: string, work: Promise<void>): void {
  work.catch((error: unknown) => {
    const e = httpError(error, tokens.log, path);
    if (!res.headersSent && !res.writableEnded) sendJson(req, res, 500, { error: "server_error", error_description: e.description });
  });
}
