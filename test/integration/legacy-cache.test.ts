import { SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InactiveReason, TokenKind, TokenService, type IntrospectTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { IntrospectionClient } from "../../src/client/introspection-client.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

/**
 * Legacy JWT answers kept on two replicas of one PostgreSQL and in a gateway
 * client: a jti revoked on replica A evicts the JWT's kept answer on replica
 * B and in a client watching B, long before the staleness bound (set to ten
 * minutes, so nothing but the revocation log's notice can explain it).
 */
const SECRET = "legacy-cache-secret-0123456789abcdef0123";
const TRANSPORTS = ["notify", "poll"] as const;

let serial = 0;
/** A fresh legacy JWT (its own jti) valid for ten minutes. */
function legacyJwt(claims: Record<string, unknown> = {}): Promise<string> {
  const jti = `legacy-cache-${process.pid}-${++serial}`;
  return new SignJWT({ sub: "old@example.com", jti, env: "development", scopes: ["orders.read"], exp: Math.floor(Date.now() / 1000) + 600, ...claims })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .sign(new TextEncoder().encode(SECRET));
}
const jtiOf = (jwt: string) => (JSON.parse(Buffer.from(jwt.split(".")[1]!, "base64url").toString("utf8")) as { jti: string }).jti;

describe.each(TRANSPORTS)("legacy JWT answers kept across replicas (REVOCATION_TRANSPORT=%s)", (transport) => {
  let db: TestDatabase;
  let a: ServiceUnderTest;
  let b: ServiceUnderTest;
  let clientA: ReturnType<typeof grpcClient>;
  let clientB: ReturnType<typeof grpcClient>;
  let gateway: IntrospectionClient;
  let admin: string;
  const auth = () => ({ authorization: `Bearer ${admin}` });
  const state = (client: ReturnType<typeof grpcClient>, token: string) =>
    client.unary<IntrospectTokenResponse>("introspectToken", { token }, auth()).then((r) => (r.active ? "active" : InactiveReason[r.reason]));
  const revokeOnA = (jwt: string) => clientA.unary("revokeToken", { target: { case: "legacyJti", value: jtiOf(jwt) } }, auth());

  beforeAll(async () => {
    db = await createTestDatabase();
    const env = {
      DATABASE_URL: db.url,
      CACHE_STALENESS: "10m",
      REVOCATION_HEARTBEAT: "200ms",
      REVOCATION_HEARTBEAT_TIMEOUT: "600ms",
      REVOCATION_TRANSPORT: transport,
      LEGACY_JWT_HMAC_SECRET: SECRET,
      LEGACY_JWT_SUNSET_DATE: "2099-01-01",
    };
    a = await startTestService(env);
    b = await startTestService(env);
    admin = a.bootstrapToken!;
    clientA = grpcClient(TokenService, `127.0.0.1:${a.service.grpcPort}`);
    clientB = grpcClient(TokenService, `127.0.0.1:${b.service.grpcPort}`);
    gateway = new IntrospectionClient({ address: `127.0.0.1:${b.service.grpcPort}`, callerToken: admin, stalenessMs: 600_000, heartbeatMs: 200 });
    await gateway.ready();
  });

  afterAll(async () => {
    gateway?.close();
    clientA?.close();
    clientB?.close();
    await Promise.all([a?.service.stop(), b?.service.stop()]);
    await db?.drop();
  });

  it("answers a repeat on B from B's cache, then REVOKED on B soon after the jti is revoked on A", async () => {
    for (let i = 0; i < 3; i++) {
      const jwt = await legacyJwt();
      expect(await state(clientB, jwt)).toBe("active");
      const hits = b.service.deps.legacy.cache!.stats().hits;
      expect(await state(clientB, jwt)).toBe("active");
      expect(b.service.deps.legacy.cache!.stats().hits).toBe(hits + 1);
      await revokeOnA(jwt);
      expect(await state(clientA, jwt)).toBe("REVOKED"); // A evicts at once
      await expect.poll(() => state(clientB, jwt), { timeout: 5_000, interval: 5 }).toBe("REVOKED");
    }
  });

  it("keeps B's position moving through legacy revocations (the jti is read from the log)", async () => {
    const jwt = await legacyJwt();
    expect(await state(clientB, jwt)).toBe("active");
    await revokeOnA(jwt);
    await expect.poll(() => state(clientB, jwt), { timeout: 5_000, interval: 5 }).toBe("REVOKED");
    await expect.poll(() => b.service.deps.revocations.position === a.service.deps.revocations.position && a.service.deps.revocations.position > 0, { timeout: 5_000 }).toBe(true);
  });

  it("the gateway client caches a legacy answer (with its deprecation notice) and drops it when the jti is revoked", async () => {
    const jwt = await legacyJwt();
    const first = await gateway.introspect(jwt);
    expect(first).toMatchObject({ active: true, tokenKind: TokenKind.LEGACY_JWT, jti: jtiOf(jwt) });
    const hits = gateway.stats().hits;
    const again = await gateway.introspect(jwt);
    expect(gateway.stats().hits).toBe(hits + 1);
    expect(again.deprecation?.notice).toBe("JWT tokens are deprecated. Please migrate to API tokens.");
    await revokeOnA(jwt);
    await expect.poll(async () => (await gateway.introspect(jwt)).reason, { timeout: 5_000, interval: 5 }).toBe(InactiveReason.REVOKED);
  });

  it("the gateway client keeps answering other legacy JWTs from its cache after one is revoked", async () => {
    const kept = await legacyJwt();
    const revoked = await legacyJwt();
    await gateway.introspect(kept);
    await gateway.introspect(revoked);
    await revokeOnA(revoked);
    await expect.poll(async () => (await gateway.introspect(revoked)).active, { timeout: 5_000, interval: 5 }).toBe(false);
    const hits = gateway.stats().hits;
    expect((await gateway.introspect(kept)).active).toBe(true);
    expect(gateway.stats().hits).toBe(hits + 1);
  });
});
