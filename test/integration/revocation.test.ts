import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InactiveReason, TokenService, type IntrospectTokenResponse, type IssueTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";
import { KyselyRevocationLog } from "../../src/storage/revocation-log.js";
import { startTcpProxy } from "../support/tcp-proxy.js";

/**
 * Two replicas on one PostgreSQL: a revocation on one reaches the other's
 * cache by LISTEN/NOTIFY (the staleness bound is set far out, so nothing but
 * the push can explain a prompt answer), and losing the channel degrades to
 * the staleness bound, then recovers by itself.
 */
/** Every propagation case runs with both transports: pushed (LISTEN/NOTIFY) and polled (the revocation log). */
const TRANSPORTS = ["notify", "poll"] as const;

describe.each(TRANSPORTS)("revocation across replicas (REVOCATION_TRANSPORT=%s)", (transport) => {
  let db: TestDatabase;
  let a: ServiceUnderTest;
  let b: ServiceUnderTest;
  let clientA: ReturnType<typeof grpcClient>;
  let clientB: ReturnType<typeof grpcClient>;
  let admin: string;
  const auth = () => ({ authorization: `Bearer ${admin}` });
  const state = (client: ReturnType<typeof grpcClient>, token: string) =>
    client.unary<IntrospectTokenResponse>("introspectToken", { token }, auth()).then((r) => (r.active ? "active" : InactiveReason[r.reason]));

  beforeAll(async () => {
    db = await createTestDatabase();
    const env = { DATABASE_URL: db.url, CACHE_STALENESS: "10m", REVOCATION_HEARTBEAT: "200ms", REVOCATION_HEARTBEAT_TIMEOUT: "600ms", REVOCATION_TRANSPORT: transport };
    a = await startTestService(env);
    b = await startTestService(env);
    admin = a.bootstrapToken!;
    clientA = grpcClient(TokenService, `127.0.0.1:${a.service.grpcPort}`);
    clientB = grpcClient(TokenService, `127.0.0.1:${b.service.grpcPort}`);
  });

  afterAll(async () => {
    clientA?.close();
    clientB?.close();
    await Promise.all([a?.service.stop(), b?.service.stop()]);
    await db?.drop();
  });

  const issue = () => clientA.unary<IssueTokenResponse>("issueToken", { name: "r", subject: "r@example.com" }, auth());

  it("evicts a token on the other replica when it is revoked, long before the staleness bound", async () => {
    for (let i = 0; i < 5; i++) {
      const { token } = await issue();
      expect(await state(clientB, token)).toBe("active"); // now cached on B for up to 10 minutes
      await clientA.unary("revokeToken", { target: { case: "token", value: token } }, auth());
      await expect.poll(() => state(clientB, token), { timeout: 5_000, interval: 5 }).toBe("REVOKED");
    }
  });

  // LISTEN only: the poller has no session to kill.
  // Only the notify transport has a LISTEN connection to kill.
  if (transport === "notify") it("when B's LISTEN connection is killed, B reconnects, catches up from the revocation log (evicting just what was revoked meanwhile) and sees revocations again", async () => {
    const { token } = await issue();
    const kept = await issue();
    expect(await state(clientB, token)).toBe("active");
    expect(await state(clientB, kept.token)).toBe("active"); // both cached on B now
    const pid = b.service.channel.backendPid;
    expect(pid).toBeTypeOf("number");
    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    await admin.query("SELECT pg_terminate_backend($1)", [pid]);
    // Revoke once B's session is gone, so B cannot hear the notice (it reconnects only after a back-off).
    await expect.poll(async () => (await admin.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = $1", [pid])).rows[0].n, { timeout: 5_000, interval: 2 }).toBe(0);
    await clientA.unary("revokeToken", { target: { case: "token", value: token } }, auth());
    await admin.end();
    // B notices the loss, reconnects, reads the log from its position and evicts just the revoked token.
    await expect.poll(() => state(clientB, token), { timeout: 10_000, interval: 50 }).toBe("REVOKED");
    await expect.poll(() => b.service.channel.backendPid !== undefined && b.service.channel.backendPid !== pid, { timeout: 10_000 }).toBe(true);
    expect(b.logs.lines.some((l) => l.msg === "revocation channel lost; cached answers age out, reconnecting")).toBe(true);
    await expect.poll(() => b.logs.lines.some((l) => l.msg === "caught up from the revocation log"), { timeout: 5_000 }).toBe(true);
    expect(b.logs.lines.some((l) => typeof l.msg === "string" && l.msg.includes("resetting caches"))).toBe(false);
    // The other token was not forgotten: B answers it from its cache, without the store.
    const misses = b.service.deps.cache.stats().misses;
    expect(await state(clientB, kept.token)).toBe("active");
    expect(b.service.deps.cache.stats().misses).toBe(misses);
    // And B's position has moved past the revocation.
    const head = (await new KyselyRevocationLog(b.service.database.db).readAfter(Number.MAX_SAFE_INTEGER, 1)).head;
    await expect.poll(() => b.service.deps.revocations.position, { timeout: 5_000 }).toBe(head);

    // And pushes work again after the reconnect.
    const next = await issue();
    expect(await state(clientB, next.token)).toBe("active");
    await clientA.unary("revokeToken", { target: { case: "token", value: next.token } }, auth());
    await expect.poll(() => state(clientB, next.token), { timeout: 5_000, interval: 5 }).toBe("REVOKED");
  });
});

describe.each(TRANSPORTS)("the staleness bound with the channel cut (REVOCATION_TRANSPORT=%s)", (transport) => {
  it("stops serving a revoked token within CACHE_STALENESS even if no notice arrives", async () => {
    const db = await createTestDatabase();
    // The heartbeat timeout is far out, so B does not notice the loss by itself: only the bound helps.
    const env = { DATABASE_URL: db.url, CACHE_STALENESS: "1500ms", REVOCATION_HEARTBEAT: "200ms", REVOCATION_HEARTBEAT_TIMEOUT: "10m", REVOCATION_TRANSPORT: transport };
    const a = await startTestService(env);
    const b = await startTestService(env);
    const clientA = grpcClient(TokenService, `127.0.0.1:${a.service.grpcPort}`);
    const clientB = grpcClient(TokenService, `127.0.0.1:${b.service.grpcPort}`);
    const admin = a.bootstrapToken!;
    const auth = { authorization: `Bearer ${admin}` };
    try {
      const { token } = await clientA.unary<IssueTokenResponse>("issueToken", { name: "s", subject: "s@example.com" }, auth);
      expect((await clientB.unary<IntrospectTokenResponse>("introspectToken", { token }, auth)).active).toBe(true);
      // Make B deaf without killing its connection: stop its listener (or poller) from hearing anything.
      await b.service.channel.stop();
      await clientA.unary("revokeToken", { target: { case: "token", value: token } }, auth);
      await expect.poll(async () => (await clientB.unary<IntrospectTokenResponse>("introspectToken", { token }, auth)).reason, { timeout: 10_000, interval: 100 }).toBe(InactiveReason.REVOKED);
    } finally {
      clientA.close();
      clientB.close();
      await Promise.all([a.service.stop(), b.service.stop()]);
      await db.drop();
    }
  });
});

describe.each(TRANSPORTS)("a replica cut off from the store (REVOCATION_TRANSPORT=%s)", (transport) => {
  it("catches up from the log when the store is back: evicts what was revoked meanwhile, keeps the rest", async () => {
    const db = await createTestDatabase();
    const url = new URL(db.url);
    const proxy = await startTcpProxy(Number(url.port || 5432), url.hostname);
    const viaProxy = new URL(db.url);
    viaProxy.port = String(proxy.port);
    const env = { CACHE_STALENESS: "10m", REVOCATION_HEARTBEAT: "200ms", REVOCATION_HEARTBEAT_TIMEOUT: "600ms", REVOCATION_TRANSPORT: transport, DATABASE_CONNECT_TIMEOUT: "500ms" };
    const a = await startTestService({ ...env, DATABASE_URL: db.url });
    const b = await startTestService({ ...env, DATABASE_URL: viaProxy.toString() });
    const clientA = grpcClient(TokenService, `127.0.0.1:${a.service.grpcPort}`);
    const clientB = grpcClient(TokenService, `127.0.0.1:${b.service.grpcPort}`);
    const auth = { authorization: `Bearer ${a.bootstrapToken!}` };
    try {
      const revoked = await clientA.unary<IssueTokenResponse>("issueToken", { name: "x", subject: "x@example.com" }, auth);
      const kept = await clientA.unary<IssueTokenResponse>("issueToken", { name: "y", subject: "y@example.com" }, auth);
      for (const t of [revoked, kept]) expect((await clientB.unary<IntrospectTokenResponse>("introspectToken", { token: t.token }, auth)).active).toBe(true);
      proxy.cut();
      await clientA.unary("revokeToken", { target: { case: "token", value: revoked.token } }, auth);
      const head = (await new KyselyRevocationLog(a.service.database.db).readAfter(Number.MAX_SAFE_INTEGER, 1)).head;
      // B cannot have heard it: its position stays behind while cut.
      expect(b.service.deps.revocations.position).toBeLessThan(head);
      proxy.restore();
      await expect.poll(() => b.service.deps.revocations.position, { timeout: 15_000, interval: 50 }).toBe(head);
      expect((await clientB.unary<IntrospectTokenResponse>("introspectToken", { token: revoked.token }, auth)).reason).toBe(InactiveReason.REVOKED);
      const misses = b.service.deps.cache.stats().misses;
      expect((await clientB.unary<IntrospectTokenResponse>("introspectToken", { token: kept.token }, auth)).active).toBe(true);
      expect(b.service.deps.cache.stats().misses).toBe(misses); // still cached: not flushed
    } finally {
      clientA.close();
      clientB.close();
      await Promise.all([a.service.stop(), b.service.stop()]);
      await proxy.close();
      await db.drop();
    }
  });
});
