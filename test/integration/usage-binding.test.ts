import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InactiveReason, TokenService, type IntrospectTokenResponse, type IssueTokenResponse, type ListTokensResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { IntrospectionClient } from "../../src/client/introspection-client.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

/**
 * Tokens bound to networks and to a rate limit of their own, end to end on
 * both stores: issued over gRPC, shown in TokenInfo and introspection
 * answers, refused from outside (gRPC `client_address`, forward auth's
 * `X-Forwarded-For` through TRUSTED_PROXIES), and limited (gRPC reason with
 * retry-after, forward auth 429 with Retry-After).
 */
describe.each(["PostgreSQL", "PGlite"] as const)("tokens bound to how they are used, on %s", (store) => {
  let db: TestDatabase | undefined;
  let svc: ServiceUnderTest;
  let client: ReturnType<typeof grpcClient>;
  let admin: string;
  let base: string;
  const auth = () => ({ authorization: `Bearer ${admin}` });
  const issue = (extra: object) => client.unary<IssueTokenResponse>("issueToken", { name: "bound", subject: "svc@example.com", ...extra }, auth());
  const introspect = (token: string, clientAddress = "") => client.unary<IntrospectTokenResponse>("introspectToken", { token, clientAddress }, auth());
  const forward = (token: string, xff?: string) => fetch(`${base}/auth`, { headers: { authorization: `Bearer ${token}`, ...(xff !== undefined ? { "x-forwarded-for": xff } : {}) } });

  beforeAll(async () => {
    // The test client is 127.0.0.1: trusted as the proxy, so /auth believes the X-Forwarded-For it sends.
    const env = { TRUSTED_PROXIES: "127.0.0.1/32" };
    if (store === "PostgreSQL") {
      db = await createTestDatabase();
      svc = await startTestService({ ...env, DATABASE_URL: db.url });
    } else {
      svc = await startTestService({ ...env, DATA_DIR: "memory://" });
    }
    admin = svc.bootstrapToken!;
    client = grpcClient(TokenService, `127.0.0.1:${svc.service.grpcPort}`);
    base = `http://127.0.0.1:${svc.service.httpPort}`;
  });

  afterAll(async () => {
    client?.close();
    await svc?.service.stop();
    await db?.drop();
  });

  it("stores and shows the networks and the limit (TokenInfo, ListTokens, introspection)", async () => {
    const issued = await issue({ allowedNetworks: ["192.0.2.0/24", "2001:db8::/32"], rateLimit: { requests: 100, window: { seconds: 60n, nanos: 0 } } });
    expect(issued.info!.allowedNetworks).toEqual(["192.0.2.0/24", "2001:db8::/32"]);
    expect(issued.info!.rateLimit).toMatchObject({ requests: 100, window: { seconds: 60n } });
    const listed = await client.unary<ListTokensResponse>("listTokens", { subject: "svc@example.com" }, auth());
    expect(listed.tokens.find((t) => t.id === issued.info!.id)!.allowedNetworks).toEqual(["192.0.2.0/24", "2001:db8::/32"]);
    const answer = await introspect(issued.token, "192.0.2.44");
    expect(answer).toMatchObject({ active: true, allowedNetworks: ["192.0.2.0/24", "2001:db8::/32"], rateLimit: { requests: 100 } });
  });

  it("refuses a use from outside its networks, or without an address, with a reason of its own; IPv6 too", async () => {
    const { token } = await issue({ allowedNetworks: ["192.0.2.0/24", "2001:db8::/32"] });
    expect((await introspect(token, "2001:db8:5::1")).active).toBe(true);
    for (const address of ["198.51.100.1", "2001:db9::1", ""]) {
      const answer = await introspect(token, address);
      expect(answer).toMatchObject({ active: false, reason: InactiveReason.NETWORK_NOT_ALLOWED });
      expect(answer.jti).toBe("");
    }
  });

  it("the Connect port answers the same: client_address, the reason and retry_after", async () => {
    const connect = createClient(TokenService, createConnectTransport({ baseUrl: base, httpVersion: "1.1" }));
    const headers = { authorization: `Bearer ${admin}` };
    const { token } = await connect.issueToken({ name: "c", subject: "svc@example.com", allowedNetworks: ["2001:db8::/32"], rateLimit: { requests: 1, window: { seconds: 3600n, nanos: 0 } } }, { headers });
    expect((await connect.introspectToken({ token, clientAddress: "2001:db9::1" }, { headers })).reason).toBe(InactiveReason.NETWORK_NOT_ALLOWED);
    expect((await connect.introspectToken({ token, clientAddress: "2001:db8::1" }, { headers })).active).toBe(true);
    const limited = await connect.introspectToken({ token, clientAddress: "2001:db8::1" }, { headers });
    expect(limited.reason).toBe(InactiveReason.TOKEN_RATE_LIMITED);
    expect(limited.retryAfter!.seconds).toBeGreaterThan(0n);
  });

  it("refuses bad input by field name and writes nothing", async () => {
    await expect(issue({ allowedNetworks: ["10.0.0.1/8"] })).rejects.toMatchObject({ code: 3, details: expect.stringContaining("allowed_networks[0]") });
    await expect(issue({ rateLimit: { requests: 0, window: { seconds: 60n, nanos: 0 } } })).rejects.toMatchObject({ code: 3, details: expect.stringContaining("rate_limit.requests") });
    await expect(issue({ rateLimit: { requests: 5 } })).rejects.toMatchObject({ code: 3, details: expect.stringContaining("rate_limit.window") });
    const { token } = await issue({});
    await expect(introspect(token, "not-an-address")).rejects.toMatchObject({ code: 3, details: expect.stringContaining("client_address") });
  });

  it("over gRPC, a token past its own limit is TOKEN_RATE_LIMITED with retry_after; unbound tokens are untouched", async () => {
    const { token } = await issue({ rateLimit: { requests: 2, window: { seconds: 3600n, nanos: 0 } } });
    const free = await issue({});
    expect((await introspect(token)).active).toBe(true);
    expect((await introspect(token)).active).toBe(true);
    const limited = await introspect(token);
    expect(limited).toMatchObject({ active: false, reason: InactiveReason.TOKEN_RATE_LIMITED });
    expect(Number(limited.retryAfter!.seconds)).toBeGreaterThan(0);
    for (let i = 0; i < 5; i++) expect((await introspect(free.token)).active).toBe(true);
  });

  it("the gateway client neither caches a bound token's answer nor its refusal", async () => {
    const gateway = new IntrospectionClient({ address: `127.0.0.1:${svc.service.grpcPort}`, callerToken: admin, stalenessMs: 600_000, heartbeatMs: 200 });
    try {
      const { token } = await issue({ allowedNetworks: ["192.0.2.0/24"], rateLimit: { requests: 2, window: { seconds: 3600n, nanos: 0 } } });
      expect((await gateway.introspect(token, "198.51.100.1")).reason).toBe(InactiveReason.NETWORK_NOT_ALLOWED);
      expect((await gateway.introspect(token, "192.0.2.1")).active).toBe(true);
      expect((await gateway.introspect(token, "192.0.2.1")).active).toBe(true);
      expect((await gateway.introspect(token, "192.0.2.1")).reason).toBe(InactiveReason.TOKEN_RATE_LIMITED);
    } finally {
      gateway.close();
    }
  });

  it("forward auth takes the client from X-Forwarded-For through the trusted proxy, right-most untrusted first", async () => {
    const { token } = await issue({ allowedNetworks: ["192.0.2.0/24"] });
    expect((await forward(token, "192.0.2.9")).status).toBe(200);
    // A client prepending an inside address cannot pass: the right-most untrusted entry is the client.
    expect((await forward(token, "192.0.2.9, 198.51.100.3")).status).toBe(401);
    // The trusted proxy's own address is skipped.
    expect((await forward(token, "192.0.2.9, 127.0.0.1")).status).toBe(200);
    // No header: the peer (the proxy itself) is the client, outside the networks.
    expect((await forward(token)).status).toBe(401);
    const refused = await forward(token, "198.51.100.3");
    expect(refused.headers.get("www-authenticate")).toContain("invalid_token");
  });

  it("forward auth refuses a token over its limit with 429 and Retry-After", async () => {
    const { token } = await issue({ rateLimit: { requests: 1, window: { seconds: 3600n, nanos: 0 } } });
    expect((await forward(token)).status).toBe(200);
    const limited = await forward(token);
    expect(limited.status).toBe(429);
    expect(Number(limited.headers.get("retry-after"))).toBeGreaterThan(0);
  });

  it("raises a security event for a use from outside", async () => {
    const { token, info } = await issue({ allowedNetworks: ["203.0.113.0/24"] });
    await introspect(token, "198.51.100.77");
    await expect
      .poll(async () => {
        const { events } = await client.unary<{ events: { type: string; tokenId: string }[] }>("listSecurityEvents", {}, auth());
        return events.some((e) => e.type === "token_network_denied" && e.tokenId === info!.id);
      }, { timeout: 15_000, interval: 200 })
      .toBe(true);
  });
});
