/**
 * The gateway client behind an L7 balancer, exactly as issue 10 found it:
 * two replicas on one PostgreSQL behind a round-robin HTTP/2 proxy (each
 * stream to the next upstream), the client's revocation stream on one
 * replica, its unary calls alternating, and one replica hearing notices
 * late. A unary answer from the lagging replica must never make the client
 * serve a token it already knows is revoked.
 */
import * as http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TokenService, type IssueTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { IntrospectionClient } from "../../src/client/introspection-client.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

/** Response headers HTTP/2 forbids a proxy to pass on as they are. */
const HOP = new Set([":status", "connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection"]);

/**
 * A round-robin HTTP/2 (h2c) reverse proxy: every incoming stream goes to the
 * next upstream in turn over one long-lived session per upstream, the way an
 * L7 balancer spreads gRPC calls. Headers, data and trailers pass through.
 */
async function startRoundRobinProxy(upstreamPorts: readonly number[]) {
  const upstreams = upstreamPorts.map((port) => http2.connect(`http://127.0.0.1:${port}`));
  for (const s of upstreams) s.on("error", () => undefined);
  const downstream = new Set<http2.ServerHttp2Session>();
  const picks: number[] = [];
  let next = 0;
  const server = http2.createServer();
  server.on("session", (session) => {
    downstream.add(session);
    session.on("close", () => downstream.delete(session));
    session.on("error", () => undefined);
  });
  server.on("stream", (down, headers) => {
    const index = next++ % upstreams.length;
    picks.push(index);
    const forwarded: http2.OutgoingHttpHeaders = {};
    for (const [name, value] of Object.entries(headers)) {
      if (name === ":scheme" || name === ":authority" || name === "connection") continue;
      forwarded[name] = value;
    }
    const up = upstreams[index]!.request(forwarded);
    let trailers: http2.OutgoingHttpHeaders = {};
    up.on("response", (responseHeaders) => {
      const out: http2.OutgoingHttpHeaders = { ":status": responseHeaders[":status"] };
      for (const [name, value] of Object.entries(responseHeaders)) if (!HOP.has(name)) out[name] = value as http2.OutgoingHttpHeaders[string];
      if (down.destroyed) return;
      // A trailers-only answer (an error status) ends with its headers.
      if (up.endAfterHeaders) down.respond(out, { endStream: true });
      else down.respond(out, { waitForTrailers: true });
    });
    up.on("trailers", (t) => {
      trailers = {};
      for (const [name, value] of Object.entries(t)) if (!HOP.has(name)) trailers[name] = value as http2.OutgoingHttpHeaders[string];
    });
    down.on("wantTrailers", () => down.sendTrailers(trailers));
    up.on("data", (chunk: Buffer) => {
      if (!down.destroyed) down.write(chunk);
    });
    up.on("end", () => {
      if (!down.destroyed && !down.writableEnded) down.end();
    });
    up.on("error", () => down.destroy());
    up.on("close", () => {
      if (!down.destroyed && !down.writableEnded) down.close(up.rstCode);
    });
    down.on("data", (chunk: Buffer) => up.write(chunk));
    down.on("end", () => up.end());
    down.on("error", () => up.destroy());
    down.on("close", () => {
      if (!up.destroyed) up.close(http2.constants.NGHTTP2_CANCEL);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as AddressInfo).port,
    /** Which upstream each stream went to, in order. */
    picks,
    async close() {
      for (const s of downstream) s.destroy();
      for (const s of upstreams) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe("the introspection client behind a round-robin balancer, one replica lagging", () => {
  let db: TestDatabase;
  let healthy: ServiceUnderTest;
  let lagging: ServiceUnderTest;
  let admin: ReturnType<typeof grpcClient>;
  let adminToken: string;
  let proxy: Awaited<ReturnType<typeof startRoundRobinProxy>>;
  const LAG_MS = 800;
  const STALENESS_MS = 2000;
  const auth = () => ({ authorization: `Bearer ${adminToken}` });

  beforeAll(async () => {
    db = await createTestDatabase();
    const env = { DATABASE_URL: db.url, REVOCATION_HEARTBEAT: "200ms" };
    healthy = await startTestService(env);
    lagging = await startTestService(env, { revocationNoticeDelayMs: LAG_MS });
    adminToken = healthy.bootstrapToken!;
    admin = grpcClient(TokenService, `127.0.0.1:${healthy.service.grpcPort}`);
    proxy = await startRoundRobinProxy([healthy.service.grpcPort, lagging.service.grpcPort]);
  });

  afterAll(async () => {
    admin?.close();
    await proxy?.close();
    await Promise.all([healthy?.service.stop(), lagging?.service.stop()]);
    await db?.drop();
  });

  it("answers a revoked token inactive on every call once past the staleness bound, though the lagging replica still says active", async () => {
    // Negative answers are not reused, so every call that misses goes through the balancer.
    const client = new IntrospectionClient({ address: `127.0.0.1:${proxy.port}`, callerToken: adminToken, stalenessMs: STALENESS_MS, negativeTtlMs: 0, heartbeatMs: 200 });
    try {
      await client.ready();
      expect(proxy.picks[0]).toBe(0); // the stream: on the healthy replica
      const { token } = await admin.unary<IssueTokenResponse>("issueToken", { name: "lb", subject: "lb@example.com" }, auth());
      // Both replicas have it cached as active.
      const lagged = grpcClient(TokenService, `127.0.0.1:${lagging.service.grpcPort}`);
      expect((await lagged.unary<{ active: boolean }>("introspectToken", { token }, auth())).active).toBe(true);
      lagged.close();
      expect((await admin.unary<{ active: boolean }>("introspectToken", { token }, auth())).active).toBe(true);
      expect((await client.introspect(token)).active).toBe(true);

      await admin.unary("revokeToken", { target: { case: "token", value: token } }, auth());
      const revokedAt = Date.now();
      const answers: { sinceMs: number; active: boolean; heard: boolean }[] = [];
      const picksBefore = proxy.picks.length;
      while (Date.now() - revokedAt < STALENESS_MS + 1500) {
        const heard = client.stats().rememberedRevocations > 0; // the stream has brought the revocation
        const answer = await client.introspect(token);
        answers.push({ sinceMs: Date.now() - revokedAt, active: answer.active, heard });
        await new Promise((r) => setTimeout(r, 5));
      }
      // Calls did reach the lagging replica while it had not heard of the revocation.
      expect(proxy.picks.slice(picksBefore)).toContain(1);
      const late = answers.filter((a) => a.sinceMs > STALENESS_MS + 200);
      expect(late.length).toBeGreaterThan(10);
      expect(late.filter((a) => a.active)).toEqual([]);
      // Stronger: from the moment the stream brought the revocation, not one call said active.
      expect(answers.filter((a) => a.heard && a.active)).toEqual([]);
    } finally {
      client.close();
    }
  });
});
