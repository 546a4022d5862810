import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { CONFIG_KEYS } from "../../src/config.js";
import type { IntrospectedClaims } from "../../src/domain/introspect.js";
import { FORWARD_AUTH_SECRET_HEADER, claimHeaders } from "../../src/server/http/forward-auth.js";

/**
 * No Traefik binary can run here, so the Traefik example
 * (examples/traefik/dynamic.yaml) is checked as far as a file can be: it
 * parses as YAML, uses only documented forwardAuth options, points at the
 * service's /auth on its HTTP port, sends the proxy's secret, copies every
 * claim header and removes the secret and the token before the application.
 * The chain is also walked with Traefik's documented header semantics (a
 * custom request header sets, an empty one removes; forwardAuth sends the
 * request headers named in authRequestHeaders and, on 2xx, replaces every
 * header matching authResponseHeadersRegex with the answer's).
 */

interface HeadersMiddleware {
  headers: { customRequestHeaders: Record<string, string> };
}
interface ForwardAuthMiddleware {
  forwardAuth: Record<string, unknown> & { address: string; authRequestHeaders?: string[]; authResponseHeadersRegex?: string; trustForwardHeader?: boolean };
}
type Middleware = Partial<HeadersMiddleware & ForwardAuthMiddleware>;
interface Dynamic {
  http: {
    routers: Record<string, { rule: string; middlewares: string[]; service: string }>;
    middlewares: Record<string, Middleware>;
    services: Record<string, { loadBalancer: { servers: { url: string }[] } }>;
  };
}

/** forwardAuth's options in Traefik's documentation (v2.10 to v3). */
const FORWARD_AUTH_OPTIONS = new Set([
  "address",
  "tls",
  "trustForwardHeader",
  "authResponseHeaders",
  "authResponseHeadersRegex",
  "authRequestHeaders",
  "addAuthCookiesToResponse",
  "forwardBody",
  "maxBodySize",
  "preserveLocationHeader",
  "preserveRequestMethod",
  "headerField",
]);

/** Go's canonical header name (net/textproto), as Traefik matches it. */
const canonical = (name: string) => name.toLowerCase().replace(/(^|-)([a-z])/g, (_m, dash: string, c: string) => dash + c.toUpperCase());

/** A headers middleware applied to a request: set, or remove on an empty value. */
function applyHeaders(request: Map<string, string>, middleware: HeadersMiddleware): void {
  for (const [name, value] of Object.entries(middleware.headers.customRequestHeaders)) {
    if (value === "") request.delete(canonical(name));
    else request.set(canonical(name), value);
  }
}

describe("the Traefik forwardAuth example (not run: parsed and walked through)", () => {
  const text = readFileSync(new URL("../../examples/traefik/dynamic.yaml", import.meta.url), "utf8");
  const config = parse(text) as Dynamic;
  const router = config.http.routers.api!;
  const chain = router.middlewares.map((name) => {
    const middleware = config.http.middlewares[name];
    expect(middleware, name).toBeDefined();
    return middleware!;
  });
  const authIndex = chain.findIndex((m) => m.forwardAuth !== undefined);
  const forwardAuth = chain[authIndex]!.forwardAuth!;

  it("says plainly that it was not run", () => {
    expect(text).toContain("NOT RUN HERE");
  });

  it("routes through one forwardAuth middleware with documented options only", () => {
    expect(chain.filter((m) => m.forwardAuth !== undefined)).toHaveLength(1);
    for (const option of Object.keys(forwardAuth)) expect(FORWARD_AUTH_OPTIONS, option).toContain(option);
    expect(forwardAuth.trustForwardHeader).not.toBe(true);
    expect(config.http.services[router.service]).toBeDefined();
  });

  it("points at /auth on the service's HTTP port", () => {
    const address = new URL(forwardAuth.address);
    expect(address.pathname).toBe("/auth");
    expect(address.search).toBe("");
    expect(address.port).toBe(CONFIG_KEYS.HTTP_PORT.default);
  });

  it("sends the token and the proxy's secret, read from FORWARD_AUTH_SECRET, to /auth", () => {
    const client = new Map([
      ["Authorization", "Bearer cfstg-example"],
      ["X-Forward-Auth-Secret", "a-client-guess"],
      ["Cookie", "session=1"],
    ]);
    for (const middleware of chain.slice(0, authIndex)) applyHeaders(client, middleware as HeadersMiddleware);
    const sent = new Map([...client].filter(([name]) => (forwardAuth.authRequestHeaders ?? [...client.keys()]).map(canonical).includes(name)));
    expect(sent.get("Authorization")).toBe("Bearer cfstg-example");
    expect(canonical(FORWARD_AUTH_SECRET_HEADER)).toBe("X-Forward-Auth-Secret");
    expect(sent.get("X-Forward-Auth-Secret")).toBe('{{ env "FORWARD_AUTH_SECRET" }}');
    expect(sent.has("Cookie")).toBe(false);
  });

  it("copies every claim header of an answer, and none a client forged", () => {
    const claims = { id: "0b0e7a9e-0000-4000-8000-000000000000", kind: "opaque", subject: "s", scopes: [], teams: [], namespaces: [], isAdmin: false } as unknown as IntrospectedClaims;
    const answerHeaders = [...Object.keys(claimHeaders(claims)), "x-auth-backend-jwt", "x-auth-deprecation"].map(canonical);
    const regex = new RegExp(forwardAuth.authResponseHeadersRegex ?? "^$");
    for (const name of answerHeaders) expect(regex.test(name), name).toBe(true);
    expect(regex.test("X-Auth-Anything-A-Client-Sends")).toBe(true);
    expect(regex.test("Authorization")).toBe(false);
  });

  it("removes the secret and the token before the application", () => {
    const request = new Map([
      ["Authorization", "Bearer cfstg-example"],
      ["X-Forward-Auth-Secret", "the-secret"],
      ["X-Auth-Subject", "s"],
    ]);
    for (const middleware of chain.slice(authIndex + 1)) applyHeaders(request, middleware as HeadersMiddleware);
    expect([...request.keys()]).toEqual(["X-Auth-Subject"]);
  });
});
