import * as grpcJs from "@grpc/grpc-js";
import { PassThrough } from "node:stream";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  InactiveReason,
  TokenService,
  TokenState,
  type IntrospectTokenResponse,
  type IssueTokenResponse,
  type ListSecurityEventsResponse,
  type ListTokensResponse,
  type RotateTokenResponse,
} from "../../gen/tokens/v1/token_service_pb.js";
import { run } from "../../src/cli/tokenctl.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

/**
 * Rotation with grace on whole services: the old token's scheduled
 * revocation happens once, on whichever replica is alive, and is pushed to
 * every replica's cache and every WatchRevocations stream. The staleness
 * bound is set far out, so only pushed notices can explain a prompt answer;
 * the tests poll, they never sleep as an assertion.
 */

type Client = ReturnType<typeof grpcClient>;
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const SCOPES = ["tokens.create", "tokens.revoke", "tokens.introspect", "tokens.read"];

const stateOn = (client: Client, admin: string, token: string) =>
  client.unary<IntrospectTokenResponse>("introspectToken", { token }, bearer(admin)).then((r) => (r.active ? "active" : InactiveReason[r.reason]));

/** An open WatchRevocations stream collecting revoked token ids; resolves once its first heartbeat proves it open. */
async function watch(client: Client, token: string): Promise<{ ids: string[]; close(): void }> {
  const md = new grpcJs.Metadata();
  md.set("authorization", `Bearer ${token}`);
  type Event = { event: { case: string; value?: { tokenId?: string } } };
  const stream = (client.client as unknown as Record<string, (req: object, md: grpcJs.Metadata) => grpcJs.ClientReadableStream<Event>>).watchRevocations!.call(
    client.client,
    { heartbeatInterval: durationFromMs(100) },
    md,
  );
  stream.on("error", () => undefined);
  const ids: string[] = [];
  await new Promise<void>((resolve) =>
    stream.on("data", (m: Event) => {
      if (m.event.case === "revocation" && m.event.value?.tokenId) ids.push(m.event.value.tokenId);
      if (m.event.case === "heartbeat") resolve();
    }),
  );
  return { ids, close: () => stream.cancel() };
}

const POLL = { timeout: 15_000, interval: 20 };

/** The token_revoked events recorded for one token id (events are written in batches: poll). */
const revokedEvents = async (client: Client, admin: string, tokenId: string) =>
  (await client.unary<ListSecurityEventsResponse>("listSecurityEvents", { type: "token_revoked", pageSize: 500 }, bearer(admin))).events.filter((e) => e.tokenId === tokenId);

/** Scheduled revocation after a short grace, seen on every replica and stream, recorded once. */
async function graceStory(services: ServiceUnderTest[], admin: string): Promise<void> {
  const clients = services.map((s) => grpcClient(TokenService, `127.0.0.1:${s.service.grpcPort}`));
  const streams: Awaited<ReturnType<typeof watch>>[] = [];
  try {
    const subject = `grace-${services.length}-${Date.now()}@example.com`;
    const old = await clients[0]!.unary<IssueTokenResponse>("issueToken", { name: "deploy", subject, scopes: SCOPES, teams: ["red"], metadata: { app: "shop" } }, bearer(admin));
    for (const client of clients) expect(await stateOn(client, admin, old.token)).toBe("active");
    for (const client of clients) streams.push(await watch(client, admin));

    const rotated = await clients[clients.length - 1]!.unary<RotateTokenResponse>("rotateToken", { target: { case: "token", value: old.token }, gracePeriod: durationFromMs(1500) }, bearer(admin));
    expect(rotated.info).toMatchObject({ subject, name: "deploy", teams: ["red"], metadata: { app: "shop" }, predecessorId: old.info!.id });
    expect(rotated.predecessor).toMatchObject({ successorId: rotated.info!.id, state: TokenState.ACTIVE });
    expect(rotated.predecessor!.scheduledRevokeTime).toBeDefined();
    // Within the grace period both work everywhere.
    for (const client of clients) {
      expect(await stateOn(client, admin, old.token)).toBe("active");
      expect(await stateOn(client, admin, rotated.token)).toBe("active");
    }
    for (const client of clients) await expect.poll(() => stateOn(client, admin, old.token), POLL).toBe("REVOKED");
    for (const stream of streams) await expect.poll(() => stream.ids.filter((id) => id === old.info!.id).length, POLL).toBe(1);
    for (const client of clients) expect(await stateOn(client, admin, rotated.token)).toBe("active");
    await expect.poll(async () => (await revokedEvents(clients[0]!, admin, old.info!.id)).map((e) => [e.message, e.count]), POLL).toEqual([["rotated token revoked: grace period ended", 1n]]);
    const listed = await clients[0]!.unary<ListTokensResponse>("listTokens", { subject, includeRevoked: true }, bearer(admin));
    expect(listed.tokens.find((t) => t.id === old.info!.id)).toMatchObject({ state: TokenState.REVOKED, revokedBy: "rotation", successorId: rotated.info!.id });
  } finally {
    for (const stream of streams) stream.close();
    for (const client of clients) client.close();
  }
}

/** The successor's first use, on one replica, revokes the old token everywhere. */
async function successorUseStory(services: ServiceUnderTest[], admin: string): Promise<void> {
  const clients = services.map((s) => grpcClient(TokenService, `127.0.0.1:${s.service.grpcPort}`));
  try {
    const old = await clients[0]!.unary<IssueTokenResponse>("issueToken", { name: "switch", subject: "switch@example.com", scopes: SCOPES }, bearer(admin));
    for (const client of clients) expect(await stateOn(client, admin, old.token)).toBe("active");
    const rotated = await clients[0]!.unary<RotateTokenResponse>("rotateToken", { target: { case: "tokenId", value: old.info!.id }, gracePeriod: durationFromMs(3_600_000), revokeOnSuccessorUse: true }, bearer(admin));
    expect(rotated.predecessor!.revokeOnSuccessorUse).toBe(true);
    // The deployment switched: it uses the successor as its own credential, on the last replica.
    await clients[clients.length - 1]!.unary<ListTokensResponse>("listTokens", {}, bearer(rotated.token));
    for (const client of clients) await expect.poll(() => stateOn(client, admin, old.token), POLL).toBe("REVOKED");
    await expect.poll(async () => (await revokedEvents(clients[0]!, admin, old.info!.id)).length, POLL).toBe(1);
  } finally {
    for (const client of clients) client.close();
  }
}

describe("rotation on PostgreSQL, two replicas", () => {
  let db: TestDatabase;
  let a: ServiceUnderTest;
  let b: ServiceUnderTest;
  const env = () => ({ DATABASE_URL: db.url, CACHE_STALENESS: "10m", REVOCATION_HEARTBEAT: "200ms", REVOCATION_HEARTBEAT_TIMEOUT: "1s", REVOCATION_SCHEDULER_INTERVAL: "200ms", RATE_LIMIT_LIST: "off", SECURITY_EVENT_WINDOW: "200ms" });

  beforeAll(async () => {
    db = await createTestDatabase();
    a = await startTestService(env());
    b = await startTestService(env());
  });

  afterAll(async () => {
    await Promise.all([a?.service.stop(), b?.service.stop()]);
    await db?.drop();
  });

  it("revokes the old token once at the end of the grace period, pushed to both replicas and their streams", async () => {
    await graceStory([a, b], a.bootstrapToken!);
  });

  it("revokes the old token at the successor's first use on another replica", async () => {
    await successorUseStory([a, b], a.bootstrapToken!);
  });

  it("a scheduled revocation survives the replica that scheduled it", async () => {
    const c = await startTestService(env());
    const admin = a.bootstrapToken!;
    const onB = grpcClient(TokenService, `127.0.0.1:${b.service.grpcPort}`);
    const onC = grpcClient(TokenService, `127.0.0.1:${c.service.grpcPort}`);
    try {
      const old = await onC.unary<IssueTokenResponse>("issueToken", { name: "orphaned", subject: "restart@example.com" }, bearer(admin));
      expect(await stateOn(onB, admin, old.token)).toBe("active");
      await onC.unary<RotateTokenResponse>("rotateToken", { target: { case: "token", value: old.token }, gracePeriod: durationFromMs(1000) }, bearer(admin));
      onC.close();
      await c.service.stop();
      await expect.poll(() => stateOn(onB, admin, old.token), POLL).toBe("REVOKED");
    } finally {
      onB.close();
    }
  });

  it("rotates through the Connect port too, and raises rotated_token_reused when an old copy is used after the new one", async () => {
    const admin = a.bootstrapToken!;
    const connect = createClient(TokenService, createConnectTransport({ baseUrl: `http://127.0.0.1:${b.service.httpPort}`, httpVersion: "1.1" }));
    const headers = { authorization: `Bearer ${admin}` };
    const old = await connect.issueToken({ name: "copy", subject: "copy@example.com", scopes: SCOPES }, { headers });
    // Replica A holds the old token's answer from before the rotation: it must still notice.
    const warm = grpcClient(TokenService, `127.0.0.1:${a.service.grpcPort}`);
    expect(await stateOn(warm, admin, old.token)).toBe("active");
    warm.close();
    const rotated = await connect.rotateToken({ target: { case: "token", value: old.token }, gracePeriod: durationFromMs(3_600_000) }, { headers });
    expect(rotated.info!.predecessorId).toBe(old.info!.id);
    await expect(connect.rotateToken({ target: { case: "token", value: old.token } }, { headers })).rejects.toMatchObject({ code: 9 }); // FAILED_PRECONDITION
    // The new copy is used (on one replica), then an old copy (on the other).
    await connect.introspectToken({ token: rotated.token }, { headers });
    const onA = grpcClient(TokenService, `127.0.0.1:${a.service.grpcPort}`);
    try {
      await expect
        .poll(async () => {
          await onA.unary("introspectToken", { token: old.token }, bearer(admin));
          const events = await onA.unary<ListSecurityEventsResponse>("listSecurityEvents", { type: "rotated_token_reused" }, bearer(admin));
          return events.events.filter((e) => e.tokenId === old.info!.id).length;
        }, POLL)
        .toBeGreaterThan(0);
    } finally {
      onA.close();
    }
  });
});

describe("rotation on PGlite, one service", () => {
  let sut: ServiceUnderTest;

  beforeAll(async () => {
    sut = await startTestService({ DATA_DIR: "memory://", CACHE_STALENESS: "10m", REVOCATION_HEARTBEAT: "200ms", REVOCATION_SCHEDULER_INTERVAL: "200ms", RATE_LIMIT_LIST: "off", SECURITY_EVENT_WINDOW: "200ms" });
  });

  afterAll(async () => {
    await sut?.service.stop();
  });

  it("revokes the old token once at the end of the grace period, pushed to the stream", async () => {
    await graceStory([sut], sut.bootstrapToken!);
  });

  it("revokes the old token at the successor's first use", async () => {
    await successorUseStory([sut], sut.bootstrapToken!);
  });
});

describe("tokenctl rotate and revoke-many, on PGlite", () => {
  let sut: ServiceUnderTest;

  beforeAll(async () => {
    sut = await startTestService({ DATA_DIR: "memory://", CACHE_STALENESS: "10m", REVOCATION_HEARTBEAT: "200ms", REVOCATION_SCHEDULER_INTERVAL: "200ms" });
  });

  afterAll(async () => {
    await sut?.service.stop();
  });

  const tokenctl = async (args: string[], stdin = "") => {
    const input = new PassThrough();
    input.end(stdin);
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    let out = "";
    let err = "";
    stdout.setEncoding("utf8").on("data", (c: string) => (out += c));
    stderr.setEncoding("utf8").on("data", (c: string) => (err += c));
    const code = await run(args, { TOKENCTL_ADDR: `http://127.0.0.1:${sut.service.httpPort}`, TOKENCTL_TOKEN: sut.bootstrapToken! }, { stdin: input, stdout, stderr });
    return { code, stdout: out, stderr: err };
  };

  it("rotate prints only the successor, warns like issue and says until when the old one works", async () => {
    const client = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
    try {
      const old = await client.unary<IssueTokenResponse>("issueToken", { name: "cli", subject: "cli@example.com", scopes: ["orders.write"] }, bearer(sut.bootstrapToken!));
      const rotated = await tokenctl(["rotate", "-", "--grace", "2h"], `${old.token}\n`);
      expect(rotated.code).toBe(0);
      expect(rotated.stdout).toMatch(/^cf-[0-9A-Za-z]{22}\n$/);
      expect(rotated.stderr).toContain("tokenctl: warning: this token has scopes beyond read: orders.write");
      expect(rotated.stderr).toMatch(new RegExp(`tokenctl: warning: the old token ${old.info!.id} \\(cf-…${old.token.slice(-4)}\\) keeps working until \\d{4}-`));
      expect(rotated.stderr).not.toContain(old.token);
      expect(await stateOn(client, sut.bootstrapToken!, rotated.stdout.trim())).toBe("active");
      const again = await tokenctl(["rotate", "--id", old.info!.id]);
      expect(again).toMatchObject({ code: 1 });
      expect(again.stderr).toContain("tokenctl: failed_precondition: the token was rotated already");
      await expect(tokenctl(["rotate"])).rejects.toThrow("rotate needs exactly one of <token>, - (the token on stdin) or --id <uuid>");
    } finally {
      client.close();
    }
  });

  it("revoke-many dry-runs, revokes, and refuses an empty selector", async () => {
    const client = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
    try {
      for (let i = 0; i < 3; i++) await client.unary("issueToken", { name: "many", subject: "many@example.com" }, bearer(sut.bootstrapToken!));
      const dry = await tokenctl(["revoke-many", "--subject", "many@example.com", "--dry-run"]);
      expect(dry.code).toBe(0);
      expect(dry.stdout.split("\n")[0]).toBe("3 tokens match; nothing was revoked (dry run)");
      const done = await tokenctl(["revoke-many", "--subject", "many@example.com", "--name", "many", "--reason", "cleanup"]);
      expect(done.code).toBe(0);
      expect(done.stdout).toMatch(/^3 tokens revoked \(operation [0-9a-f-]{36}\)\n$/);
      const wide = await tokenctl(["revoke-many", "--name", "nothing-like-this"]);
      expect(wide.stderr).toContain("tokenctl: warning: no --subject");
      expect(wide.stdout).toMatch(/^0 tokens revoked/);
      await expect(tokenctl(["revoke-many"])).rejects.toThrow("revoke-many needs at least one of");
      await expect(tokenctl(["revoke-many", "--created-before", "yesterday"])).rejects.toThrow("--created-before must be an ISO 8601 time");
    } finally {
      client.close();
    }
  });
});
