import { randomBytes } from "node:crypto";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { status as GrpcStatus } from "@grpc/grpc-js";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  InactiveReason,
  Severity,
  TokenService,
  TokenState,
  type IntrospectTokenResponse,
  type IssueTokenResponse,
} from "../../gen/tokens/v1/token_service_pb.js";
import { mintToken } from "../../src/domain/token-format.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

/**
 * The whole service, started as `npm start` starts it, on each store, called
 * by a real @grpc/grpc-js client on the gRPC port and real Connect clients on
 * the HTTP port (Connect over HTTP/1.1, gRPC over h2c).
 */
describe.each([
  ["PostgreSQL", true],
  ["PGlite", false],
] as const)("the service on %s", (_name, usePostgres) => {
  let db: TestDatabase | undefined;
  let sut: ServiceUnderTest;
  let admin: string;
  let grpc: ReturnType<typeof grpcClient>;
  let connect: Client<typeof TokenService>;
  let connectGrpc: Client<typeof TokenService>;
  const as = (token: string) => ({ authorization: `Bearer ${token}` });

  beforeAll(async () => {
    db = usePostgres ? await createTestDatabase() : undefined;
    sut = await startTestService(db ? { DATABASE_URL: db.url, TOKEN_ENVIRONMENT: "development" } : { DATA_DIR: "memory://", TOKEN_ENVIRONMENT: "dev" });
    admin = sut.bootstrapToken!;
    grpc = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
    const baseUrl = `http://127.0.0.1:${sut.service.httpPort}`;
    connect = createClient(TokenService, createConnectTransport({ baseUrl, httpVersion: "1.1" }));
    connectGrpc = createClient(TokenService, createGrpcTransport({ baseUrl }));
  });

  afterAll(async () => {
    grpc?.close();
    await sut?.service.stop();
    await db?.drop();
  });

  it("printed a bootstrap admin token on its first start in development, and logged only its hint", () => {
    expect(admin).toMatch(/^cf-[0-9A-Za-z]{22}$/);
    const bootstrap = sut.logs.lines.find((l) => l.security_event === "platform_admin_bootstrap");
    expect(bootstrap).toMatchObject({ level: 30, tokenHint: `cf-…${admin.slice(-4)}` });
    expect(sut.logs.raw.join("\n")).not.toContain(admin);
  });

  it("issues over Connect and introspects the same token over gRPC and Connect alike", async () => {
    const issued = await connect.issueToken({ name: "e2e", subject: "gw@example.com", scopes: ["tokens.introspect", "orders.read"], teams: ["edge"] }, { headers: as(admin) });
    const overGrpc = await grpc.unary<IntrospectTokenResponse>("introspectToken", { token: issued.token }, as(admin));
    const overConnect = await connect.introspectToken({ token: issued.token }, { headers: as(admin) });
    const overConnectGrpc = await connectGrpc.introspectToken({ token: issued.token }, { headers: as(admin) });
    for (const answer of [overGrpc, overConnect, overConnectGrpc]) {
      expect(answer).toMatchObject({ active: true, sub: "gw@example.com", scope: "tokens.introspect orders.read", teams: ["edge"], jti: issued.info!.id });
    }
  });

  it("lets a gateway token introspect but not issue, over gRPC", async () => {
    const gw = await connect.issueToken({ name: "gateway", subject: "gw@example.com", scopes: ["tokens.introspect"] }, { headers: as(admin) });
    const answer = await grpc.unary<IntrospectTokenResponse>("introspectToken", { token: admin }, as(gw.token));
    expect(answer.active).toBe(true);
    await expect(grpc.unary("issueToken", { name: "x" }, as(gw.token))).rejects.toMatchObject({ code: GrpcStatus.PERMISSION_DENIED, details: "this call needs the `tokens.create` scope, which your token does not have" });
    await expect(grpc.unary("issueToken", { name: "x" })).rejects.toMatchObject({ code: GrpcStatus.UNAUTHENTICATED });
    await expect(grpc.unary("issueToken", { name: "" }, as(admin))).rejects.toMatchObject({ code: GrpcStatus.INVALID_ARGUMENT, details: "name: is required" });
  });

  it.each([
    ["staging", "Token environment mismatch: staging token used in development"],
    ["production", "Token environment mismatch: production token used in development"],
  ] as const)("refuses a %s token through both transports and records the security event", async (env, message) => {
    const foreign = mintToken(env);
    const viaGrpc = await grpc.unary<IntrospectTokenResponse>("introspectToken", { token: foreign.token }, { ...as(admin), "user-agent-extra": "x" });
    const viaConnect = await connect.introspectToken({ token: foreign.token }, { headers: { ...as(admin), "user-agent": "e2e-test/1.0" } });
    for (const answer of [viaGrpc, viaConnect]) {
      expect(answer).toMatchObject({ active: false, reason: InactiveReason.ENVIRONMENT_MISMATCH, message, sub: "", scopes: [] });
    }
    const events = await connect.listSecurityEvents({ type: "environment_mismatch", minSeverity: Severity.CRITICAL }, { headers: as(admin) });
    const mine = events.events.filter((e) => e.tokenHint === foreign.displayHint);
    expect(mine.length).toBeGreaterThanOrEqual(1);
    expect(mine.reduce((n, e) => n + Number(e.count), 0)).toBe(2);
    expect(mine[0]).toMatchObject({ message, peer: "127.0.0.1", method: "/tokens.v1.TokenService/IntrospectToken" });
    expect(mine.some((e) => e.userAgent.includes("e2e-test/1.0"))).toBe(true);
    const logged = sut.logs.lines.filter((l) => l.security_event === "environment_mismatch" && l.tokenHint === foreign.displayHint);
    expect(logged.length).toBeGreaterThanOrEqual(1);
    expect(sut.logs.raw.join("\n")).not.toContain(foreign.token);
  });

  it("revokes durably and answers REVOKED on the next introspection, over both transports", async () => {
    const issued = await grpc.unary<IssueTokenResponse>("issueToken", { name: "short", subject: "r@example.com" }, as(admin));
    const revoked = await connect.revokeToken({ target: { case: "token", value: issued.token }, reason: "test" }, { headers: as(admin) });
    expect(revoked.info?.state).toBe(TokenState.REVOKED);
    const answer = await grpc.unary<IntrospectTokenResponse>("introspectToken", { token: issued.token }, as(admin));
    expect(answer).toMatchObject({ active: false, reason: InactiveReason.REVOKED });
    await expect(connect.revokeToken({ target: { case: "tokenId", value: "7b0c1e1e-0000-4000-8000-000000000000" } }, { headers: as(admin) })).rejects.toSatisfy(
      (e: unknown) => ConnectError.from(e).code === Code.NotFound,
    );
  });

  it("lists tokens newest first across pages without the token or its digest", async () => {
    for (let i = 0; i < 5; i++) await connect.issueToken({ name: `page-${i}`, subject: "pager@example.com" }, { headers: as(admin) });
    const names: string[] = [];
    let pageToken = "";
    do {
      const page = await connect.listTokens({ subject: "pager@example.com", pageSize: 2, pageToken }, { headers: as(admin) });
      names.push(...page.tokens.map((t) => t.name));
      for (const t of page.tokens) expect(t.displayHint).toMatch(/^cf-…[0-9A-Za-z]{4}$/);
      pageToken = page.nextPageToken;
    } while (pageToken);
    expect(names).toEqual(["page-4", "page-3", "page-2", "page-1", "page-0"]);
  });

  it("refuses an oversized message before any work", async () => {
    await expect(connect.introspectToken({ token: "x".repeat(70_000) }, { headers: as(admin) })).rejects.toSatisfy((e: unknown) => ConnectError.from(e).code === Code.ResourceExhausted);
    await expect(grpc.unary("introspectToken", { token: "x".repeat(70_000) }, as(admin))).rejects.toMatchObject({ code: GrpcStatus.RESOURCE_EXHAUSTED });
  });
});

describe("across environments on one PostgreSQL", () => {
  it("refuses a development token in a production service sharing the store, and prints no bootstrap token there", async () => {
    const db = await createTestDatabase();
    // Services sharing a store share its signing keys, so they share the key-encryption key too.
    const kek = randomBytes(32).toString("base64");
    const dev = await startTestService({ DATABASE_URL: db.url, TOKEN_ENVIRONMENT: "development", KEY_ENCRYPTION_KEY: kek });
    const prod = await startTestService({ DATABASE_URL: db.url, TOKEN_ENVIRONMENT: "production", KEY_ENCRYPTION_KEY: kek });
    try {
      expect(prod.bootstrapToken).toBeUndefined();
      const devAdmin = dev.bootstrapToken!;
      // A production admin, made the way operators make one in production.
      const { bootstrapAdmin } = await import("../../src/domain/issue.js");
      const prodAdmin = (await bootstrapAdmin(prod.service.deps, "prod-ops@example.com", "cli")).token;
      expect(prodAdmin).toMatch(/^cfprd-/);
      const client = grpcClient(TokenService, `127.0.0.1:${prod.service.grpcPort}`);
      const answer = await client.unary<IntrospectTokenResponse>("introspectToken", { token: devAdmin }, { authorization: `Bearer ${prodAdmin}` });
      expect(answer).toMatchObject({ active: false, reason: InactiveReason.ENVIRONMENT_MISMATCH, message: "Token environment mismatch: development token used in production" });
      await expect(client.unary("listTokens", {}, { authorization: `Bearer ${devAdmin}` })).rejects.toMatchObject({ code: GrpcStatus.UNAUTHENTICATED, details: "caller credential refused: Token environment mismatch: development token used in production" });
      client.close();
    } finally {
      await prod.service.stop();
      await dev.service.stop();
      await db.drop();
    }
  });

  it("writes batched last-used times on a clean shutdown", async () => {
    const db = await createTestDatabase();
    const sut = await startTestService({ DATABASE_URL: db.url, LAST_USED_FLUSH_INTERVAL: "1h" });
    const client = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
    const admin = sut.bootstrapToken!;
    await client.unary("introspectToken", { token: admin }, { authorization: `Bearer ${admin}` });
    client.close();
    await sut.service.stop();
    const check = new pg.Client({ connectionString: db.url });
    await check.connect();
    const { rows } = await check.query<{ n: string }>("select count(*) as n from token_last_used");
    await check.end();
    await db.drop();
    expect(Number(rows[0]!.n)).toBe(1);
  });
});
