import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InactiveReason, TokenService, type IssueTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { IntrospectionClient } from "../../src/client/introspection-client.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";
import { startTcpProxy } from "../support/tcp-proxy.js";

/** The gateway client library against the real service on PostgreSQL. */
/** Every case runs with both transports: pushed (LISTEN/NOTIFY) and polled (the revocation log). */
describe.each(["notify", "poll"] as const)("the introspection client library (REVOCATION_TRANSPORT=%s)", (transport) => {
  let db: TestDatabase;
  let sut: ServiceUnderTest;
  let admin: ReturnType<typeof grpcClient>;
  let adminToken: string;
  const auth = () => ({ authorization: `Bearer ${adminToken}` });

  beforeAll(async () => {
    db = await createTestDatabase();
    sut = await startTestService({ DATABASE_URL: db.url, REVOCATION_HEARTBEAT: "200ms", REVOCATION_TRANSPORT: transport });
    adminToken = sut.bootstrapToken!;
    admin = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
  });

  afterAll(async () => {
    admin?.close();
    await sut?.service.stop();
    await db?.drop();
  });

  const issue = () => admin.unary<IssueTokenResponse>("issueToken", { name: "c", subject: "client@example.com", scopes: ["orders.read"] }, auth());

  it("answers repeat introspections from its cache, and a revocation evicts it through the stream", async () => {
    // Staleness set far out: only the pushed revocation can explain a prompt "revoked".
    const client = new IntrospectionClient({ address: `127.0.0.1:${sut.service.grpcPort}`, callerToken: adminToken, stalenessMs: 600_000, heartbeatMs: 200 });
    try {
      await client.ready();
      const { token } = await issue();
      const first = await client.introspect(token);
      expect(first).toMatchObject({ active: true, sub: "client@example.com", scope: "orders.read" });
      const before = client.stats();
      const again = await client.introspect(token);
      expect(again).toBe(first); // the very same answer object: no network hop
      expect(client.stats().hits).toBe(before.hits + 1);

      await admin.unary("revokeToken", { target: { case: "token", value: token } }, auth());
      await expect.poll(async () => (await client.introspect(token)).reason, { timeout: 5_000, interval: 5 }).toBe(InactiveReason.REVOKED);
    } finally {
      client.close();
    }
  });

  it("stops trusting its cache when the stream stalls, and recovers when it is back", async () => {
    const proxy = await startTcpProxy(sut.service.grpcPort);
    const client = new IntrospectionClient({ address: `127.0.0.1:${proxy.port}`, callerToken: adminToken, stalenessMs: 1000, heartbeatMs: 200, deadlineMs: 500 });
    try {
      await client.ready();
      const { token } = await issue();
      expect((await client.introspect(token)).active).toBe(true);
      proxy.cut(); // the stream and every call to the service are cut
      // Within the bound the cached answer may still serve; past it the client must ask the service, which it cannot reach.
      await expect.poll(async () => client.introspect(token).then(() => "cached", (e: { code?: number }) => `error ${e.code}`), { timeout: 10_000, interval: 100 }).toMatch(/^error/);
      await expect.poll(() => client.stats().streaming, { timeout: 5_000 }).toBe(false);

      proxy.restore();
      await expect.poll(async () => client.introspect(token).then((a) => a.active, () => "error"), { timeout: 15_000, interval: 200 }).toBe(true);
      await expect.poll(() => client.stats().streaming, { timeout: 10_000 }).toBe(true);
    } finally {
      client.close();
      await proxy.close();
    }
  });

  it("notices a silent stall (nothing flows, the connection stays open) by the missing heartbeats", async () => {
    const proxy = await startTcpProxy(sut.service.grpcPort);
    const client = new IntrospectionClient({ address: `127.0.0.1:${proxy.port}`, callerToken: adminToken, stalenessMs: 1000, heartbeatMs: 200, deadlineMs: 500 });
    try {
      await client.ready();
      const { token } = await issue();
      const answer = await client.introspect(token);
      proxy.freeze();
      // Right after the stall the answer is still fresh enough to serve from the cache.
      expect(await client.introspect(token)).toBe(answer);
      // Once no heartbeat has confirmed it for the staleness bound, the client asks the service (and times out).
      await expect.poll(async () => client.introspect(token).then(() => "cached", (e: { code?: number }) => `error ${e.code}`), { timeout: 10_000, interval: 100 }).toMatch(/^error/);
      await expect.poll(() => client.stats().streaming, { timeout: 5_000 }).toBe(false);
      proxy.restore();
      await expect.poll(async () => client.introspect(token).then((a) => a.active, () => "error"), { timeout: 15_000, interval: 200 }).toBe(true);
    } finally {
      client.close();
      await proxy.close();
    }
  });

  it("resumes its stream from its last position after a break: evicts what was revoked meanwhile, keeps the rest", async () => {
    const proxy = await startTcpProxy(sut.service.grpcPort);
    const client = new IntrospectionClient({ address: `127.0.0.1:${proxy.port}`, callerToken: adminToken, stalenessMs: 1000, heartbeatMs: 200, deadlineMs: 500 });
    try {
      await client.ready();
      const revoked = await issue();
      const kept = await issue();
      expect((await client.introspect(revoked.token)).active).toBe(true);
      expect((await client.introspect(kept.token)).active).toBe(true);
      proxy.cut();
      await expect.poll(() => client.stats().streaming, { timeout: 5_000 }).toBe(false);
      const before = sut.service.deps.revocations.position;
      await admin.unary("revokeToken", { target: { case: "token", value: revoked.token } }, auth());
      await expect.poll(() => sut.service.deps.revocations.position, { timeout: 5_000 }).toBeGreaterThan(before);
      const target = sut.service.deps.revocations.position;
      proxy.restore();
      // The resumed stream brings the revocation missed while cut, and then heartbeats again.
      await expect.poll(() => (client.stats().position ?? 0) >= target && client.stats().streaming, { timeout: 15_000, interval: 50 }).toBe(true);
      // The other answer was not forgotten: served from the cache, no call to the service.
      const misses = client.stats().misses;
      expect((await client.introspect(kept.token)).active).toBe(true);
      expect(client.stats().misses).toBe(misses);
      expect((await client.introspect(revoked.token)).reason).toBe(InactiveReason.REVOKED);
    } finally {
      client.close();
      await proxy.close();
    }
  });

  it("refuses to watch without the introspect scope", async () => {
    const weak = await admin.unary<IssueTokenResponse>("issueToken", { name: "weak", subject: "weak@example.com", scopes: ["orders.read"] }, auth());
    const client = new IntrospectionClient({ address: `127.0.0.1:${sut.service.grpcPort}`, callerToken: weak.token, heartbeatMs: 200 });
    try {
      await expect(client.introspect(weak.token)).rejects.toMatchObject({ code: 7 }); // PERMISSION_DENIED
      expect(client.stats().streaming).toBe(false);
    } finally {
      client.close();
    }
  });
});
