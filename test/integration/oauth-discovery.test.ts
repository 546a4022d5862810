import * as http from "node:http";
import * as net from "node:net";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from "jose";
import * as oidc from "openid-client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TokenService } from "../../gen/tokens/v1/token_service_pb.js";
import { loadConfig } from "../../src/config.js";
import { bootstrapAdmin } from "../../src/domain/issue.js";
import { mintToken } from "../../src/domain/token-format.js";
import { startTestService, TEST_KEK, type ServiceUnderTest } from "../support/service.js";

/**
 * RFC 8414 discovery and the RFC 7662 / RFC 7009 endpoints through a client
 * this project did not write: `openid-client` (panva) 6, used as its
 * documentation shows, with one concession: the test service speaks plain
 * HTTP, so every discovery passes `allowInsecureRequests` (in production the
 * issuer is https and the option goes away). `algorithm: "oauth2"` picks the
 * RFC 8414 location; the default is OpenID Connect discovery, which an
 * introspection service without an authorization endpoint does not serve.
 * Organised by outcome.
 */

const FORM = { "content-type": "application/x-www-form-urlencoded" };
const basic = (id: string, secret: string) => `Basic ${Buffer.from(`${id}:${secret}`).toString("base64")}`;
const insecure: oidc.DiscoveryRequestOptions = { algorithm: "oauth2", execute: [oidc.allowInsecureRequests] };

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A GET with a Host header of the test's choosing (fetch would not send a forged one). */
function getWithHost(port: number, path: string, host: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, path, headers: { host } }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (body += chunk));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

interface Issued {
  readonly token: string;
  readonly id: string;
}

/** A service, its admin, a gateway client that may introspect and revoke, and a way to issue more. */
async function setUp(env: Record<string, string>) {
  const sut = await startTestService({ DATA_DIR: "memory://", ...env });
  // Staging prints no bootstrap token: make one as `tokenctl bootstrap` would.
  const admin = sut.bootstrapToken ?? (await bootstrapAdmin(sut.service.deps, "admin@example.com", "cli")).token;
  const base = `http://127.0.0.1:${sut.service.httpPort}`;
  const connect: Client<typeof TokenService> = createClient(TokenService, createConnectTransport({ baseUrl: base, httpVersion: "1.1" }));
  const issue = async (scopes: string[], name = "client"): Promise<Issued> => {
    const issued = await connect.issueToken({ name, subject: `${name}@example.com`, scopes }, { headers: { authorization: `Bearer ${admin}` } });
    return { token: issued.token, id: issued.info!.id };
  };
  const gateway = await issue(["tokens.introspect", "tokens.revoke"], "gateway");
  return { sut, base, issue, gateway };
}

describe("OAuth discovery with PUBLIC_BASE_URL, in staging", () => {
  let sut: ServiceUnderTest;
  let base: string;
  let issue: (scopes: string[], name?: string) => Promise<Issued>;
  let gateway: Issued;

  beforeAll(async () => {
    // The issuer must be the URL clients discover from: give the service a port known beforehand.
    const port = await freePort();
    ({ sut, base, issue, gateway } = await setUp({
      TOKEN_ENVIRONMENT: "staging",
      KEY_ENCRYPTION_KEY: TEST_KEK,
      HTTP_PORT: String(port),
      PUBLIC_BASE_URL: `http://127.0.0.1:${port}/`,
      BACKEND_JWT_ALGORITHM: "EdDSA",
    }));
  });

  afterAll(async () => {
    await sut?.service.stop();
  });

  describe("discovery", () => {
    it("serves the RFC 8414 metadata built from PUBLIC_BASE_URL, with the configured RFC 9701 signing algorithm", async () => {
      const res = await fetch(`${base}/.well-known/oauth-authorization-server`);
      expect(res.status).toBe(200);
      expect(res.headers.get("content-type")).toBe("application/json");
      expect(await res.json()).toEqual({
        issuer: base,
        jwks_uri: `${base}/.well-known/jwks.json`,
        response_types_supported: [],
        grant_types_supported: [],
        introspection_endpoint: `${base}/oauth2/introspect`,
        introspection_endpoint_auth_methods_supported: ["client_secret_basic", "client_secret_post"],
        introspection_signing_alg_values_supported: ["EdDSA"],
        revocation_endpoint: `${base}/oauth2/revoke`,
        revocation_endpoint_auth_methods_supported: ["client_secret_basic", "client_secret_post"],
      });
    });

    it("works with openid-client's discovery() unchanged: the issuer matches the URL discovered from (RFC 8414 §3.3)", async () => {
      const config = await oidc.discovery(new URL(base), gateway.id, undefined, oidc.ClientSecretBasic(gateway.token), insecure);
      const metadata = config.serverMetadata();
      expect(metadata.issuer).toBe(base);
      expect(metadata.introspection_endpoint).toBe(`${base}/oauth2/introspect`);
      expect(metadata.revocation_endpoint).toBe(`${base}/oauth2/revoke`);
      expect(metadata.introspection_signing_alg_values_supported).toEqual(["EdDSA"]);
    });

    it("ignores the Host header: a forged one changes neither the issuer nor the endpoints", async () => {
      const res = await getWithHost(sut.service.httpPort, "/.well-known/oauth-authorization-server", "evil.example");
      expect(res.status).toBe(200);
      expect(res.body).not.toContain("evil.example");
      expect(JSON.parse(res.body)).toMatchObject({ issuer: base });
    });

    it("answers HEAD without a body and refuses POST with 405", async () => {
      const head = await fetch(`${base}/.well-known/oauth-authorization-server`, { method: "HEAD" });
      expect(head.status).toBe(200);
      expect(await head.text()).toBe("");
      const post = await fetch(`${base}/.well-known/oauth-authorization-server`, { method: "POST" });
      expect(post.status).toBe(405);
      expect(post.headers.get("allow")).toBe("GET, HEAD");
    });
  });

  describe("introspection and revocation through openid-client", () => {
    for (const [method, auth] of [
      ["client_secret_basic", oidc.ClientSecretBasic],
      ["client_secret_post", oidc.ClientSecretPost],
    ] as const) {
      it(`introspects with ${method}`, async () => {
        const user = await issue(["orders.read"], `user-${method.slice(-4)}`);
        const config = await oidc.discovery(new URL(base), gateway.id, undefined, auth(gateway.token), insecure);
        const answer = await oidc.tokenIntrospection(config, user.token);
        expect(answer).toMatchObject({ active: true, sub: `user-${method.slice(-4)}@example.com`, jti: user.id, scope: "orders.read", token_type: "Bearer" });
        const unknown = await oidc.tokenIntrospection(config, mintToken("staging").token);
        expect(unknown).toEqual({ active: false });
      });

      it(`revokes with ${method}`, async () => {
        const user = await issue(["orders.read"], `revoked-${method.slice(-4)}`);
        const config = await oidc.discovery(new URL(base), gateway.id, undefined, auth(gateway.token), insecure);
        await oidc.tokenRevocation(config, user.token);
        expect(await oidc.tokenIntrospection(config, user.token)).toEqual({ active: false });
      });
    }

    it("is openid-client's default when given a client secret: client_secret_post", async () => {
      const user = await issue(["orders.read"], "default-auth");
      const config = await oidc.discovery(new URL(base), gateway.id, gateway.token, undefined, insecure);
      expect((await oidc.tokenIntrospection(config, user.token)).active).toBe(true);
    });

    it("gets an RFC 9701 signed answer, checked by openid-client with the advertised algorithm and the JWKS", async () => {
      const user = await issue(["orders.read"], "signed");
      const discovered = await oidc.discovery(new URL(base), gateway.id, undefined, oidc.ClientSecretPost(gateway.token), insecure);
      const [alg] = discovered.serverMetadata().introspection_signing_alg_values_supported!;
      expect(alg).toBe("EdDSA");
      // Asking for the signed form (client metadata), and verifying its signature against jwks_uri.
      const config = await oidc.discovery(new URL(base), gateway.id, { introspection_signed_response_alg: alg! }, oidc.ClientSecretPost(gateway.token), insecure);
      oidc.enableNonRepudiationChecks(config);
      const answer = await oidc.tokenIntrospection(config, user.token);
      expect(answer).toMatchObject({ active: true, sub: "signed@example.com", jti: user.id });

      // The same answer by hand: signed with the advertised algorithm, iss is the issuer, aud the client.
      const res = await fetch(`${base}/oauth2/introspect`, {
        method: "POST",
        headers: { ...FORM, accept: "application/token-introspection+jwt" },
        body: new URLSearchParams({ token: user.token, client_id: gateway.id, client_secret: gateway.token }),
      });
      const jwt = await res.text();
      expect(decodeProtectedHeader(jwt)).toMatchObject({ alg, typ: "token-introspection+jwt" });
      const { payload } = await jwtVerify(jwt, createRemoteJWKSet(new URL(discovered.serverMetadata().jwks_uri!)), {
        algorithms: [alg!],
        issuer: base,
        audience: gateway.id,
        typ: "token-introspection+jwt",
      });
      expect(payload.token_introspection).toMatchObject({ active: true, jti: user.id });
    });
  });

  describe("refused client authentication", () => {
    const introspect = (body: Record<string, string>, headers: Record<string, string> = {}) =>
      fetch(`${base}/oauth2/introspect`, { method: "POST", headers: { ...FORM, ...headers }, body: new URLSearchParams(body) });

    it("refuses two authentication methods in one request with 400 invalid_request (RFC 6749 §2.3), echoing neither", async () => {
      const user = await issue(["orders.read"], "two-methods");
      // Through openid-client, with a client authentication that sends both.
      const both: oidc.ClientAuth = (_as, client, body, headers) => {
        body.set("client_id", client.client_id);
        body.set("client_secret", gateway.token);
        headers.set("authorization", basic(gateway.id, gateway.token));
      };
      const config = await oidc.discovery(new URL(base), gateway.id, undefined, both, insecure);
      const error = await oidc.tokenIntrospection(config, user.token).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(oidc.ResponseBodyError);
      expect(error).toMatchObject({ status: 400, error: "invalid_request" });

      for (const headers of [{ authorization: basic(gateway.id, gateway.token) }, { authorization: `Bearer ${gateway.token}` }]) {
        for (const revoke of [false, true]) {
          const res = await fetch(`${base}/oauth2/${revoke ? "revoke" : "introspect"}`, {
            method: "POST",
            headers: { ...FORM, ...headers },
            body: new URLSearchParams({ token: user.token, client_id: gateway.id, client_secret: gateway.token }),
          });
          expect(res.status).toBe(400);
          const text = await res.text();
          expect(JSON.parse(text)).toMatchObject({ error: "invalid_request" });
          expect(JSON.parse(text).error_description).toContain("one client authentication method");
          expect(text).not.toContain(gateway.token);
          expect(text).not.toContain(user.token);
        }
      }
      // Not revoked by the refused requests.
      expect((await introspect({ token: user.token, client_id: gateway.id, client_secret: gateway.token }).then((r) => r.json())) as object).toMatchObject({ active: true });
    });

    it("refuses a wrong secret, another token's client id, a missing client_id or a malformed one with 401 invalid_client", async () => {
      const user = await issue(["orders.read"], "wrong-secret");
      const other = await issue(["tokens.introspect"], "other-client");
      const wrong = mintToken("staging").token;
      const config = await oidc.discovery(new URL(base), gateway.id, undefined, oidc.ClientSecretPost(wrong), insecure);
      // A 401 with a challenge: openid-client reports the challenge (RFC 6749 §5.2 asks for one on 401).
      for (const call of [oidc.tokenIntrospection, oidc.tokenRevocation]) {
        const error = await call(config, user.token).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(oidc.WWWAuthenticateChallengeError);
        expect(error).toMatchObject({ status: 401 });
        expect((error as oidc.WWWAuthenticateChallengeError).cause[0]).toMatchObject({ scheme: "basic", parameters: { realm: "token-introspection" } });
      }

      const cases: Record<string, string>[] = [
        { client_id: gateway.id, client_secret: wrong },
        { client_id: other.id, client_secret: gateway.token },
        { client_secret: gateway.token },
        { client_id: "not-a-uuid", client_secret: gateway.token },
        { client_id: gateway.id, client_secret: "" },
        { client_id: gateway.id },
      ];
      for (const credentials of cases) {
        const res = await introspect({ token: user.token, ...credentials });
        expect(res.status, JSON.stringify(Object.keys(credentials))).toBe(401);
        expect(res.headers.get("www-authenticate")).toBe('Basic realm="token-introspection"');
        const text = await res.text();
        expect(JSON.parse(text)).toMatchObject({ error: "invalid_client" });
        for (const secret of [gateway.token, wrong, user.token]) expect(text).not.toContain(secret);
      }
      expect(sut.logs.raw.join("\n")).not.toContain(gateway.token);
      expect(sut.logs.raw.join("\n")).not.toContain(wrong);
    });

    it("refuses a client_id beside the Authorization header that names another client with 401", async () => {
      const user = await issue(["orders.read"], "named-other");
      const other = await issue(["tokens.introspect"], "named-client");
      const res = await introspect({ token: user.token, client_id: other.id }, { authorization: basic(gateway.id, gateway.token) });
      expect(res.status).toBe(401);
      // Naming the same client is fine (RFC 6749 §3.2.1 lets a client name itself).
      const same = await introspect({ token: user.token, client_id: gateway.id }, { authorization: basic(gateway.id, gateway.token) });
      expect(await same.json()).toMatchObject({ active: true });
    });

    it("refuses repeated client_id or client_secret with 400 invalid_request", async () => {
      for (const name of ["client_id", "client_secret"]) {
        const body = new URLSearchParams({ token: mintToken("staging").token, client_id: gateway.id, client_secret: gateway.token });
        body.append(name, name === "client_id" ? gateway.id : gateway.token);
        const res = await fetch(`${base}/oauth2/introspect`, { method: "POST", headers: FORM, body });
        expect(res.status).toBe(400);
        const text = await res.text();
        expect(JSON.parse(text)).toMatchObject({ error: "invalid_request", error_description: `${name}: must be sent at most once` });
        expect(text).not.toContain(gateway.token);
      }
    });
  });
});

describe("OAuth discovery without PUBLIC_BASE_URL in staging", () => {
  let sut: ServiceUnderTest;
  let base: string;
  let gateway: Issued;
  let issue: (scopes: string[], name?: string) => Promise<Issued>;

  beforeAll(async () => {
    ({ sut, base, gateway, issue } = await setUp({ TOKEN_ENVIRONMENT: "staging", KEY_ENCRYPTION_KEY: TEST_KEK }));
  });

  afterAll(async () => {
    await sut?.service.stop();
  });

  it("serves no metadata (404 naming the key), warns at start-up, and takes nothing from the Host header", async () => {
    const res = await fetch(`${base}/.well-known/oauth-authorization-server`);
    expect(res.status).toBe(404);
    expect(await res.json()).toMatchObject({ error: "not_found", error_description: expect.stringContaining("PUBLIC_BASE_URL") });
    expect((await getWithHost(sut.service.httpPort, "/.well-known/oauth-authorization-server", `127.0.0.1:${sut.service.httpPort}`)).status).toBe(404);
    expect(sut.logs.lines.some((l) => l.level === 40 && l.oauth_metadata === "not_served" && String(l.msg).includes("PUBLIC_BASE_URL"))).toBe(true);
    await expect(oidc.discovery(new URL(base), gateway.id, gateway.token, undefined, insecure)).rejects.toThrow();
  });

  it("still introspects with client_secret_post, and signs RFC 9701 answers with the backend JWT issuer as before", async () => {
    const user = await issue(["orders.read"], "no-metadata");
    const res = await fetch(`${base}/oauth2/introspect`, {
      method: "POST",
      headers: { ...FORM, accept: "application/token-introspection+jwt" },
      body: new URLSearchParams({ token: user.token, client_id: gateway.id, client_secret: gateway.token }),
    });
    expect(res.status).toBe(200);
    const { payload } = await jwtVerify(await res.text(), createRemoteJWKSet(new URL(`${base}/.well-known/jwks.json`)), { issuer: "cf-token-service", audience: gateway.id });
    expect(payload.token_introspection).toMatchObject({ active: true });
  });
});

describe("OAuth discovery in development without PUBLIC_BASE_URL", () => {
  let sut: ServiceUnderTest;
  let base: string;
  let gateway: Issued;
  let issue: (scopes: string[], name?: string) => Promise<Issued>;

  beforeAll(async () => {
    ({ sut, base, gateway, issue } = await setUp({}));
  });

  afterAll(async () => {
    await sut?.service.stop();
  });

  it("uses the listen address as the issuer, so discovery and signed answers work locally with no configuration", async () => {
    const user = await issue(["orders.read"], "dev-user");
    const config = await oidc.discovery(new URL(base), gateway.id, { introspection_signed_response_alg: "ES256" }, oidc.ClientSecretBasic(gateway.token), insecure);
    expect(config.serverMetadata()).toMatchObject({ issuer: base, introspection_signing_alg_values_supported: ["ES256"] });
    oidc.enableNonRepudiationChecks(config);
    expect(await oidc.tokenIntrospection(config, user.token)).toMatchObject({ active: true, sub: "dev-user@example.com" });
  });

  it("ignores a forged Host header there too", async () => {
    const res = await getWithHost(sut.service.httpPort, "/.well-known/oauth-authorization-server", "evil.example:443");
    expect(res.status).toBe(200);
    expect(res.body).not.toContain("evil.example");
    expect(JSON.parse(res.body)).toMatchObject({ issuer: base });
  });
});

describe("PUBLIC_BASE_URL validation", () => {
  it("accepts an http(s) URL and drops a trailing slash", () => {
    expect(loadConfig({ PUBLIC_BASE_URL: "https://tokens.example.com/" }).publicBaseUrl).toBe("https://tokens.example.com");
    expect(loadConfig({ PUBLIC_BASE_URL: "http://127.0.0.1:8080" }).publicBaseUrl).toBe("http://127.0.0.1:8080");
  });

  it("refuses a query, a fragment, credentials, another scheme, and http in production", () => {
    for (const bad of ["https://tokens.example.com/?a=1", "https://tokens.example.com/#x", "https://user:pw@tokens.example.com", "ftp://tokens.example.com", "tokens.example.com"]) {
      expect(() => loadConfig({ PUBLIC_BASE_URL: bad }), bad).toThrow(/PUBLIC_BASE_URL/);
    }
    expect(() => loadConfig({ PUBLIC_BASE_URL: "https://user:hunter2@tokens.example.com" })).toThrow(/^(?![\s\S]*hunter2)/);
    expect(() => loadConfig({ TOKEN_ENVIRONMENT: "production", KEY_ENCRYPTION_KEY: TEST_KEK, PUBLIC_BASE_URL: "http://tokens.example.com" })).toThrow(/PUBLIC_BASE_URL: must be an https URL in production/);
    expect(loadConfig({ TOKEN_ENVIRONMENT: "production", KEY_ENCRYPTION_KEY: TEST_KEK, PUBLIC_BASE_URL: "https://tokens.example.com" }).publicBaseUrl).toBe("https://tokens.example.com");
  });
});
