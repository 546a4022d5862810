import type { HttpRequest, HttpResponse } from "../server/http-server.js";

/** Where the exposition comes from: `ServiceMetrics`, or the cluster-wide aggregate under `WORKERS`. */
export interface MetricsSource {
  exposition(): Promise<{ contentType: string; body: string }>;
}

/**
 * `GET /metrics` on the HTTP port, in the Prometheus text format. Returns
 * true when it answered, false for any other path (the `extraHandler`
 * contract of `startHttpServer`). The metrics carry no token, subject or
 * other caller data, only bounded labels, so the endpoint needs no caller
 * token; keep the port off the public internet or scrape it over mutual TLS.
 */
export function metricsRoute(source: MetricsSource, onError: (err: unknown) => void): (req: HttpRequest, res: HttpResponse) => boolean {
  return (req, res) => {
    if ((req.url ?? "").split("?", 1)[0] !== "/metrics") return false;
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain; charset=utf-8" });
      res.end("use GET\n");
      return true;
    }
    source.exposition().then(
      ({ contentType, body }) => {
        res.writeHead(200, { "content-type": contentType, "content-length": Buffer.byteLength(body), "cache-control": "no-store" });
        if (req.method === "HEAD") res.end();
        else res.end(body);
      },
      (err: unknown) => {
        onError(err);
        if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain; charset=utf-8" });
        res.end("metrics could not be collected\n");
      },
    );
    return true;
  };
}

/** Tries `first` (when there is one), then `rest`: composes `extraHandler`s of the HTTP server. */
export function withRoute(
  first: ((req: HttpRequest, res: HttpResponse) => boolean) | undefined,
  rest: (req: HttpRequest, res: HttpResponse) => boolean,
): (req: HttpRequest, res: HttpResponse) => boolean {
  return first === undefined ? rest : (req, res) => first(req, res) || rest(req, res);
}
