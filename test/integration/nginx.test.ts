import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import * as http from "node:http";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { SignJWT, createLocalJWKSet, jwtVerify, type JSONWebKeySet } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TokenService } from "../../gen/tokens/v1/token_service_pb.js";
import { bootstrapAdmin } from "../../src/domain/issue.js";
import { mintToken } from "../../src/domain/token-format.js";
import { startTestService, TEST_KEK, type ServiceUnderTest } from "../support/service.js";

/**
 * The shipped nginx example (examples/nginx/nginx.conf), rendered with real
 * ports and run by a real nginx (Debian's package; `npm test` installs it) in
 * front of a tiny application that echoes what it receives, with the token
 * service's /auth deciding. The service runs in staging, where /auth is
 * served only to a proxy that sends FORWARD_AUTH_SECRET: the example must
 * send it. Like the PostgreSQL tests, this fails rather than skips when nginx
 * is missing.
 */

const LEGACY_SECRET = "legacy-hmac-secret-0123456789abcdef0123";
const PROXY_SECRET = "nginx-proxy-secret-0123456789";

/** nginx on PATH, or where Debian puts it (/usr/sbin is not on every user's PATH). */
function findNginx(): string {
  for (const dir of [...(process.env.PATH ?? "").split(delimiter), "/usr/sbin", "/usr/local/sbin"]) {
    if (dir === "") continue;
    const candidate = join(dir, "nginx");
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  throw new Error("nginx is not installed: `npm test` (scripts/test-deps.sh) installs Debian's nginx-light (apt-get install -y nginx-light)");
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** What the application behind nginx saw of one request. */
interface Seen {
  readonly method: string;
  readonly url: string;
  readonly headers: http.IncomingHttpHeaders;
}

describe("the nginx auth_request example, against a real nginx", () => {
  let sut: ServiceUnderTest;
  let connect: Client<typeof TokenService>;
  let admin: string;
  let dir: string;
  let nginx: ChildProcess | undefined;
  let nginxOutput = "";
  let app: http.Server;
  const seen: Seen[] = [];
  let base: string;

  beforeAll(async () => {
    const binary = findNginx();
    sut = await startTestService({
      DATA_DIR: "memory://",
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

    // The example is the template: only its placeholders change.
    const port = await freePort();
    dir = await mkdtemp(join(tmpdir(), "nginx-example-"));
    const template = await readFile(new URL("../../examples/nginx/nginx.conf", import.meta.url), "utf8");
    const config = template
      .replaceAll("{{LISTEN}}", `127.0.0.1:${port}`)
      .replaceAll("{{TOKEN_SERVICE}}", `127.0.0.1:${sut.service.httpPort}`)
      .replaceAll("{{UPSTREAM}}", `127.0.0.1:${(app.address() as net.AddressInfo).port}`)
      .replaceAll("{{FORWARD_AUTH_SECRET}}", PROXY_SECRET);
    expect(config).not.toContain("{{");
    await writeFile(join(dir, "nginx.conf"), config);

    nginx = spawn(binary, ["-p", `${dir}/`, "-c", join(dir, "nginx.conf"), "-e", join(dir, "error.log"), "-g", "daemon off;"], { stdio: ["ignore", "pipe", "pipe"] });
    nginx.stdout!.on("data", (chunk: Buffer) => (nginxOutput += chunk.toString()));
    nginx.stderr!.on("data", (chunk: Buffer) => (nginxOutput += chunk.toString()));
    base = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (nginx.exitCode !== null) throw new Error(`nginx exited with ${nginx.exitCode}: ${nginxOutput}${await readFile(join(dir, "error.log"), "utf8").catch(() => "")}`);
      try {
        await fetch(`${base}/`);
        break;
      } catch {
        if (Date.now() > deadline) throw new Error(`nginx did not start listening: ${nginxOutput}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
  });

  afterAll(async () => {
    if (nginx?.pid !== undefined && nginx.exitCode === null) {
      const exited = new Promise((resolve) => nginx!.once("exit", resolve));
      process.kill(nginx.pid, "SIGTERM");
      await exited;
    }
    await new Promise<void>((resolve) => (app ? app.close(() => resolve()) : resolve()));
    await sut?.service.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const issue = async (scopes: string[], extra: { teams?: string[]; namespaces?: string[] } = {}) => {
    const issued = await connect.issueToken({ name: "via-nginx", subject: "user@example.com", scopes, ...extra }, { headers: { authorization: `Bearer ${admin}` } });
    return { token: issued.token, id: issued.info!.id };
  };
  const get = (path: string, headers: Record<string, string> = {}) => fetch(`${base}${path}`, { headers });

  it("lets a valid token through to the application with the claims as X-Auth-* headers, and not the token", async () => {
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
    expect(res.headers.get("deprecation")).toBeNull();
  });

  it("is what gets the request through: the service refuses /auth to anyone without the proxy's secret", async () => {
    const { token } = await issue(["orders.read"]);
    const direct = await fetch(`http://127.0.0.1:${sut.service.httpPort}/auth`, { headers: { authorization: `Bearer ${token}` } });
    expect(direct.status).toBe(403);
    expect((await get("/", { authorization: `Bearer ${token}` })).status).toBe(200);
  });

  it("replaces X-Auth-* headers a client forges", async () => {
    const { token } = await issue(["orders.read"]);
    const res = await get("/", { authorization: `Bearer ${token}`, "x-auth-subject": "root@example.com", "x-auth-is-admin": "true", "x-auth-token-kind": "forged" });
    expect(res.status).toBe(200);
    expect(seen.at(-1)!.headers).toMatchObject({ "x-auth-subject": "user@example.com", "x-auth-is-admin": "false", "x-auth-token-kind": "opaque" });
  });

  it("refuses a request without a token with 401 and a bare Bearer challenge; the application never sees it", async () => {
    const before = seen.length;
    const res = await get("/orders");
    expect(res.status).toBe(401);
    expect(res.headers.get("www-authenticate")).toBe("Bearer");
    expect(await res.json()).toEqual({ error: "unauthorized" });
    expect(seen.length).toBe(before);
  });

  it("refuses revoked, unknown and foreign-environment tokens with 401 and the reason in WWW-Authenticate", async () => {
    const { token: revoked } = await issue(["orders.read"]);
    await connect.revokeToken({ target: { case: "token", value: revoked }, reason: "nginx test" }, { headers: { authorization: `Bearer ${admin}` } });
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
    }
    expect(seen.length).toBe(before);
  });

  it("passes a legacy JWT with its claims, and the deprecation headers to the client", async () => {
    // Staging requires the env claim (LEGACY_JWT_REQUIRE_ENV defaults to true there).
    const jwt = await new SignJWT({ sub: "old@example.com", jti: "nginx-legacy", env: "staging", scopes: ["orders.read"], exp: Math.floor(Date.now() / 1000) + 600 })
      .setProtectedHeader({ alg: "HS256" })
      .sign(new TextEncoder().encode(LEGACY_SECRET));
    const res = await get("/", { authorization: `Bearer ${jwt}` });
    expect(res.status).toBe(200);
    expect(seen.at(-1)!.headers).toMatchObject({ "x-auth-subject": "old@example.com", "x-auth-token-kind": "legacy_jwt", "x-auth-token-id": "nginx-legacy" });
    expect(res.headers.get("x-auth-deprecation")).toBe("JWT tokens are deprecated. Please migrate to API tokens.");
    expect(res.headers.get("sunset")).toBe("Thu, 01 Jan 2099 00:00:00 GMT");
    expect(res.headers.get("deprecation")).toMatch(/^@\d+$/);
    expect(res.headers.get("link")).toContain('rel="deprecation"');
  });

  it("writes no token to its access log or the service's log", async () => {
    const { token } = await issue(["orders.read"]);
    expect((await get("/", { authorization: `Bearer ${token}` })).status).toBe(200);
    // nginx writes its access log line once the response is sent.
    await new Promise((resolve) => setTimeout(resolve, 100));
    const accessLog = await readFile(join(dir, "access.log"), "utf8");
    expect(accessLog).toContain("GET / HTTP/1.1");
    expect(accessLog).not.toContain(token);
    expect(sut.logs.raw.join("\n")).not.toContain(token);
  });

  it("answers 503 with Retry-After, not 401, when the token service is away", async () => {
    const { token } = await issue(["orders.read"]);
    await sut.service.stop();
    const res = await get("/", { authorization: `Bearer ${token}` });
    expect(res.status).toBe(503);
    expect(res.headers.get("retry-after")).toBe("1");
    expect(await res.json()).toEqual({ error: "temporarily_unavailable" });
  });
});
