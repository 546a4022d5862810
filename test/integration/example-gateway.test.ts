/**
 * The example gateway (examples/gateway/gateway.ts) end to end: the real
 * service on PostgreSQL, the gateway client, the example HTTP proxy on
 * 127.0.0.1:0 and an upstream echo server that reports what reached it.
 */
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createGateway } from "../../examples/gateway/gateway.js";
import { TokenService, type IssueTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { IntrospectionClient, ServiceBusyError } from "../../src/client/index.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

/** The client's staleness bound in this test (its default). */
const STALENESS_MS = 2000;
/** Slack for one HTTP round trip through the gateway on a shared 2-core machine. */
const SLACK_MS = 1000;

interface Echo {
  readonly method: string;
  readonly url: string;
  readonly headers: http.IncomingHttpHeaders;
  readonly body: string;
}

async function listen(server: http.Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function close(server: http.Server): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

describe("the example gateway", () => {
  let db: TestDatabase;
  let sut: ServiceUnderTest;
  let stopped = false;
  let admin: ReturnType<typeof grpcClient>;
  let adminToken: string;
  let client: IntrospectionClient;
  let gateway: http.Server;
  let gatewayUrl: string;
  let upstream: http.Server;
  const seen: Echo[] = [];
  const auth = () => ({ authorization: `Bearer ${adminToken}` });

  beforeAll(async () => {
    db = await createTestDatabase();
    sut = await startTestService({ DATABASE_URL: db.url, REVOCATION_HEARTBEAT: "200ms" });
    adminToken = sut.bootstrapToken!;
    admin = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
    upstream = http.createServer((req, res) => {
      let body = "";
      req.setEncoding("utf8").on("data", (chunk: string) => (body += chunk));
      req.on("end", () => {
        const echo = { method: req.method!, url: req.url!, headers: req.headers, body };
        seen.push(echo);
        res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(echo));
      });
    });
    const upstreamUrl = await listen(upstream);
    client = new IntrospectionClient({ address: `127.0.0.1:${sut.service.grpcPort}`, callerToken: adminToken, stalenessMs: STALENESS_MS, heartbeatMs: 200, deadlineMs: 500 });
    await client.ready();
    gateway = createGateway({ tokens: client, upstream: upstreamUrl });
    gatewayUrl = await listen(gateway);
  });

  afterAll(async () => {
    if (gateway) await close(gateway);
    if (upstream) await close(upstream);
    client?.close();
    admin?.close();
    if (!stopped) await sut?.service.stop();
    await db?.drop();
  });

  const issue = (scopes = ["orders.read"]) => admin.unary<IssueTokenResponse>("issueToken", { name: "gw", subject: "alice@example.com", scopes }, auth());
  const get = (headers: Record<string, string> = {}, init: RequestInit = {}) => fetch(`${gatewayUrl}/orders/42?x=1`, { ...init, headers });

  it("challenges a request without credentials, and never forwards it", async () => {
    const before = seen.length;
    const res = await get();
    expect(res.status).toBe(401);
    expect(res.headers.get("www-authenticate")).toBe('Bearer realm="api"');
    const malformed = await get({ authorization: "Basic dXNlcjpwYXNz" });
    expect(malformed.status).toBe(400);
    expect(malformed.headers.get("www-authenticate")).toContain('error="invalid_request"');
    expect(seen.length).toBe(before);
  });

  it("forwards an active token's request with its claims, without the token or client-sent X-Auth-* headers", async () => {
    const { token, info } = await issue(["orders.read", "orders.write"]);
    const res = await get(
      { authorization: `Bearer ${token}`, "x-auth-subject": "mallory@example.com", "x-auth-admin": "true", "content-type": "text/plain", "x-request-mark": "m1" },
      { method: "POST", body: "hello upstream" },
    );
    expect(res.status).toBe(200);
    const echo = (await res.json()) as Echo;
    expect(echo).toMatchObject({ method: "POST", url: "/orders/42?x=1", body: "hello upstream" });
    expect(echo.headers).toMatchObject({ "x-auth-subject": "alice@example.com", "x-auth-scopes": "orders.read orders.write", "x-auth-token-id": info!.id, "x-request-mark": "m1" });
    expect(echo.headers.authorization).toBeUndefined();
    expect(echo.headers["x-auth-admin"]).toBeUndefined();
    expect(JSON.stringify(echo.headers)).not.toContain(token);
  });

  it("answers 401 for an unknown token, with an invalid_token challenge", async () => {
    const before = seen.length;
    const res = await get({ authorization: "Bearer cf-not-a-real-token-at-all" });
    expect(res.status).toBe(401);
    expect(res.headers.get("www-authenticate")).toMatch(/^Bearer realm="api", error="invalid_token"/);
    expect(seen.length).toBe(before);
  });

  it("answers 401 for a cached token once it is revoked, within the staleness bound", async () => {
    const { token } = await issue();
    expect((await get({ authorization: `Bearer ${token}` })).status).toBe(200);
    const hits = client.stats().hits;
    expect((await get({ authorization: `Bearer ${token}` })).status).toBe(200);
    expect(client.stats().hits).toBe(hits + 1); // served from the client's cache: no call to the service
    await admin.unary("revokeToken", { target: { case: "token", value: token } }, auth());
    await expect.poll(async () => (await get({ authorization: `Bearer ${token}` })).status, { timeout: STALENESS_MS + SLACK_MS, interval: 20 }).toBe(401);
    const res = await get({ authorization: `Bearer ${token}` });
    expect(res.headers.get("www-authenticate")).toMatch(/error="invalid_token", error_description="[^"]*revoked/i);
  });

  it("answers 503 with Retry-After when the service asks to back off", async () => {
    const busy = createGateway({ tokens: { introspect: () => Promise.reject(new ServiceBusyError(2500, false)) }, upstream: "http://127.0.0.1:9" });
    const url = await listen(busy);
    try {
      const res = await fetch(url, { headers: { authorization: "Bearer cf-anything" } });
      expect(res.status).toBe(503);
      expect(res.headers.get("retry-after")).toBe("3");
    } finally {
      await close(busy);
    }
  });

  it("answers 503 (never 401, and forwards nothing it cannot vouch for) when the service is unreachable", async () => {
    const cached = await issue();
    expect((await get({ authorization: `Bearer ${cached.token}` })).status).toBe(200);
    const fresh = await issue();
    await sut.service.stop();
    stopped = true;
    const before = seen.length;
    // A token the client never saw must be asked about, and cannot be.
    const res = await get({ authorization: `Bearer ${fresh.token}` });
    expect(res.status).toBe(503);
    expect(res.headers.get("retry-after")).toBe("1");
    expect(seen.length).toBe(before);
    // A cached one is served within the bound, then ages out and gets the same answer.
    await expect.poll(async () => (await get({ authorization: `Bearer ${cached.token}` })).status, { timeout: STALENESS_MS + SLACK_MS + 1000, interval: 50 }).toBe(503);
    const after = seen.length;
    expect((await get({ authorization: `Bearer ${cached.token}` })).status).toBe(503);
    expect(seen.length).toBe(after);
  });
});
