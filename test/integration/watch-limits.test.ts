import { durationFromMs } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TokenService, type IssueTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

type Stream = grpc.ClientReadableStream<{ event: { case: string } }>;

/** How a stream ended: its status code and message, and the event kinds it delivered. */
interface Ending {
  readonly code: number;
  readonly details: string;
  readonly events: string[];
  readonly headers: grpc.Metadata | undefined;
}

function watch(client: ReturnType<typeof grpcClient>, token: string, request: object = {}): { stream: Stream; ended: Promise<Ending>; first: Promise<void>; events: string[] } {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${token}`);
  const stream = (client.client as unknown as Record<string, (req: object, md: grpc.Metadata) => Stream>).watchRevocations!.call(client.client, request, md);
  const events: string[] = [];
  let headers: grpc.Metadata | undefined;
  stream.on("metadata", (m) => (headers = m));
  const first = new Promise<void>((resolve) => stream.once("data", () => resolve()));
  const ended = new Promise<Ending>((resolve) => {
    stream.on("data", (m) => events.push(m.event.case));
    stream.on("error", (e: grpc.ServiceError) => resolve({ code: e.code, details: e.details, events, headers }));
    stream.on("end", () => resolve({ code: grpc.status.OK, details: "", events, headers }));
  });
  return { stream, ended, first, events };
}

/**
 * Revocation streams on real PostgreSQL, two replicas: a stream ends with
 * UNAUTHENTICATED once its caller's token is revoked (on another replica,
 * pushed through the revocation channel; B's staleness bound is set far out
 * so nothing but the push can explain it) or expires; streams per caller are
 * capped; the heartbeat has a floor.
 */
describe("revocation streams follow their caller", () => {
  let db: TestDatabase;
  let a: ServiceUnderTest;
  let b: ServiceUnderTest;
  let clientA: ReturnType<typeof grpcClient>;
  let clientB: ReturnType<typeof grpcClient>;
  let admin: string;
  const auth = () => ({ authorization: `Bearer ${admin}` });
  const gateway = (ttlMs?: number) =>
    clientA.unary<IssueTokenResponse>(
      "issueToken",
      { name: "gw", subject: `gw-${Math.random()}@example.com`, scopes: ["tokens.introspect"], ...(ttlMs ? { expiry: { case: "ttl", value: durationFromMs(ttlMs) } } : {}) },
      auth(),
    );

  beforeAll(async () => {
    db = await createTestDatabase();
    a = await startTestService({ DATABASE_URL: db.url, LOG_LEVEL: "warn", WATCH_MAX_STREAMS_PER_CALLER: "2", CACHE_STALENESS: "1s", REVOCATION_HEARTBEAT: "200ms", REVOCATION_HEARTBEAT_TIMEOUT: "600ms" });
    b = await startTestService({ DATABASE_URL: db.url, LOG_LEVEL: "warn", CACHE_STALENESS: "10m", REVOCATION_HEARTBEAT: "200ms", REVOCATION_HEARTBEAT_TIMEOUT: "600ms" });
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

  it("ends with UNAUTHENTICATED on another replica when its caller's token is revoked", async () => {
    const gw = await gateway();
    const { first, ended } = watch(clientB, gw.token);
    await first;
    await clientA.unary("revokeToken", { target: { case: "tokenId", value: gw.info!.id } }, auth());
    const end = await ended;
    expect(end.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(end.details).toContain("revoked");
    expect(end.events).toContain("revocation"); // its own revocation is delivered first
  });

  it("ends with UNAUTHENTICATED when its caller's token expires", async () => {
    const gw = await gateway(1500);
    const { first, ended } = watch(clientA, gw.token);
    await first;
    const end = await ended;
    expect(end.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(end.details).toContain("expired");
  });

  it("keeps streaming for a caller whose token stays valid", async () => {
    const gw = await gateway();
    const { stream, ended, events } = watch(clientA, gw.token, { heartbeatInterval: durationFromMs(500) });
    let done = false;
    void ended.then(() => (done = true));
    const other = await gateway();
    await clientA.unary("revokeToken", { target: { case: "tokenId", value: other.info!.id } }, auth());
    // Several heartbeats and re-checks (every 500 ms here) later, still open.
    await expect.poll(() => events.filter((e) => e === "heartbeat").length, { timeout: 5000 }).toBeGreaterThanOrEqual(4);
    expect(events).toContain("revocation");
    expect(done).toBe(false);
    stream.cancel();
    expect((await ended).code).toBe(grpc.status.CANCELLED);
  });

  it("caps the streams one caller holds open on a replica, and frees a slot when a stream closes", async () => {
    const gw = await gateway();
    const open = [watch(clientA, gw.token), watch(clientA, gw.token)];
    await Promise.all(open.map((o) => o.first));
    const third = await watch(clientA, gw.token).ended;
    expect(third.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(third.details).toContain("revocation streams");
    // Another caller is not affected.
    const otherGw = await gateway();
    const other = watch(clientA, otherGw.token);
    await other.first;
    open[0]!.stream.cancel();
    await open[0]!.ended;
    await expect.poll(async () => {
      const attempt = watch(clientA, gw.token);
      const outcome = await Promise.race([attempt.first.then(() => "opened"), attempt.ended.then((e) => String(e.code))]);
      attempt.stream.cancel();
      return outcome;
    }).toBe("opened");
    open[1]!.stream.cancel();
    other.stream.cancel();
  });

  it("raises a heartbeat ask below the floor to the floor, and refuses one outside the documented range", async () => {
    const gw = await gateway();
    const fast = watch(clientA, gw.token, { heartbeatInterval: durationFromMs(100) });
    await fast.first;
    fast.stream.cancel();
    expect((await fast.ended).headers?.get("x-heartbeat-interval-ms")).toEqual(["500"]);
    const refused = await watch(clientA, gw.token, { heartbeatInterval: durationFromMs(10) }).ended;
    expect(refused.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(refused.details).toMatch(/^heartbeat_interval: /);
  });
});
