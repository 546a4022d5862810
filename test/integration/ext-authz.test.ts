import { randomUUID } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { SignJWT, createLocalJWKSet, jwtVerify, type JSONWebKeySet } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HeaderValueOption_HeaderAppendAction, type HeaderValueOption } from "../../gen/envoy/config/core/v3/base_pb.js";
import { Authorization, type CheckResponse } from "../../gen/envoy/service/auth/v3/external_auth_pb.js";
import { TokenService, type IssueTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { ConfigError, loadConfig } from "../../src/config.js";
import { bootstrapAdmin } from "../../src/domain/issue.js";
import { digestToken, displayHint, mintToken } from "../../src/domain/token-format.js";
import { CHECK_METHOD } from "../../src/rpc/ext-authz.js";
import { makeTestPki, type TestPki } from "../support/certs.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, TEST_KEK, type ServiceUnderTest } from "../support/service.js";
import { startTcpProxy } from "../support/tcp-proxy.js";

/**
 * Envoy's ext_authz over gRPC, `envoy.service.auth.v3.Authorization/Check`,
 * called as Envoy calls it: a grpc-js client built from our definitions of
 * Envoy's messages (same package, names and field numbers), a CheckRequest
 * carrying the original request's headers. Organised by outcome: allowed,
 * refused (each inactive reason), outage, legacy JWTs, who may call, TLS.
 * Whole services on PostgreSQL, as operators run them.
 */

const LEGACY_SECRET = "legacy-hmac-secret-0123456789abcdef0123";
const SECRET = "envoy-secret-0123456789abcdef";
const now = () => Math.floor(Date.now() / 1000);
const legacyJwt = (claims: Record<string, unknown>) =>
  new SignJWT({ exp: now() + 600, env: "development", ...claims }).setProtectedHeader({ alg: "HS256" }).sign(new TextEncoder().encode(LEGACY_SECRET));

/** A CheckRequest as Envoy's HTTP filter builds it (headers lower-cased). */
function checkRequest(headers: Record<string, string>, id = `req-${randomUUID()}`) {
  return { attributes: { request: { http: { id, method: "GET", path: "/orders/42", host: "api.example.com", headers: { "user-agent": "curl/8.5.0", ...headers } } } } };
}

/** Header name → value of a list of HeaderValueOptions. */
function headersOf(options: readonly HeaderValueOption[]): Record<string, string> {
  return Object.fromEntries(options.map((o) => [o.header!.key, o.header!.value]));
}

type Denied = Extract<CheckResponse["httpResponse"], { case: "deniedResponse" }>["value"];
type Ok = Extract<CheckResponse["httpResponse"], { case: "okResponse" }>["value"];

function denied(answer: CheckResponse): Denied {
  expect(answer.httpResponse.case).toBe("deniedResponse");
  return answer.httpResponse.value as Denied;
}

function ok(answer: CheckResponse): Ok {
  expect(answer.status?.code ?? 0).toBe(0);
  expect(answer.httpResponse.case).toBe("okResponse");
  return answer.httpResponse.value as Ok;
}

/** A Check client on a service's gRPC port. */
function envoyOf(sut: ServiceUnderTest, credentials?: grpc.ChannelCredentials) {
  const c = grpcClient(Authorization, `127.0.0.1:${sut.service.grpcPort}`, credentials);
  return {
    check: (headers: Record<string, string>, metadata: Record<string, string> = {}, id?: string) => c.unary<CheckResponse>("check", checkRequest(headers, id), metadata),
    raw: (request: object, metadata: Record<string, string> = {}) => c.unary<CheckResponse>("check", request, metadata),
    close: () => c.close(),
  };
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

let db: TestDatabase;
let pki: TestPki;
const started: ServiceUnderTest[] = [];
const start = async (env: Record<string, string>) => {
  const sut = await startTestService({ DATABASE_URL: db.url, KEY_ENCRYPTION_KEY: TEST_KEK, ...env });
  started.push(sut);
  return sut;
};

beforeAll(async () => {
  [db, pki] = await Promise.all([createTestDatabase(), makeTestPki()]);
});

afterAll(async () => {
  for (const sut of started) await sut.service.stop();
  await db?.drop();
  await pki?.remove();
});

describe("Check in development (open, with backend JWTs and the credential removed)", () => {
  let sut: ServiceUnderTest;
  let envoy: ReturnType<typeof envoyOf>;
  let admin: string;
  let user: IssueTokenResponse;
  const tokens = () => grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);

  beforeAll(async () => {
    sut = await start({
      TOKEN_AUDIENCE: "orders-api",
      LEGACY_JWT_HMAC_SECRET: LEGACY_SECRET,
      LEGACY_JWT_SUNSET_DATE: "2099-01-01",
      EXT_AUTHZ_BACKEND_JWT: "true",
      EXT_AUTHZ_REMOVE_HEADER: "true",
    });
    admin = (await bootstrapAdmin(sut.service.deps, "admin@example.com", "cli")).token;
    const t = tokens();
    user = await t.unary<IssueTokenResponse>(
      "issueToken",
      { name: "checkout", subject: "user@example.com", scopes: ["orders.read", "orders.write"], teams: ["payments", "web"], namespaces: ["shop"] },
      bearer(admin),
    );
    t.close();
    envoy = envoyOf(sut);
  });

  afterAll(() => envoy?.close());

  it("says at start-up that Check is served open (development only)", () => {
    const lines = sut.logs.lines.filter((l) => l.ext_authz === "open");
    expect(lines).toHaveLength(1);
    expect(Number(lines[0]!.level)).toBe(40);
    expect(String(lines[0]!.msg)).toContain("EXT_AUTHZ_SECRET");
  });

  describe("allowed", () => {
    it("answers OK with the X-Auth-* headers, overwriting, removing the credential, and the claims as dynamic metadata", async () => {
      const answer = await envoy.check(bearer(user.token));
      const response = ok(answer);
      expect(headersOf(response.headers)).toMatchObject({
        "x-auth-subject": "user@example.com",
        "x-auth-scopes": "orders.read orders.write",
        "x-auth-teams": "payments,web",
        "x-auth-namespaces": "shop",
        "x-auth-is-admin": "false",
        "x-auth-token-id": user.info!.id,
        "x-auth-token-kind": "opaque",
      });
      // A client's own X-Auth-Subject must not survive next to ours.
      for (const h of response.headers) expect(h.appendAction).toBe(HeaderValueOption_HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD);
      expect(response.headersToRemove).toEqual(["authorization"]);
      expect(response.responseHeadersToAdd).toEqual([]);
      expect(answer.dynamicMetadata).toMatchObject({
        sub: "user@example.com",
        scope: "orders.read orders.write",
        teams: ["payments", "web"],
        namespaces: ["shop"],
        is_admin: false,
        jti: user.info!.id,
        token_kind: "opaque",
        environment: "development",
      });
      expect(answer.dynamicMetadata?.["exp"]).toBe(Number(user.info!.expireTime!.seconds));
    });

    it("adds a backend JWT that verifies against the service's JWKS, for the token's subject", async () => {
      const response = ok(await envoy.check(bearer(user.token)));
      const jwt = headersOf(response.headers)["x-auth-backend-jwt"];
      expect(jwt).toMatch(/^eyJ/);
      const jwks = createLocalJWKSet((await (await fetch(`http://127.0.0.1:${sut.service.httpPort}/.well-known/jwks.json`)).json()) as JSONWebKeySet);
      const { payload } = await jwtVerify(jwt!, jwks, { audience: "orders-api" });
      expect(payload).toMatchObject({ sub: "user@example.com", teams: ["payments", "web"] });
    });

    it("answers the same on a cache hit, and reads the credential from header_map (encode_raw_headers)", async () => {
      const first = ok(await envoy.check(bearer(user.token)));
      const again = ok(await envoy.check(bearer(user.token)));
      expect(headersOf(again.headers)["x-auth-subject"]).toBe(headersOf(first.headers)["x-auth-subject"]);
      const raw = await envoy.raw({
        attributes: { request: { http: { method: "GET", path: "/", headerMap: { headers: [{ key: "authorization", rawValue: Buffer.from(`Bearer ${user.token}`) }] } } } },
      });
      expect(headersOf(ok(raw).headers)["x-auth-subject"]).toBe("user@example.com");
    });

    it("answers a legacy JWT with its claims and the deprecation headers for the client, and no backend JWT", async () => {
      const jwt = await legacyJwt({ sub: "old@example.com", jti: "legacy-1", scopes: ["orders.read"], teams: ["payments"] });
      const answer = await envoy.check(bearer(jwt));
      const response = ok(answer);
      const upstream = headersOf(response.headers);
      expect(upstream).toMatchObject({ "x-auth-subject": "old@example.com", "x-auth-token-kind": "legacy_jwt", "x-auth-token-id": "legacy-1" });
      expect(upstream["x-auth-backend-jwt"]).toBeUndefined();
      const client = headersOf(response.responseHeadersToAdd);
      expect(client["x-auth-deprecation"]).toBe("JWT tokens are deprecated. Please migrate to API tokens.");
      expect(client["sunset"]).toBe("Thu, 01 Jan 2099 00:00:00 GMT");
      expect(client["deprecation"]).toMatch(/^@\d+$/);
      expect(client["link"]).toContain('rel="deprecation"');
      expect(answer.dynamicMetadata).toMatchObject({ sub: "old@example.com", token_kind: "legacy_jwt" });
    });
  });

  describe("refused: 401 with an RFC 6750 challenge", () => {
    const expectChallenge = (answer: CheckResponse, message: string) => {
      const response = denied(answer);
      expect(answer.status?.code).toBe(grpc.status.UNAUTHENTICATED);
      expect(response.status?.code).toBe(401);
      expect(headersOf(response.headers)["www-authenticate"]).toBe(`Bearer error="invalid_token", error_description="${message}"`);
      expect(JSON.parse(response.body)).toEqual({ error: "invalid_token", error_description: message });
      expect(answer.dynamicMetadata).toBeUndefined();
    };

    it("a malformed token", async () => {
      expectChallenge(await envoy.check(bearer("cf-short")), "The token is malformed.");
    });

    it("an unknown token", async () => {
      expectChallenge(await envoy.check(bearer(mintToken("development").token)), "The token is not recognised.");
    });

    it("an expired token", async () => {
      const { token } = mintToken("development");
      const minutesAgo = (m: number) => new Date(Date.now() - m * 60_000);
      await sut.service.deps.store.insert(
        {
          id: randomUUID(),
          digest: digestToken(token),
          displayHint: displayHint(token),
          name: "expired",
          subject: "late@example.com",
          fullName: "",
          teams: [],
          scopes: [],
          namespaces: [],
          isAdmin: false,
          metadata: {},
          environment: "development",
          createdAt: minutesAgo(60),
          createdBy: "admin",
          issuedByTokenId: null,
          expiresAt: minutesAgo(1),
        },
        { maxActivePerSubject: 100, now: minutesAgo(60) },
      );
      expectChallenge(await envoy.check(bearer(token)), "The token has expired.");
    });

    it("a revoked token", async () => {
      const t = tokens();
      const victim = await t.unary<IssueTokenResponse>("issueToken", { name: "to-revoke", subject: "gone@example.com", scopes: ["orders.read"] }, bearer(admin));
      ok(await envoy.check(bearer(victim.token)));
      await t.unary("revokeToken", { target: { case: "token", value: victim.token }, reason: "test" }, bearer(admin));
      t.close();
      expectChallenge(await envoy.check(bearer(victim.token)), "The token has been revoked.");
    });

    it("a token of another environment, raising the critical security event with Envoy's request id", async () => {
      expectChallenge(await envoy.check(bearer(mintToken("production").token), {}, "envoy-request-7"), "Token environment mismatch: production token used in development");
      const event = sut.logs.lines.find((l) => l.security_event === "environment_mismatch" && l.method === CHECK_METHOD);
      expect(event).toMatchObject({ request_id: "envoy-request-7", severity: "critical" });
    });

    it("no credential: a bare Bearer challenge; not a Bearer credential: invalid_request", async () => {
      const none = denied(await envoy.check({}));
      expect(none.status?.code).toBe(401);
      expect(headersOf(none.headers)["www-authenticate"]).toBe("Bearer");
      const basic = denied(await envoy.check({ authorization: `Basic ${Buffer.from("a:b").toString("base64")}` }));
      expect(basic.status?.code).toBe(401);
      expect(headersOf(basic.headers)["www-authenticate"]).toMatch(/^Bearer error="invalid_request", error_description="[^"]+"$/);
      // A CheckRequest without any HTTP attributes carries no credential either.
      expect(denied(await envoy.raw({})).status?.code).toBe(401);
    });
  });

  it("counts Check calls and the tokens they resolved in the same metrics as every other path", async () => {
    const metrics = await (await fetch(`http://127.0.0.1:${sut.service.httpPort}/metrics`)).text();
    expect(metrics).toMatch(/token_service_rpc_handled_total\{[^}]*service="envoy\.service\.auth\.v3\.Authorization",method="Check",code="OK"\} [1-9]/);
    expect(metrics).toMatch(/token_service_introspections_total\{[^}]*outcome="environment_mismatch"[^}]*\} [1-9]/);
  });

  it("is served on the gRPC port only", async () => {
    const res = await fetch(`http://127.0.0.1:${sut.service.httpPort}${CHECK_METHOD}`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
    expect(res.status).toBe(404);
  });

  it("never writes a token to the log", () => {
    const log = sut.logs.raw.join("\n");
    for (const t of [admin, user.token]) expect(log).not.toContain(t);
  });
});

describe("who may call Check", () => {
  it("with EXT_AUTHZ_SECRET, only a caller sending it as x-ext-authz-secret metadata: others get a 403 denial (never a gRPC error) and a security event", async () => {
    const sut = await start({ EXT_AUTHZ_SECRET: SECRET });
    const envoy = envoyOf(sut);
    try {
      const admin = (await bootstrapAdmin(sut.service.deps, "admin@example.com", "cli")).token;
      for (const metadata of [{}, { "x-ext-authz-secret": "not-the-secret-0123456789" }] as Record<string, string>[]) {
        const answer = await envoy.check(bearer(admin), metadata);
        expect(answer.status?.code).toBe(grpc.status.PERMISSION_DENIED);
        expect(denied(answer).status?.code).toBe(403);
      }
      expect(sut.logs.lines.some((l) => l.security_event === "authentication_failed" && l.method === CHECK_METHOD)).toBe(true);
      expect(headersOf(ok(await envoy.check(bearer(admin), { "x-ext-authz-secret": SECRET })).headers)["x-auth-subject"]).toBe("admin@example.com");
      expect(sut.logs.lines.filter((l) => "ext_authz" in l)).toEqual([]);
    } finally {
      envoy.close();
    }
  });

  it("in staging, left at its default without a secret or mutual TLS, Check is not served and start-up says so at error level", async () => {
    const sut = await start({ TOKEN_ENVIRONMENT: "staging" });
    const envoy = envoyOf(sut);
    try {
      await expect(envoy.check({})).rejects.toMatchObject({ code: grpc.status.UNIMPLEMENTED });
      const lines = sut.logs.lines.filter((l) => l.ext_authz === "not_served");
      expect(lines).toHaveLength(1);
      expect(Number(lines[0]!.level)).toBe(50);
      expect(String(lines[0]!.msg)).toContain("EXT_AUTHZ_SECRET");
      expect(String(lines[0]!.msg)).toContain("EXT_AUTHZ_ENABLED=false");
    } finally {
      envoy.close();
    }
  });

  it("in staging or production, EXT_AUTHZ_ENABLED=true without protection refuses to start; with a secret it starts", () => {
    for (const environment of ["staging", "production"]) {
      expect(() => loadConfig({ TOKEN_ENVIRONMENT: environment, EXT_AUTHZ_ENABLED: "true" })).toThrow(ConfigError);
      expect(() => loadConfig({ TOKEN_ENVIRONMENT: environment, EXT_AUTHZ_ENABLED: "true" })).toThrow(/EXT_AUTHZ_ENABLED: Check must be protected/);
      expect(loadConfig({ TOKEN_ENVIRONMENT: environment, EXT_AUTHZ_ENABLED: "true", EXT_AUTHZ_SECRET: SECRET }).extAuthzEnabled).toBe(true);
    }
    expect(() => loadConfig({ EXT_AUTHZ_SECRET: "short" })).toThrow(/EXT_AUTHZ_SECRET=\(secret\)/);
    expect(() => loadConfig({ EXT_AUTHZ_HEADER: "bad header" })).toThrow(/EXT_AUTHZ_HEADER/);
  });

  it("reads the credential from the header EXT_AUTHZ_HEADER names", async () => {
    const sut = await start({ EXT_AUTHZ_HEADER: "X-Api-Token" });
    const envoy = envoyOf(sut);
    try {
      const admin = (await bootstrapAdmin(sut.service.deps, "admin@example.com", "cli")).token;
      expect(denied(await envoy.check(bearer(admin))).status?.code).toBe(401);
      const response = ok(await envoy.check({ "x-api-token": `Bearer ${admin}` }));
      expect(headersOf(response.headers)["x-auth-subject"]).toBe("admin@example.com");
      expect(response.headersToRemove).toEqual([]);
    } finally {
      envoy.close();
    }
  });
});

describe("Check over TLS", () => {
  it("in production with mutual TLS on the gRPC port, Check is served without a secret to a client with a certificate from the client CA", async () => {
    const sut = await start({ TOKEN_ENVIRONMENT: "production", TLS_CERT_FILE: pki.serverCert, TLS_KEY_FILE: pki.serverKey, TLS_CLIENT_CA_FILE: pki.caCert, TLS_PORTS: "grpc" });
    const ca = await pki.read(pki.caCert);
    const envoy = envoyOf(sut, grpc.credentials.createSsl(ca, await pki.read(pki.clientKey), await pki.read(pki.clientCert)));
    const stranger = envoyOf(sut, grpc.credentials.createSsl(ca, await pki.read(pki.strangerKey), await pki.read(pki.strangerCert)));
    try {
      const admin = (await bootstrapAdmin(sut.service.deps, "admin@example.com", "cli")).token;
      expect(headersOf(ok(await envoy.check(bearer(admin))).headers)["x-auth-subject"]).toBe("admin@example.com");
      await expect(stranger.check(bearer(admin))).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
      expect(sut.logs.lines.filter((l) => "ext_authz" in l)).toEqual([]);
    } finally {
      envoy.close();
      stranger.close();
    }
  });
});

describe("Check during a PostgreSQL outage", () => {
  it("answers a 503 denial with Retry-After, never a 401 and never a gRPC error, and recovers", async () => {
    const proxy = await startTcpProxy(5432);
    const url = new URL(db.url);
    url.port = String(proxy.port);
    const sut = await start({ DATABASE_URL: url.toString(), DATABASE_CONNECT_TIMEOUT: "500ms", DATABASE_STATEMENT_TIMEOUT: "1s" });
    const envoy = envoyOf(sut);
    try {
      const admin = (await bootstrapAdmin(sut.service.deps, "admin@example.com", "cli")).token;
      proxy.cut();
      const answer = await envoy.check(bearer(mintToken("development").token));
      expect(answer.status?.code).toBe(grpc.status.UNAVAILABLE);
      const response = denied(answer);
      expect(response.status?.code).toBe(503);
      expect(headersOf(response.headers)).toMatchObject({ "retry-after": "1", "cache-control": "no-store" });
      expect(headersOf(response.headers)["www-authenticate"]).toBeUndefined();
      expect(JSON.parse(response.body)).toEqual({ error: "temporarily_unavailable", error_description: "the token store is unavailable; try again" });
      proxy.restore();
      await expect
        .poll(async () => (await envoy.check(bearer(admin))).httpResponse.case, { timeout: 15_000, interval: 250 })
        .toBe("okResponse");
      expect(sut.logs.raw.join("\n")).not.toContain(admin);
    } finally {
      envoy.close();
      await proxy.close();
    }
  });
});
