import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import * as http from "node:http";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { SignJWT, createLocalJWKSet, jwtVerify, type JSONWebKeySet } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TokenService } from "../../gen/tokens/v1/token_service_pb.js";
import { bootstrapAdmin } from "../../src/domain/issue.js";
import { mintToken } from "../../src/domain/token-format.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { startTestService, TEST_KEK, type ServiceUnderTest } from "../support/service.js";
import { startTcpProxy } from "../support/tcp-proxy.js";

/**
 * The shipped Caddy example (examples/caddy/Caddyfile), used unchanged (it
 * reads its addresses and the secret from environment variables) and run by
 * a real Caddy (Debian's package; `npm test` installs it) in front of a tiny
 * application that echoes what it receives, with the token service's /auth
 * deciding. The service runs in staging on PostgreSQL behind a TCP proxy the
 * test can cut (a store outage), where /auth is served only to a
 * proxy that sends FORWARD_AUTH_SECRET: the example must send it. Caddy's
 * data and config directories point into a temporary directory, and the
 * example turns off the admin API and automatic HTTPS. Like the nginx test,
 * this fails rather than skips when caddy is missing.
 */

const LEGACY_SECRET = "legacy-hmac-secret-0123456789abcdef0123";
const PROXY_SECRET = "caddy-proxy-secret-0123456789";
const CADDYFILE = fileURLToPath(new URL("../../examples/caddy/Caddyfile", import.meta.url));

/** caddy on PATH, or where Debian puts it. */
function findCaddy(): string {
  for (const dir of [...(process.env.PATH ?? "").split(delimiter), "/usr/bin", "/usr/local/bin"]) {
    if (dir === "") continue;
    const candidate = join(dir, "caddy");
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  throw new Error("caddy is not installed: `npm test` (scripts/test-deps.sh) installs Debian's caddy (apt-get install -y caddy)");
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** What the application behind Caddy saw of one request. */
interface Seen {
  readonly method: string;
  readonly url: string;
  readonly headers: http.IncomingHttpHeaders;
}

describe("the Caddy forward_auth example, against a real Caddy", () => {
  let sut: ServiceUnderTest;
  let db: TestDatabase;
  let storeProxy: Awaited<ReturnType<typeof startTcpProxy>>;
  let connect: Client<typeof TokenService>;
  let admin: string;
  let dir: string;
  let caddy: ChildProcess | undefined;
  let caddyOutput = "";
  let app: http.Server;
  const seen: Seen[] = [];
  let base: string;

  beforeAll(async () => {
    const binary = findCaddy();
    db = await createTestDatabase();
    storeProxy = await startTcpProxy(5432);
    const databaseUrl = new URL(db.url);
    databaseUrl.port = String(storeProxy.port);
    sut = await startTestService({
      DATABASE_URL: databaseUrl.toString(),
      DATABASE_CONNECT_TIMEOUT: "500ms",
      DATABASE_STATEMENT_TIMEOUT: "1s",
      TOKEN_ENVIRONMENT: "staging",
      KEY_ENCRYPTION_KEY: TEST_KEK,
      LEGACY_JWT_HMAC_SECRET: LEGACY_SECRET,
      LEGACY_JWT_SUNSET_DATE: "2099-01-01",
      FORWARD_AUTH_SECRET: PROXY_SECRET,
      FORWARD_AUTH_BACKEND_JWT: "true",
    });
    // Staging prints no bootstrap token: make one as `tokenctl bootstrap` would.
    admin = (await bootstrapAdmin(sut.service.deps, "admin@example.com", "cli")).token;
    connect = createClient(TokenService, createConnectTransport({ baseUrl: `http://127.0.0.1:${sut.service.httpPort}`, httpVersion: "1.1" }));

    app = http.createServer((req, res) => {
      seen.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers });
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ hello: "from the app" }));
    });
    await new Promise<void>((resolve) => app.listen(0, "127.0.0.1", resolve));

    const port = await freePort();
    dir = await mkdtemp(join(tmpdir(), "caddy-example-"));
    // Caddy 2.6 keeps state under $HOME / XDG directories: keep it in the temporary directory.
    const env = {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOME: dir,
      XDG_DATA_HOME: join(dir, "data"),
      XDG_CONFIG_HOME: join(dir, "config"),
      CADDY_ADDRESS: `http://127.0.0.1:${port}`,
      CADDY_BIND: "127.0.0.1",
      TOKEN_SERVICE: `127.0.0.1:${sut.service.httpPort}`,
      UPSTREAM: `127.0.0.1:${(app.address() as net.AddressInfo).port}`,
      FORWARD_AUTH_SECRET: PROXY_SECRET,
    };
    caddy = spawn(binary, ["run", "--adapter", "caddyfile", "--config", CADDYFILE], { env, cwd: dir, stdio: ["ignore", "pipe", "pipe"] });
    caddy.stdout!.on("data", (chunk: Buffer) => (caddyOutput += chunk.toString()));
    caddy.stderr!.on("data", (chunk: Buffer) => (caddyOutput += chunk.toString()));
    base = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (caddy.exitCode !== null) throw new Error(`caddy exited with ${caddy.exitCode}: ${caddyOutput}`);
      try {
        await fetch(`${base}/`);
        break;
      } catch {
        if (Date.now() > deadline) throw new Error(`caddy did not start listening: ${caddyOutput}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
  });

  afterAll(async () => {
    if (caddy?.pid !== undefined && caddy.exitCode === null) {
      const exited = new Promise((resolve) => caddy!.once("exit", resolve));
      process.kill(caddy.pid, "SIGTERM");
      await exited;
    }
    await new Promise<void>((resolve) => (app ? app.close(() => resolve()) : resolve()));
    await sut?.service.stop();
    await storeProxy?.close();
    await db?.drop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const issue = async (scopes: string[], extra: { teams?: string[]; namespaces?: string[] } = {}) => {
    const issued = await connect.issueToken({ name: "via-caddy", subject: "user@example.com", scopes, ...extra }, { headers: { authorization: `Bearer ${admin}` } });
    return { token: issued.token, id: issued.info!.id };
  };
  const get = (path: string, headers: Record<string, string> = {}) => fetch(`${base}${path}`, { headers });
  const legacyJwt = () =>
    new SignJWT({ sub: "old@example.com", jti: "caddy-legacy", env: "staging", scopes: ["orders.read"], exp: Math.floor(Date.now() / 1000) + 600 })
      .setProtectedHeader({ alg: "HS256" })
      .sign(new TextEncoder().encode(LEGACY_SECRET));

  it("lets a valid token through to the application with the claims as X-Auth-* headers, and not the token or the secret", async () => {
    const { token, id } = await issue(["orders.read", "orders.write"], { teams: ["payments", "web"], namespaces: ["shop"] });
    const before = seen.length;
    const res = await get("/orders/42?page=1", { authorization: `Bearer ${token}` });
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ hello: "from the app" });
    expect(seen.length).toBe(before + 1);
    const request = seen.at(-1)!;
    expect(request.url).toBe("/orders/42?page=1");
    expect(request.headers).toMatchObject({
      "x-auth-subject": "user@example.com",
      "x-auth-scopes": "orders.read orders.write",
      "x-auth-teams": "payments,web",
      "x-auth-namespaces": "shop",
      "x-auth-is-admin": "false",
      "x-auth-token-id": id,
      "x-auth-token-kind": "opaque",
    });
    const jwks = createLocalJWKSet((await (await fetch(`http://127.0.0.1:${sut.service.httpPort}/.well-known/jwks.json`)).json()) as JSONWebKeySet);
    const { payload } = await jwtVerify(String(request.headers["x-auth-backend-jwt"]), jwks, { typ: "at+jwt" });
    expect(payload).toMatchObject({ sub: "user@example.com", token_id: id });
    expect(request.headers.authorization).toBeUndefined();
    expect(request.headers["x-forward-auth-secret"]).toBeUndefined();
  });

  it("is what gets the request through: the service refuses /auth to anyone without the proxy's secret", async () => {
    const { token } = await issue(["orders.read"]);
    const direct = await fetch(`http://127.0.0.1:${sut.service.httpPort}/auth`, { headers: { authorization: `Bearer ${token}` } });
    expect(direct.status).toBe(403);
    expect((await get("/", { authorization: `Bearer ${token}` })).status).toBe(200);
  });

  it("replaces X-Auth-* headers a client forges, including ones the answer does not carry", async () => {
    const { token } = await issue(["orders.read"]);
    const forged = { "x-auth-subject": "root@example.com", "x-auth-is-admin": "true", "x-auth-token-kind": "forged", "x-auth-deprecation": "forged", "x-auth-extra": "forged" };
    const res = await get("/", { authorization: `Bearer ${token}`, ...forged });
    expect(res.status).toBe(200);
    const headers = seen.at(-1)!.headers;
    expect(headers).toMatchObject({ "x-auth-subject": "user@example.com", "x-auth-is-admin": "false", "x-auth-token-kind": "opaque" });
    expect(headers["x-auth-deprecation"] ?? "").toBe("");
    expect(headers["x-auth-extra"]).toBeUndefined();

    // A legacy JWT's answer has no backend JWT: a forged one must not reach the application.
    const legacy = await get("/", { authorization: `Bearer ${await legacyJwt()}`, "x-auth-backend-jwt": "forged.jwt.value" });
    expect(legacy.status).toBe(200);
    expect(seen.at(-1)!.headers["x-auth-backend-jwt"] ?? "").toBe("");
  });

  it("refuses a request without a token with 401 and a bare Bearer challenge; the application never sees it", async () => {
    const before = seen.length;
    const res = await get("/orders");
    expect(res.status).toBe(401);
    expect(res.headers.get("www-authenticate")).toBe("Bearer");
    expect(seen.length).toBe(before);
  });

  it("refuses revoked, unknown and foreign-environment tokens with 401 and the reason in WWW-Authenticate", async () => {
    const { token: revoked } = await issue(["orders.read"]);
    await connect.revokeToken({ target: { case: "token", value: revoked }, reason: "caddy test" }, { headers: { authorization: `Bearer ${admin}` } });
    const cases: [string, string][] = [
      [revoked, "The token has been revoked."],
      [mintToken("staging").token, "The token is not recognised."],
      [mintToken("production").token, "Token environment mismatch: production token used in staging"],
    ];
    const before = seen.length;
    for (const [token, message] of cases) {
      const res = await get("/orders", { authorization: `Bearer ${token}` });
      expect(res.status).toBe(401);
      expect(res.headers.get("www-authenticate")).toBe(`Bearer error="invalid_token", error_description="${message}"`);
      expect(await res.text()).not.toContain(token);
    }
    expect(seen.length).toBe(before);
  });

  it("passes a legacy JWT with its claims and the deprecation notice to the application", async () => {
    const res = await get("/", { authorization: `Bearer ${await legacyJwt()}` });
    expect(res.status).toBe(200);
    expect(seen.at(-1)!.headers).toMatchObject({
      "x-auth-subject": "old@example.com",
      "x-auth-token-kind": "legacy_jwt",
      "x-auth-token-id": "caddy-legacy",
      "x-auth-deprecation": "JWT tokens are deprecated. Please migrate to API tokens.",
    });
  });

  it("writes no token to its output or the service's log", async () => {
    const { token } = await issue(["orders.read"]);
    expect((await get("/", { authorization: `Bearer ${token}` })).status).toBe(200);
    expect((await get("/", { authorization: `Bearer ${mintToken("staging").token}` })).status).toBe(401);
    expect(caddyOutput).not.toContain(token);
    expect(caddyOutput).not.toContain(PROXY_SECRET);
    expect(sut.logs.raw.join("\n")).not.toContain(token);
  });

  it("passes on the service's 503 with Retry-After, not a 401, while its store is away", async () => {
    const before = seen.length;
    storeProxy.cut();
    try {
      // A token the cache has never seen must go to the store.
      const unseen = mintToken("staging").token;
      const res = await get("/", { authorization: `Bearer ${unseen}` });
      expect(res.status).toBe(503);
      expect(res.headers.get("retry-after")).toBe("1");
      expect(res.headers.get("www-authenticate")).toBeNull();
      expect(seen.length).toBe(before);
    } finally {
      storeProxy.restore();
    }
  });

  it("answers 503 with Retry-After, not 401, when the token service is away", async () => {
    const { token } = await issue(["orders.read"]);
    const before = seen.length;
    await sut.service.stop();
    const res = await get("/", { authorization: `Bearer ${token}` });
    expect(res.status).toBe(503);
    expect(res.headers.get("retry-after")).toBe("1");
    expect(await res.json()).toEqual({ error: "temporarily_unavailable" });
    expect(seen.length).toBe(before);
    expect(caddyOutput).not.toContain(token);
  });
});
