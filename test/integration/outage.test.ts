import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HealthCheckResponse_ServingStatus, Health } from "../../gen/health/v1/health_pb.js";
import { TokenService, type IntrospectTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { mintToken } from "../../src/domain/token-format.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";
import { startTcpProxy } from "../support/tcp-proxy.js";


/**
 * The store goes away under a running service (its connections are cut by a
 * proxy in the middle): calls answer UNAVAILABLE, never "inactive"; health
 * says NOT_SERVING; and the service recovers by itself when the store is back.
 */
describe("a PostgreSQL outage", () => {
  let db: TestDatabase;
  let proxy: Awaited<ReturnType<typeof startTcpProxy>>;
  let sut: ServiceUnderTest;

  beforeAll(async () => {
    db = await createTestDatabase();
    proxy = await startTcpProxy(5432);
    const url = new URL(db.url);
    url.port = String(proxy.port);
    sut = await startTestService({ DATABASE_URL: url.toString(), DATABASE_CONNECT_TIMEOUT: "500ms", DATABASE_STATEMENT_TIMEOUT: "1s", CACHE_STALENESS: "5s" });
  });

  afterAll(async () => {
    await sut?.service.stop();
    await proxy?.close();
    await db?.drop();
  });

  it("answers UNAVAILABLE while the store is away and recovers without a restart", async () => {
    const admin = sut.bootstrapToken!;
    const auth = { authorization: `Bearer ${admin}` };
    const grpc = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
    const health = grpcClient(Health, `127.0.0.1:${sut.service.grpcPort}`);
    const connect = createClient(TokenService, createConnectTransport({ baseUrl: `http://127.0.0.1:${sut.service.httpPort}`, httpVersion: "1.1" }));
    const unknown = mintToken("development").token;

    expect((await grpc.unary<IntrospectTokenResponse>("introspectToken", { token: unknown }, auth)).reason).toBeDefined();
    expect(await health.unary("check", { service: "" })).toMatchObject({ status: HealthCheckResponse_ServingStatus.SERVING });

    proxy.cut();
    // Within the staleness bound, a cached answer still serves the caller.
    expect((await grpc.unary<IntrospectTokenResponse>("introspectToken", { token: admin }, auth)).active).toBe(true);
    // A token the cache has never seen must go to the store: UNAVAILABLE, never "inactive".
    await expect(grpc.unary("introspectToken", { token: mintToken("development").token }, auth)).rejects.toMatchObject({ code: GrpcStatus.UNAVAILABLE, details: "the token store is unavailable; try again" });
    await expect(connect.listTokens({}, { headers: auth })).rejects.toSatisfy((e: unknown) => ConnectError.from(e).code === Code.Unavailable);
    // A cached answer is served only within the staleness bound (5 s here), then it too is UNAVAILABLE.
    await expect
      .poll(async () => grpc.unary<IntrospectTokenResponse>("introspectToken", { token: admin }, auth).then((a) => (a.active ? "active" : "inactive"), (e: { code: number }) => e.code), { timeout: 15_000, interval: 250 })
      .toBe(GrpcStatus.UNAVAILABLE);
    // Health may answer from a cache for about a second; poll until it notices.
    await expect.poll(async () => ((await health.unary<{ status: number }>("check", { service: "" })).status), { timeout: 10_000, interval: 250 }).toBe(HealthCheckResponse_ServingStatus.NOT_SERVING);
    expect(sut.logs.raw.join("\n")).not.toContain(admin);

    proxy.restore();
    await expect.poll(async () => ((await health.unary<{ status: number }>("check", { service: "" })).status), { timeout: 10_000, interval: 250 }).toBe(HealthCheckResponse_ServingStatus.SERVING);
    const answer = await grpc.unary<IntrospectTokenResponse>("introspectToken", { token: admin }, auth);
    expect(answer.active).toBe(true);
    grpc.close();
    health.close();
  });
});
