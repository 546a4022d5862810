/**
 * Answers carry their revocation position: IntrospectToken says up to which
 * log position its replica had applied and how fresh that is; the
 * WatchRevocations stream carries positions on revocations and heartbeats,
 * and resumes from a position (a `reset` only past the log's retention).
 */
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TokenService, type IntrospectTokenResponse, type IssueTokenResponse, type WatchRevocationsResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { sql } from "kysely";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

describe("revocation positions on answers and streams", () => {
  let db: TestDatabase;
  let sut: ServiceUnderTest;
  let client: ReturnType<typeof grpcClient>;
  let admin: string;
  const auth = () => ({ authorization: `Bearer ${admin}` });

  beforeAll(async () => {
    db = await createTestDatabase();
    sut = await startTestService({ DATABASE_URL: db.url, REVOCATION_HEARTBEAT: "100ms" });
    admin = sut.bootstrapToken!;
    client = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
  });

  afterAll(async () => {
    client?.close();
    await sut?.service.stop();
    await db?.drop();
  });

  const issue = () => client.unary<IssueTokenResponse>("issueToken", { name: "p", subject: "p@example.com" }, auth());
  const revoke = (token: string) => client.unary("revokeToken", { target: { case: "token", value: token } }, auth());
  const introspect = (token: string) => client.unary<IntrospectTokenResponse>("introspectToken", { token }, auth());

  /** Opens a stream and collects its events until closed. */
  function watch(request: object) {
    const md = new grpc.Metadata();
    md.set("authorization", `Bearer ${admin}`);
    const stream = (client.client as unknown as { watchRevocations(r: object, m: grpc.Metadata): grpc.ClientReadableStream<WatchRevocationsResponse> }).watchRevocations(
      { heartbeatInterval: durationFromMs(100), ...request },
      md,
    );
    const events: WatchRevocationsResponse["event"][] = [];
    stream.on("data", (r: WatchRevocationsResponse) => events.push(r.event));
    stream.on("error", () => undefined);
    return { events, close: () => stream.cancel() };
  }

  it("stamps every introspection with the replica's applied position and confirmation time", async () => {
    const { token } = await issue();
    await expect.poll(async () => (await introspect(token)).revocationConfirmedAt !== undefined, { timeout: 5_000 }).toBe(true);
    const before = await introspect(token);
    expect(before.active).toBe(true);
    await revoke(token);
    // The revocation moves the replica's position on by one (a store read may say REVOKED a moment earlier).
    await expect.poll(async () => (await introspect(token)).revocationPosition, { timeout: 5_000, interval: 5 }).toBe(before.revocationPosition + 1n);
    const after = await introspect(token);
    expect(after.active).toBe(false);
    expect(Number(after.revocationPosition)).toBe(sut.service.deps.revocations.position);
    // Operators see it too.
    const metrics = await (await fetch(`http://127.0.0.1:${sut.service.httpPort}/metrics`)).text();
    expect(metrics).toMatch(new RegExp(`^token_service_revocation_log_position ${after.revocationPosition}$`, "m"));
    expect(metrics).toMatch(/^token_service_revocation_confirmed_age_seconds \d/m);
  });

  it("streams positions on revocations and heartbeats, and resumes after a position without a reset", async () => {
    const first = watch({});
    const { token: t1 } = await issue();
    const { token: t2 } = await issue();
    await expect.poll(() => first.events.some((e) => e.case === "heartbeat"), { timeout: 5_000 }).toBe(true);
    expect(first.events[0]?.case).toBe("reset"); // no position given: start over
    await revoke(t1);
    await expect.poll(() => first.events.some((e) => e.case === "revocation"), { timeout: 5_000 }).toBe(true);
    const r1 = first.events.find((e) => e.case === "revocation")!;
    const p1 = r1.case === "revocation" ? r1.value.position : 0n;
    expect(p1).toBeGreaterThan(0n);
    await expect.poll(() => first.events.some((e) => e.case === "heartbeat" && e.value.position === p1), { timeout: 5_000 }).toBe(true);
    first.close();

    // Revoked while no stream was open; the resumed stream delivers it first, and no reset.
    await revoke(t2);
    const resumed = watch({ resumeAfterPosition: p1 });
    try {
      await expect.poll(() => resumed.events.some((e) => e.case === "heartbeat"), { timeout: 5_000 }).toBe(true);
      expect(resumed.events[0]).toMatchObject({ case: "revocation", value: { position: p1 + 1n } });
      expect(resumed.events.some((e) => e.case === "reset")).toBe(false);
    } finally {
      resumed.close();
    }
  });

  it("starts with a reset when the log no longer reaches back to the position asked for", async () => {
    const { token } = await issue();
    await revoke(token);
    await sql`SELECT prune_revocation_log(now() + interval '1 hour', 100000)`.execute(sut.service.database.db);
    const stream = watch({ resumeAfterPosition: 1n });
    try {
      await expect.poll(() => stream.events.length > 0, { timeout: 5_000 }).toBe(true);
      expect(stream.events[0]?.case).toBe("reset");
    } finally {
      stream.close();
    }
  });

  it("refuses a resume position beyond any it hands out, naming the field", async () => {
    const stream = (client.client as unknown as { watchRevocations(r: object, m: grpc.Metadata): grpc.ClientReadableStream<WatchRevocationsResponse> }).watchRevocations(
      { resumeAfterPosition: 2n ** 60n },
      (() => {
        const md = new grpc.Metadata();
        md.set("authorization", `Bearer ${admin}`);
        return md;
      })(),
    );
    const error = await new Promise<grpc.ServiceError>((resolve) => {
      stream.on("data", () => undefined);
      stream.on("error", resolve);
    });
    expect(error.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(error.details).toContain("resume_after_position");
  });
});
