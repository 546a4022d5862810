import type { HttpRequest, HttpResponse } from "./http-server.js";

/** What the plain HTTP endpoints read. */
export interface HttpRoutesDeps {
  /** The backend JWT verification keys (RFC 7517 §5). */
  readonly jwks: () => { keys: readonly object[] };
}

/**
 * Plain HTTP endpoints beside the RPCs on the Connect port. Returns true when
 * it answered the request, false to hand it to the RPC router.
 */
export function httpRoutes(deps: HttpRoutesDeps): (req: HttpRequest, res: HttpResponse) => boolean {
  return (req, res) => {
    const path = (req.url ?? "").split("?", 1)[0];
    if (path === "/.well-known/jwks.json") {
      if (req.method !== "GET" && req.method !== "HEAD") return answer(res, 405, { error: "use GET" }, { allow: "GET, HEAD" });
      // Short caching: rotated keys appear within two refresh intervals, before they sign.
      return answer(res, 200, deps.jwks(), { "cache-control": "public, max-age=60", "content-type": "application/jwk-set+json" });
    }
    return false;
  };
}

function answer(res: HttpResponse, status: number, body: unknown, headers: Record<string, string> = {}): true {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), ...headers });
  res.end(text);
  return true;
}
