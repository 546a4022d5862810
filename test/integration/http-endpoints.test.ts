import * as http from "node:http";
import * as http2 from "node:http2";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { SignJWT, createLocalJWKSet, decodeProtectedHeader, jwtVerify, type JSONWebKeySet } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TokenService, type IssueTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { mintToken } from "../../src/domain/token-format.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { startTestService, type ServiceUnderTest } from "../support/service.js";
import { startTcpProxy } from "../support/tcp-proxy.js";

/**
 * The plain HTTP endpoints on the Connect port, called with plain fetch as a
 * gateway, an OAuth resource server or a reverse proxy would: RFC 7662
 * introspection (and its RFC 9701 signed form), RFC 7009 revocation, forward
 * auth, health. Organised by outcome.
 */

const LEGACY_SECRET = "legacy-hmac-secret-0123456789abcdef0123";
const FORM = { "content-type": "application/x-www-form-urlencoded" };
const now = () => Math.floor(Date.now() / 1000);
const basic = (id: string, secret: string) => `Basic ${Buffer.from(`${id}:${secret}`).toString("base64")}`;
const bearer = (token: string) => `Bearer ${token}`;
const form = (fields: Record<string, string>) => new URLSearchParams(fields).toString();
const legacyJwt = (claims: Record<string, unknown>) =>
  new SignJWT({ exp: now() + 600, ...claims }).setProtectedHeader({ alg: "HS256" }).sign(new TextEncoder().encode(LEGACY_SECRET));

interface Issued {
  readonly token: string;
  readonly id: string;
  readonly iat: number;
  readonly exp: number;
}

function issuedOf(response: IssueTokenResponse): Issued {
  const info = response.info!;
  return { token: response.token, id: info.id, iat: Number(info.createTime!.seconds), exp: Number(info.expireTime!.seconds) };
}

describe("the standard HTTP endpoints", () => {
  let sut: ServiceUnderTest;
  let base: string;
  let connect: Client<typeof TokenService>;
  let admin: string;
  /** A gateway: may introspect, nothing else. */
  let gateway: Issued;
  /** May revoke, nothing else. */
  let revoker: Issued;
  /** An end user's token, the one the gateways ask about. */
  let user: Issued;

  const issue = async (req: Parameters<Client<typeof TokenService>["issueToken"]>[0]) =>
    issuedOf(await connect.issueToken(req, { headers: { authorization: bearer(admin) } }));
  const introspect = (body: string, headers: Record<string, string>) =>
    fetch(`${base}/oauth2/introspect`, { method: "POST", headers: { ...FORM, ...headers }, body });
  const revoke = (body: string, headers: Record<string, string>) => fetch(`${base}/oauth2/revoke`, { method: "POST", headers: { ...FORM, ...headers }, body });
  const auth = (headers: Record<string, string>, path = "/auth", method = "GET") => fetch(`${base}${path}`, { method, headers });
  const jwks = async () => createLocalJWKSet((await (await fetch(`${base}/.well-known/jwks.json`)).json()) as JSONWebKeySet);

  beforeAll(async () => {
    sut = await startTestService({
      DATA_DIR: "memory://",
      TOKEN_AUDIENCE: "orders-api",
      LEGACY_JWT_HMAC_SECRET: LEGACY_SECRET,
      LEGACY_JWT_SUNSET_DATE: "2099-01-01",
      FORWARD_AUTH_BACKEND_JWT: "true",
    });
    admin = sut.bootstrapToken!;
    base = `http://127.0.0.1:${sut.service.httpPort}`;
    connect = createClient(TokenService, createConnectTransport({ baseUrl: base, httpVersion: "1.1" }));
    gateway = await issue({ name: "edge-gateway", subject: "gateway@example.com", scopes: ["tokens.introspect"] });
    revoker = await issue({ name: "revoker", subject: "security@example.com", scopes: ["tokens.revoke"] });
    user = await issue({
      name: "checkout",
      subject: "user@example.com",
      fullName: "Jo User",
      scopes: ["orders.read", "orders.write"],
      teams: ["payments", "web"],
      namespaces: ["shop"],
      metadata: { owner: "platform" },
    });
  });

  afterAll(async () => {
    await sut?.service.stop();
  });

  /** The exact RFC 7662 answer for the user token. */
  const userAnswer = () => ({
    active: true,
    scope: "orders.read orders.write",
    client_id: user.id,
    username: "user@example.com",
    token_type: "Bearer",
    exp: user.exp,
    iat: user.iat,
    nbf: user.iat,
    sub: "user@example.com",
    aud: "orders-api",
    iss: "cf-token-service",
    jti: user.id,
    teams: ["payments", "web"],
    namespaces: ["shop"],
    is_admin: false,
    environment: "development",
    token_name: "checkout",
    token_kind: "opaque",
    full_name: "Jo User",
    metadata: { owner: "platform" },
  });

  describe("POST /oauth2/introspect (RFC 7662)", () => {
    it("answers an active token with exactly the RFC 7662 fields and the extension claims, to a Basic client", async () => {
      const res = await introspect(form({ token: user.token, token_type_hint: "access_token" }), { authorization: basic(gateway.id, gateway.token) });
      expect(res.status).toBe(200);
      expect(res.headers.get("content-type")).toBe("application/json");
      expect(res.headers.get("cache-control")).toBe("no-store");
      expect(await res.json()).toEqual(userAnswer());
    });

    it("answers the same to a Bearer client", async () => {
      const res = await introspect(form({ token: user.token }), { authorization: bearer(gateway.token) });
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual(userAnswer());
    });

    it("answers exactly {\"active\":false} for unknown, malformed, foreign-environment and revoked tokens", async () => {
      const doomed = await issue({ name: "doomed", subject: "user@example.com", scopes: ["orders.read"] });
      await connect.revokeToken({ target: { case: "token", value: doomed.token }, reason: "test" }, { headers: { authorization: bearer(admin) } });
      for (const token of [mintToken("development").token, "not-a-token", mintToken("production").token, doomed.token]) {
        const res = await introspect(form({ token }), { authorization: basic(gateway.id, gateway.token) });
        expect(res.status).toBe(200);
        expect(res.headers.get("cache-control")).toBe("no-store");
        expect(await res.text()).toBe('{"active":false}');
      }
    });

    it("answers a legacy JWT with the deprecation headers", async () => {
      const jwt = await legacyJwt({ sub: "old@example.com", jti: "legacy-1", scopes: ["orders.read"], teams: ["payments"] });
      const res = await introspect(form({ token: jwt }), { authorization: bearer(gateway.token) });
      expect(res.status).toBe(200);
      expect(await res.json()).toMatchObject({ active: true, sub: "old@example.com", jti: "legacy-1", token_type: "Bearer", token_kind: "legacy_jwt", teams: ["payments"] });
      expect(res.headers.get("x-auth-deprecation")).toBe("JWT tokens are deprecated. Please migrate to API tokens.");
      expect(res.headers.get("deprecation")).toMatch(/^@\d+$/);
      expect(res.headers.get("sunset")).toBe("Thu, 01 Jan 2099 00:00:00 GMT");
      expect(res.headers.get("link")).toContain('rel="deprecation"');
    });

    it("signs the answer as an RFC 9701 JWT when asked, verifiable with the JWKS", async () => {
      const res = await introspect(form({ token: user.token }), { authorization: basic(gateway.id, gateway.token), accept: "application/token-introspection+jwt" });
      expect(res.status).toBe(200);
      expect(res.headers.get("content-type")).toBe("application/token-introspection+jwt");
      const jwt = await res.text();
      expect(decodeProtectedHeader(jwt)).toMatchObject({ typ: "token-introspection+jwt", alg: "ES256" });
      const { payload } = await jwtVerify(jwt, await jwks(), { issuer: base, audience: gateway.id, typ: "token-introspection+jwt" });
      expect(payload.iat).toBeGreaterThanOrEqual(now() - 5);
      expect(payload.token_introspection).toEqual(userAnswer());
      // RFC 9701 §8.1: nothing at the top level that would let it pass for an access token.
      expect(payload.sub).toBeUndefined();
      expect(payload.exp).toBeUndefined();

      // RFC 8725 §3.11: explicitly typed, so it is never taken for a backend JWT (`at+jwt`).
      await expect(jwtVerify(jwt, await jwks(), { typ: "at+jwt" })).rejects.toMatchObject({ code: "ERR_JWT_CLAIM_VALIDATION_FAILED", claim: "typ" });

      const inactive = await introspect(form({ token: mintToken("development").token }), { authorization: bearer(gateway.token), accept: "application/json;q=0.5, application/token-introspection+jwt" });
      const verified = await jwtVerify(await inactive.text(), await jwks(), { audience: gateway.id });
      expect(verified.payload.token_introspection).toEqual({ active: false });
    });

    it("answers JSON when the JWT form is refused with q=0", async () => {
      const res = await introspect(form({ token: user.token }), { authorization: bearer(gateway.token), accept: "application/token-introspection+jwt;q=0, application/json" });
      expect(res.headers.get("content-type")).toBe("application/json");
    });

    it("refuses a client without credentials, with bad credentials or under another token's client id: 401 invalid_client", async () => {
      const cases: [Record<string, string>, string][] = [
        [{}, 'Basic realm="token-introspection"'],
        [{ authorization: basic(gateway.id, mintToken("development").token) }, 'Basic realm="token-introspection"'],
        [{ authorization: basic(revoker.id, gateway.token) }, 'Basic realm="token-introspection"'],
        [{ authorization: basic("not-a-uuid", gateway.token) }, 'Basic realm="token-introspection"'],
        [{ authorization: "Basic !!!" }, 'Basic realm="token-introspection"'],
        [{ authorization: bearer(mintToken("development").token) }, 'Bearer realm="token-introspection", error="invalid_token"'],
      ];
      for (const [headers, challenge] of cases) {
        const res = await introspect(form({ token: user.token }), headers);
        expect(res.status).toBe(401);
        expect(res.headers.get("www-authenticate")).toBe(challenge);
        const body = (await res.json()) as Record<string, unknown>;
        expect(body.error).toBe("invalid_client");
        expect(JSON.stringify(body)).not.toContain(gateway.token);
      }
      expect(sut.logs.lines.some((l) => l.security_event === "authentication_failed" && String(l.msg).includes("client id"))).toBe(true);
    });

    it("refuses a client without tokens.introspect: 403 insufficient_scope", async () => {
      const res = await introspect(form({ token: user.token }), { authorization: basic(revoker.id, revoker.token) });
      expect(res.status).toBe(403);
      expect(await res.json()).toMatchObject({ error: "insufficient_scope" });
      const viaBearer = await introspect(form({ token: user.token }), { authorization: bearer(user.token) });
      expect(viaBearer.status).toBe(403);
      expect(viaBearer.headers.get("www-authenticate")).toBe('Bearer realm="token-introspection", error="insufficient_scope", scope="tokens.introspect"');
    });

    it("refuses a request without a token, with a repeated token, or not form-encoded: 400 and 415", async () => {
      const headers = { authorization: bearer(gateway.token) };
      expect(await (await introspect("", headers)).json()).toMatchObject({ error: "invalid_request", error_description: "token: is required" });
      expect((await introspect(`token=${user.token}&token=${user.token}`, headers)).status).toBe(400);
      const json = await fetch(`${base}/oauth2/introspect`, { method: "POST", headers: { ...headers, "content-type": "application/json" }, body: JSON.stringify({ token: user.token }) });
      expect(json.status).toBe(415);
    });

    it("refuses a body over 16 KiB: 413", async () => {
      const res = await introspect(form({ token: user.token, padding: "x".repeat(17 * 1024) }), { authorization: bearer(gateway.token) });
      expect(res.status).toBe(413);
      expect(await res.json()).toMatchObject({ error: "invalid_request" });
    });

    it("refuses a streamed body as soon as it passes 16 KiB: 413", async () => {
      const status = await new Promise<number>((resolve, reject) => {
        const req = http.request(`${base}/oauth2/introspect`, { method: "POST", headers: { ...FORM, authorization: bearer(gateway.token) } }, (res) => {
          res.resume();
          resolve(res.statusCode!);
        });
        req.on("error", reject);
        // Chunked, no Content-Length: the limit must hold while reading.
        for (let i = 0; i < 8; i++) req.write(`pad${i}=${"x".repeat(4096)}&`);
        req.end(`token=${user.token}`);
      });
      expect(status).toBe(413);
    });

    it("answers over cleartext HTTP/2 as well", async () => {
      const session = http2.connect(base);
      try {
        const call = (headers: http2.OutgoingHttpHeaders, body?: string) =>
          new Promise<{ status: number; headers: http2.IncomingHttpHeaders; body: string }>((resolve, reject) => {
            const stream = session.request(headers);
            let text = "";
            let responseHeaders: http2.IncomingHttpHeaders = {};
            stream.on("response", (h) => (responseHeaders = h));
            stream.on("data", (chunk: Buffer) => (text += chunk.toString()));
            stream.on("end", () => resolve({ status: Number(responseHeaders[":status"]), headers: responseHeaders, body: text }));
            stream.on("error", reject);
            stream.end(body);
          });
        const introspected = await call({ ":method": "POST", ":path": "/oauth2/introspect", ...FORM, authorization: bearer(gateway.token) }, form({ token: user.token }));
        expect(introspected.status).toBe(200);
        expect(JSON.parse(introspected.body)).toEqual(userAnswer());
        const tooLarge = await call({ ":method": "POST", ":path": "/oauth2/introspect", ...FORM, authorization: bearer(gateway.token) }, form({ token: user.token, pad: "x".repeat(20_000) }));
        expect(tooLarge.status).toBe(413);
        const forward = await call({ ":method": "GET", ":path": "/auth", authorization: bearer(user.token) });
        expect(forward.status).toBe(200);
        expect(forward.headers["x-auth-subject"]).toBe("user@example.com");
        expect((await call({ ":method": "GET", ":path": "/readyz" })).status).toBe(200);
      } finally {
        session.close();
      }
    });

    it("answers other methods with 405 and Allow: POST", async () => {
      const res = await fetch(`${base}/oauth2/introspect`);
      expect(res.status).toBe(405);
      expect(res.headers.get("allow")).toBe("POST");
    });
  });

  describe("POST /oauth2/revoke (RFC 7009)", () => {
    it("answers 200 with an empty body for unknown and invalid tokens", async () => {
      for (const token of [mintToken("development").token, "garbage", mintToken("staging").token]) {
        const res = await revoke(form({ token }), { authorization: basic(revoker.id, revoker.token) });
        expect(res.status).toBe(200);
        expect(await res.text()).toBe("");
      }
    });

    it("refuses a request without a token: 400 invalid_request", async () => {
      const res = await revoke(form({ token_type_hint: "access_token" }), { authorization: basic(revoker.id, revoker.token) });
      expect(res.status).toBe(400);
      expect(await res.json()).toMatchObject({ error: "invalid_request" });
    });

    it("refuses a client without tokens.revoke (403) or without credentials (401)", async () => {
      const victim = await issue({ name: "victim", subject: "user@example.com", scopes: ["orders.read"] });
      expect((await revoke(form({ token: victim.token }), { authorization: basic(gateway.id, gateway.token) })).status).toBe(403);
      const anonymous = await revoke(form({ token: victim.token }), {});
      expect(anonymous.status).toBe(401);
      expect(anonymous.headers.get("www-authenticate")).toBe('Basic realm="token-introspection"');
      expect((await auth({ authorization: bearer(victim.token) })).status).toBe(200);
    });

    it("revokes: introspection and forward auth refuse the token at once", async () => {
      const victim = await issue({ name: "leaked", subject: "user@example.com", scopes: ["orders.read"] });
      expect((await auth({ authorization: bearer(victim.token) })).status).toBe(200);
      const res = await revoke(form({ token: victim.token, token_type_hint: "access_token" }), { authorization: bearer(revoker.token) });
      expect(res.status).toBe(200);
      expect(await res.text()).toBe("");
      expect(await (await introspect(form({ token: victim.token }), { authorization: bearer(gateway.token) })).text()).toBe('{"active":false}');
      const refused = await auth({ authorization: bearer(victim.token) });
      expect(refused.status).toBe(401);
      expect(refused.headers.get("www-authenticate")).toBe('Bearer error="invalid_token", error_description="The token has been revoked."');
    });

    it("answers other methods with 405 and Allow: POST", async () => {
      const res = await fetch(`${base}/oauth2/revoke`, { method: "PUT" });
      expect(res.status).toBe(405);
      expect(res.headers.get("allow")).toBe("POST");
    });
  });

  describe("/auth (forward auth)", () => {
    it("answers an active token with 200 and the claims as X-Auth-* headers, with a verifiable backend JWT", async () => {
      const res = await auth({ authorization: bearer(user.token) });
      expect(res.status).toBe(200);
      expect(await res.text()).toBe("");
      expect(res.headers.get("cache-control")).toBe("no-store");
      expect(res.headers.get("x-auth-subject")).toBe("user@example.com");
      expect(res.headers.get("x-auth-scopes")).toBe("orders.read orders.write");
      expect(res.headers.get("x-auth-teams")).toBe("payments,web");
      expect(res.headers.get("x-auth-namespaces")).toBe("shop");
      expect(res.headers.get("x-auth-is-admin")).toBe("false");
      expect(res.headers.get("x-auth-token-id")).toBe(user.id);
      expect(res.headers.get("x-auth-token-kind")).toBe("opaque");
      const backendJwt = res.headers.get("x-auth-backend-jwt")!;
      const { payload } = await jwtVerify(backendJwt, await jwks(), { issuer: "cf-token-service", audience: "orders-api", typ: "at+jwt" });
      expect(payload).toMatchObject({ sub: "user@example.com", token_id: user.id, scope: "orders.read orders.write" });
      // A backend JWT never passes where an RFC 9701 introspection answer is expected.
      await expect(jwtVerify(backendJwt, await jwks(), { typ: "token-introspection+jwt" })).rejects.toMatchObject({ claim: "typ" });
      expect(res.headers.get("deprecation")).toBeNull();
    });

    it("answers any method and any path below /auth/, as Envoy ext_authz asks", async () => {
      for (const [path, method] of [["/auth/api/orders/42", "DELETE"], ["/auth?x=1", "POST"], ["/auth", "HEAD"]] as const) {
        const res = await auth({ authorization: bearer(user.token) }, path, method);
        expect(res.status).toBe(200);
        expect(res.headers.get("x-auth-subject")).toBe("user@example.com");
      }
    });

    it("answers 401 with a bare Bearer challenge when there is no token", async () => {
      const res = await auth({});
      expect(res.status).toBe(401);
      expect(res.headers.get("www-authenticate")).toBe("Bearer");
      expect(res.headers.get("x-auth-subject")).toBeNull();
    });

    it("answers 401 invalid_token with the inactive reason's message for unknown, malformed and foreign tokens", async () => {
      const cases: [string, string][] = [
        [mintToken("development").token, "The token is not recognised."],
        ["cf-short", "The token is malformed."],
        [mintToken("production").token, "Token environment mismatch: production token used in development"],
      ];
      for (const [token, message] of cases) {
        const res = await auth({ authorization: bearer(token) });
        expect(res.status).toBe(401);
        expect(res.headers.get("www-authenticate")).toBe(`Bearer error="invalid_token", error_description="${message}"`);
        expect(await res.json()).toEqual({ error: "invalid_token", error_description: message });
      }
      expect(sut.logs.lines.some((l) => l.security_event === "environment_mismatch" && l.method === "GET /auth")).toBe(true);
    });

    it("answers 401 invalid_request for a credential that is not a Bearer token", async () => {
      const res = await auth({ authorization: basic(user.id, user.token) });
      expect(res.status).toBe(401);
      expect(res.headers.get("www-authenticate")).toMatch(/^Bearer error="invalid_request", error_description="[^"]+"$/);
    });

    it("answers a legacy JWT with 200, its claims and the deprecation headers", async () => {
      const jwt = await legacyJwt({ sub: "old@example.com", jti: "legacy-2", scopes: ["orders.read"], teams: ["payments"] });
      const res = await auth({ authorization: bearer(jwt) });
      expect(res.status).toBe(200);
      expect(res.headers.get("x-auth-subject")).toBe("old@example.com");
      expect(res.headers.get("x-auth-token-kind")).toBe("legacy_jwt");
      expect(res.headers.get("x-auth-token-id")).toBe("legacy-2");
      expect(res.headers.get("x-auth-deprecation")).toBe("JWT tokens are deprecated. Please migrate to API tokens.");
      expect(res.headers.get("sunset")).toBe("Thu, 01 Jan 2099 00:00:00 GMT");
      expect(res.headers.get("deprecation")).toMatch(/^@\d+$/);
      expect(res.headers.get("link")).toContain('rel="deprecation"');
      // Backend JWTs are minted for API tokens only.
      expect(res.headers.get("x-auth-backend-jwt")).toBeNull();
    });

    it("cannot be made to inject a header: foreign claims are percent-encoded", async () => {
      const jwt = await legacyJwt({ sub: "evil\r\nX-Injected: yes", jti: "legacy-3", teams: ["a,b", "é"], scopes: ["x y", "100%"] });
      const res = await auth({ authorization: bearer(jwt) });
      expect(res.status).toBe(200);
      expect(res.headers.get("x-injected")).toBeNull();
      expect(res.headers.get("x-auth-subject")).toBe("evil%0D%0AX-Injected: yes");
      expect(res.headers.get("x-auth-teams")).toBe("a%2Cb,%C3%A9");
      expect(res.headers.get("x-auth-scopes")).toBe("x%20y 100%25");
    });

    it("never writes a token to the log", () => {
      const log = sut.logs.raw.join("\n");
      for (const t of [admin, gateway.token, revoker.token, user.token]) expect(log).not.toContain(t);
    });
  });

  describe("health", () => {
    it("GET /healthz answers 200 {\"status\":\"ok\"}", async () => {
      const res = await fetch(`${base}/healthz`);
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual({ status: "ok" });
    });

    it("GET /readyz answers 200 with every check ok", async () => {
      const res = await fetch(`${base}/readyz`);
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual({ status: "ready", checks: { store: "ok", migrations: "ok", revocation_channel: "ok" } });
    });

    it("answers other methods with 405 and Allow: GET, HEAD; HEAD has no body", async () => {
      for (const path of ["/healthz", "/readyz", "/.well-known/jwks.json"]) {
        const res = await fetch(`${base}${path}`, { method: "POST" });
        expect(res.status).toBe(405);
        expect(res.headers.get("allow")).toBe("GET, HEAD");
      }
      const head = await fetch(`${base}/healthz`, { method: "HEAD" });
      expect(head.status).toBe(200);
      expect(await head.text()).toBe("");
    });
  });
});

describe("forward auth configuration", () => {
  let secured: ServiceUnderTest;
  let disabled: ServiceUnderTest;
  const SECRET = "proxy-secret-0123456789";

  beforeAll(async () => {
    [secured, disabled] = await Promise.all([
      startTestService({ DATA_DIR: "memory://", FORWARD_AUTH_SECRET: SECRET }),
      startTestService({ DATA_DIR: "memory://", FORWARD_AUTH_ENABLED: "false" }),
    ]);
  });

  afterAll(async () => {
    await Promise.all([secured?.service.stop(), disabled?.service.stop()]);
  });

  it("with FORWARD_AUTH_SECRET, answers only the proxy that sends it (403 otherwise)", async () => {
    const url = `http://127.0.0.1:${secured.service.httpPort}/auth`;
    const authorization = bearer(secured.bootstrapToken!);
    expect((await fetch(url, { headers: { authorization } })).status).toBe(403);
    expect((await fetch(url, { headers: { authorization, "x-forward-auth-secret": "wrong-secret-0123456789" } })).status).toBe(403);
    const ok = await fetch(url, { headers: { authorization, "x-forward-auth-secret": SECRET } });
    expect(ok.status).toBe(200);
    expect(ok.headers.get("x-auth-is-admin")).toBe("true");
    expect(ok.headers.get("x-auth-backend-jwt")).toBeNull();
    expect(secured.logs.lines.some((l) => l.security_event === "authentication_failed" && String(l.msg).includes("X-Forward-Auth-Secret"))).toBe(true);
    expect(secured.logs.raw.join("\n")).not.toContain(SECRET);
  });

  it("with FORWARD_AUTH_ENABLED=false, /auth is not served", async () => {
    const res = await fetch(`http://127.0.0.1:${disabled.service.httpPort}/auth`, { headers: { authorization: bearer(disabled.bootstrapToken!) } });
    expect(res.status).toBe(404);
    expect(res.headers.get("x-auth-subject")).toBeNull();
  });
});

/**
 * The store goes away (PostgreSQL behind a proxy that cuts it): forward auth
 * and introspection answer 503, never 401 or inactive; readiness fails while
 * liveness holds; both recover by themselves.
 */
describe("the HTTP endpoints during a store outage", () => {
  let db: TestDatabase;
  let proxy: Awaited<ReturnType<typeof startTcpProxy>>;
  let sut: ServiceUnderTest;

  beforeAll(async () => {
    db = await createTestDatabase();
    proxy = await startTcpProxy(5432);
    const url = new URL(db.url);
    url.port = String(proxy.port);
    sut = await startTestService({ DATABASE_URL: url.toString(), DATABASE_CONNECT_TIMEOUT: "500ms", DATABASE_STATEMENT_TIMEOUT: "1s" });
  });

  afterAll(async () => {
    await sut?.service.stop();
    await proxy?.close();
    await db?.drop();
  });

  it("answers 503 with Retry-After, never 401, and readiness says which check failed", async () => {
    const base = `http://127.0.0.1:${sut.service.httpPort}`;
    const admin = sut.bootstrapToken!;
    expect((await fetch(`${base}/readyz`)).status).toBe(200);

    proxy.cut();
    const unseen = mintToken("development").token;
    const forward = await fetch(`${base}/auth`, { headers: { authorization: bearer(unseen) } });
    expect(forward.status).toBe(503);
    expect(forward.headers.get("retry-after")).toBe("1");
    expect(forward.headers.get("www-authenticate")).toBeNull();
    const introspection = await fetch(`${base}/oauth2/introspect`, { method: "POST", headers: { ...FORM, authorization: bearer(admin) }, body: form({ token: unseen }) });
    expect(introspection.status).toBe(503);
    expect(await introspection.json()).toMatchObject({ error: "temporarily_unavailable" });

    const readiness = async () => {
      const res = await fetch(`${base}/readyz`);
      return { status: res.status, body: (await res.json()) as { status: string; checks: Record<string, string> } };
    };
    await expect.poll(async () => (await readiness()).body.checks.store, { timeout: 10_000, interval: 250 }).toBe("unavailable");
    expect(await readiness()).toMatchObject({ status: 503, body: { status: "not_ready", checks: { store: "unavailable", migrations: "ok" } } });
    expect((await fetch(`${base}/healthz`)).status).toBe(200);

    proxy.restore();
    await expect.poll(async () => (await fetch(`${base}/readyz`)).status, { timeout: 15_000, interval: 250 }).toBe(200);
    expect((await fetch(`${base}/auth`, { headers: { authorization: bearer(unseen) } })).status).toBe(401);
    expect(sut.logs.raw.join("\n")).not.toContain(admin);
  });
});
