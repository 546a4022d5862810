/**
 * A complete example gateway: an HTTP reverse proxy that authenticates every
 * request's `Authorization: Bearer` token with the gateway client and
 * forwards the active ones to an upstream, with the token's claims in
 * `X-Auth-*` headers and without the token.
 *
 * - no or malformed credentials, or an inactive token → 401 with
 *   `WWW-Authenticate: Bearer` (RFC 6750 §3, §3.1);
 * - the token service unreachable or busy → 503 with `Retry-After`
 *   (RFC 9110 §15.6.4): "cannot tell" is never "inactive", and never "allow";
 * - the upstream unreachable → 502.
 *
 * Run it: `npx tsc -p examples/gateway/tsconfig.json` and then
 * `TOKENS_ADDRESS=127.0.0.1:50051 GATEWAY_TOKEN=cf-… UPSTREAM=http://127.0.0.1:3000 PORT=8080 node dist/gateway/examples/gateway/gateway.js`.
 */
import * as http from "node:http";
import { pathToFileURL } from "node:url";
import { IntrospectionClient, IntrospectionError, ServiceBusyError, type IntrospectTokenResponse } from "../../src/client/index.js";

/** What the gateway needs. */
export interface GatewayOptions {
  /** The gateway client (one per process: it holds the cache and the revocation stream). */
  readonly tokens: Pick<IntrospectionClient, "introspect">;
  /** Where active requests go, e.g. `http://127.0.0.1:3000`. */
  readonly upstream: string;
  /** The realm named in `WWW-Authenticate`. Default "api". */
  readonly realm?: string;
}

/** Hop-by-hop headers are the proxy's own business, never forwarded (RFC 9110 §7.6.1). */
const HOP_BY_HOP = new Set(["connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"]);

/** Claims as headers: a value with anything but visible ASCII is percent-encoded, so no claim can break a header. */
function headerValue(value: string): string {
  return /^[\x20-\x7e]*$/.test(value) ? value : encodeURIComponent(value);
}

/** The claim headers the upstream sees for an active answer. */
export function claimHeaders(answer: IntrospectTokenResponse): Record<string, string> {
  const headers: Record<string, string> = {
    "x-auth-subject": headerValue(answer.sub),
    "x-auth-scopes": headerValue(answer.scopes.join(" ")),
    "x-auth-token-id": headerValue(answer.jti),
    "x-auth-client-id": headerValue(answer.clientId),
  };
  if (answer.exp !== 0n) headers["x-auth-expires"] = String(answer.exp);
  if (answer.teams.length > 0) headers["x-auth-teams"] = headerValue(answer.teams.join(","));
  if (answer.isAdmin) headers["x-auth-admin"] = "true";
  return headers;
}

/** The bearer token of a request, "" when there is none, undefined when the header is malformed. */
function bearerOf(req: http.IncomingMessage): string | undefined {
  const header = req.headers.authorization;
  if (header === undefined) return "";
  // RFC 6750 §2.1: `Bearer` (case-insensitive) and one b64token.
  const match = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i.exec(header);
  return match?.[1];
}

/** Creates the gateway's HTTP server (not yet listening). */
export function createGateway(options: GatewayOptions): http.Server {
  const upstream = new URL(options.upstream);
  const realm = options.realm ?? "api";
  const deny = (res: http.ServerResponse, status: number, challenge: string, body: string) => {
    res.writeHead(status, { "www-authenticate": challenge, "content-type": "text/plain; charset=utf-8", "cache-control": "no-store" });
    res.end(body + "\n");
  };
  return http.createServer((req, res) => {
    const token = bearerOf(req);
    // No credentials: a bare challenge (RFC 6750 §3.1: no error code).
    if (token === "") return deny(res, 401, `Bearer realm="${realm}"`, "authentication required");
    if (token === undefined) return deny(res, 400, `Bearer realm="${realm}", error="invalid_request"`, "malformed Authorization header");
    options.tokens.introspect(token).then(
      (answer) => {
        if (!answer.active) {
          // The service's message is meant for the caller ("…revoked", "…expired"); it never contains the token.
          const description = answer.message.replace(/["\\\r\n]/g, "").slice(0, 200);
          return deny(res, 401, `Bearer realm="${realm}", error="invalid_token", error_description="${description}"`, answer.message || "invalid token");
        }
        forward(req, res, upstream, answer);
      },
      (error: unknown) => {
        const retryAfter = error instanceof ServiceBusyError ? Math.max(1, Math.ceil(error.retryAfterMs / 1000)) : 1;
        const why = error instanceof IntrospectionError ? error.code : "unknown";
        res.writeHead(503, { "retry-after": String(retryAfter), "content-type": "text/plain; charset=utf-8", "cache-control": "no-store" });
        res.end(`authentication service unavailable (${why})\n`);
      },
    );
  });
}

/** Sends an authenticated request upstream: no Authorization, no client-sent X-Auth-*, no hop-by-hop headers; the claims added. */
function forward(req: http.IncomingMessage, res: http.ServerResponse, upstream: URL, answer: IntrospectTokenResponse): void {
  const named = new Set((req.headers.connection ?? "").split(",").map((h) => h.trim().toLowerCase()));
  const headers: http.OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(req.headers)) {
    // A client must not be able to claim an identity: strip its X-Auth-* before adding ours.
    if (name === "authorization" || name.startsWith("x-auth-") || HOP_BY_HOP.has(name) || named.has(name) || name === "host") continue;
    headers[name] = value;
  }
  Object.assign(headers, claimHeaders(answer));
  const peer = req.socket.remoteAddress ?? "";
  headers["x-forwarded-for"] = req.headers["x-forwarded-for"] ? `${String(req.headers["x-forwarded-for"])}, ${peer}` : peer;
  if (req.headers.host) headers["x-forwarded-host"] = req.headers.host;
  const outgoing = http.request({ protocol: upstream.protocol, hostname: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers }, (reply) => {
    const back: http.OutgoingHttpHeaders = {};
    for (const [name, value] of Object.entries(reply.headers)) if (!HOP_BY_HOP.has(name)) back[name] = value;
    res.writeHead(reply.statusCode ?? 502, back);
    reply.pipe(res);
  });
  outgoing.on("error", () => {
    if (!res.headersSent) res.writeHead(502, { "content-type": "text/plain; charset=utf-8" });
    res.end("upstream unavailable\n");
  });
  req.pipe(outgoing);
}

/** Runs the gateway from the environment: TOKENS_ADDRESS, GATEWAY_TOKEN, UPSTREAM, PORT (default 8080). */
async function main(): Promise<void> {
  const need = (key: string) => process.env[key] || (console.error(`${key} is required`), process.exit(2));
  const tokens = new IntrospectionClient({ address: need("TOKENS_ADDRESS"), callerToken: need("GATEWAY_TOKEN") });
  const server = createGateway({ tokens, upstream: need("UPSTREAM") });
  server.listen(Number(process.env.PORT ?? 8080), () => console.log(`gateway listening on ${JSON.stringify(server.address())}`));
  const stop = () => server.close(() => tokens.close());
  process.once("SIGTERM", stop).once("SIGINT", stop);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) void main();
