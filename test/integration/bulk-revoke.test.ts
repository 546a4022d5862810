import { randomUUID } from "node:crypto";
import * as grpcJs from "@grpc/grpc-js";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  InactiveReason,
  TokenService,
  type IntrospectTokenResponse,
  type IssueTokenResponse,
  type ListSecurityEventsResponse,
  type RevokeTokensResponse,
} from "../../gen/tokens/v1/token_service_pb.js";
import { mintToken } from "../../src/domain/token-format.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

/**
 * RevokeTokens on whole services: thousands of tokens seeded with one SQL
 * statement, revoked on one replica as one durable operation, each pushed to
 * the other replica's cache and WatchRevocations stream, with one security
 * event; the hot path keeps answering meanwhile. Polls, never sleeps.
 */

type Client = ReturnType<typeof grpcClient>;
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const POLL = { timeout: 30_000, interval: 25 };
const SEEDED = 2000;

const stateOn = (client: Client, admin: string, token: string) =>
  client.unary<IntrospectTokenResponse>("introspectToken", { token }, bearer(admin)).then((r) => (r.active ? "active" : InactiveReason[r.reason]));

/** Inserts `count` tokens of `subject` in one statement (arrays unnested: no bind-parameter limit); returns their values. */
async function seed(url: string, subject: string, count: number): Promise<string[]> {
  const minted = Array.from({ length: count }, () => mintToken("development"));
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const createdAt = new Date(Date.now() - 60_000);
    await client.query(
      `INSERT INTO tokens (id, digest, display_hint, name, subject, full_name, teams, scopes, namespaces, is_admin, metadata, environment, created_at, created_by, expires_at)
       SELECT gen_random_uuid(), v.d, v.h, 'seeded', $3, '', ARRAY['bulk']::text[], ARRAY[]::text[], ARRAY[]::text[], false, '{}'::jsonb, 'development', $4, 'seed', $5
       FROM unnest($1::bytea[], $2::text[]) AS v(d, h)`,
      [minted.map((m) => m.digest), minted.map((m) => m.displayHint), subject, createdAt, new Date(Date.now() + 86_400_000)],
    );
  } finally {
    await client.end();
  }
  return minted.map((m) => m.token);
}

/** An open WatchRevocations stream collecting revoked token ids. */
async function watch(client: Client, token: string): Promise<{ ids: Set<string>; close(): void }> {
  const md = new grpcJs.Metadata();
  md.set("authorization", `Bearer ${token}`);
  type Event = { event: { case: string; value?: { tokenId?: string } } };
  const stream = (client.client as unknown as Record<string, (req: object, md: grpcJs.Metadata) => grpcJs.ClientReadableStream<Event>>).watchRevocations!.call(
    client.client,
    { heartbeatInterval: durationFromMs(100) },
    md,
  );
  stream.on("error", () => undefined);
  const ids = new Set<string>();
  await new Promise<void>((resolve) =>
    stream.on("data", (m: Event) => {
      if (m.event.case === "revocation" && m.event.value?.tokenId) ids.add(m.event.value.tokenId);
      if (m.event.case === "heartbeat") resolve();
    }),
  );
  return { ids, close: () => stream.cancel() };
}

const bulkEvents = async (client: Client, admin: string) =>
  (await client.unary<ListSecurityEventsResponse>("listSecurityEvents", { type: "tokens_bulk_revoked", pageSize: 500 }, bearer(admin))).events;

const ENV = { CACHE_STALENESS: "10m", REVOCATION_HEARTBEAT: "200ms", REVOCATION_SCHEDULER_INTERVAL: "200ms", RATE_LIMIT_LIST: "off", SECURITY_EVENT_WINDOW: "200ms", MAX_ACTIVE_TOKENS_PER_SUBJECT: "100000" };

describe("bulk revocation on PostgreSQL, two replicas", () => {
  let db: TestDatabase;
  let a: ServiceUnderTest;
  let b: ServiceUnderTest;

  beforeAll(async () => {
    db = await createTestDatabase();
    const env = { ...ENV, DATABASE_URL: db.url, REVOCATION_HEARTBEAT_TIMEOUT: "1s" };
    a = await startTestService(env);
    b = await startTestService(env);
  });

  afterAll(async () => {
    await Promise.all([a?.service.stop(), b?.service.stop()]);
    await db?.drop();
  });

  it(`revokes ${SEEDED} tokens on one replica, every one pushed to the other and its stream, with one event; the hot path keeps answering`, async () => {
    const admin = a.bootstrapToken!;
    const subject = "departed@example.com";
    const tokens = await seed(db.url, subject, SEEDED);
    const onA = grpcClient(TokenService, `127.0.0.1:${a.service.grpcPort}`);
    const onB = grpcClient(TokenService, `127.0.0.1:${b.service.grpcPort}`);
    const stream = await watch(onB, admin);
    try {
      const bystander = await onA.unary<IssueTokenResponse>("issueToken", { name: "stays", subject: "stays@example.com" }, bearer(admin));
      const sample = [...tokens.slice(0, 20), tokens[SEEDED - 1]!];
      for (const token of sample) expect(await stateOn(onB, admin, token)).toBe("active");

      // Dry run through the Connect port: the count and a first page, nothing changed.
      const connect = createClient(TokenService, createConnectTransport({ baseUrl: `http://127.0.0.1:${b.service.httpPort}`, httpVersion: "1.1" }));
      const dry = await connect.revokeTokens({ selector: { subject }, dryRun: true }, { headers: bearer(admin) });
      expect(dry.matchedCount).toBe(BigInt(SEEDED));
      expect(dry.tokens).toHaveLength(50);
      expect(await stateOn(onB, admin, sample[0]!)).toBe("active");

      // Introspection on the other replica keeps answering while the operation runs.
      let running = true;
      let answered = 0;
      const hotPath = (async () => {
        while (running) {
          expect(await stateOn(onB, admin, bystander.token)).toBe("active");
          answered++;
        }
      })();
      const done = await onA.unary<RevokeTokensResponse>("revokeTokens", { selector: { subject, team: "bulk" }, reason: "offboarded" }, bearer(admin));
      running = false;
      await hotPath;
      expect(answered).toBeGreaterThan(0);
      expect(done.revokedCount).toBe(BigInt(SEEDED));
      expect(done.matchedCount).toBe(BigInt(SEEDED));

      for (const token of sample) await expect.poll(() => stateOn(onB, admin, token), POLL).toBe("REVOKED");
      await expect.poll(() => stream.ids.size, POLL).toBe(SEEDED);
      expect(await stateOn(onB, admin, bystander.token)).toBe("active");
      await expect.poll(async () => (await bulkEvents(onA, admin)).map((e) => [e.message, e.count]), POLL).toEqual([[`${SEEDED} tokens revoked in bulk (subject=${subject}, team=bulk): offboarded`, 1n]]);
      // Nothing left: a second run revokes nothing.
      expect((await onB.unary<RevokeTokensResponse>("revokeTokens", { selector: { subject } }, bearer(admin))).revokedCount).toBe(0n);
    } finally {
      stream.close();
      onA.close();
      onB.close();
    }
  });

  it("an operation whose replica stopped is finished by a live one, once", async () => {
    const admin = a.bootstrapToken!;
    const subject = "resumed@example.com";
    const tokens = await seed(db.url, subject, 300);
    const onB = grpcClient(TokenService, `127.0.0.1:${b.service.grpcPort}`);
    try {
      const before = (await bulkEvents(onB, admin)).length;
      const startedAt = new Date();
      // Recorded with a lease that has run out and no batch done: its runner died at once.
      await a.service.deps.lifecycle!.store.createBulkRevocation(
        { id: randomUUID(), environment: "development", selector: { subject }, reason: "", requestedBy: "admin@localhost", callerTokenId: null, startedAt, revokedCount: 0, finishedAt: null },
        new Date(startedAt.getTime() - 1),
      );
      await expect.poll(() => stateOn(onB, admin, tokens[299]!), POLL).toBe("REVOKED");
      await expect.poll(async () => (await bulkEvents(onB, admin)).length, POLL).toBe(before + 1);
      expect((await bulkEvents(onB, admin))[0]!.message).toBe(`300 tokens revoked in bulk (subject=${subject})`);
    } finally {
      onB.close();
    }
  });

  it("keeps a non-admin to its own subject and refuses an empty selector", async () => {
    const admin = a.bootstrapToken!;
    const onA = grpcClient(TokenService, `127.0.0.1:${a.service.grpcPort}`);
    try {
      const mine = await onA.unary<IssueTokenResponse>("issueToken", { name: "self", subject: "self@example.com", scopes: ["tokens.revoke"] }, bearer(admin));
      const theirs = await onA.unary<IssueTokenResponse>("issueToken", { name: "self", subject: "other@example.com" }, bearer(admin));
      await expect(onA.unary("revokeTokens", { selector: {} }, bearer(mine.token))).rejects.toMatchObject({ code: grpcJs.status.INVALID_ARGUMENT, details: "selector: set at least one of subject, team, issued_by_token_id, name, created_before, expire_before" });
      await expect(onA.unary("revokeTokens", { selector: { subject: "other@example.com" } }, bearer(mine.token))).rejects.toMatchObject({ code: grpcJs.status.PERMISSION_DENIED });
      const done = await onA.unary<RevokeTokensResponse>("revokeTokens", { selector: { name: "self" } }, bearer(mine.token));
      expect(done.revokedCount).toBe(1n);
      expect(await stateOn(onA, admin, mine.token)).toBe("REVOKED");
      expect(await stateOn(onA, admin, theirs.token)).toBe("active");
    } finally {
      onA.close();
    }
  });
});

describe("bulk revocation on PGlite, one service", () => {
  let sut: ServiceUnderTest;

  beforeAll(async () => {
    sut = await startTestService({ ...ENV, DATA_DIR: "memory://" });
  });

  afterAll(async () => {
    await sut?.service.stop();
  });

  it("revokes every match, pushed to the stream, with one event", async () => {
    const admin = sut.bootstrapToken!;
    const client = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
    const stream = await watch(client, admin);
    try {
      const issued: IssueTokenResponse[] = [];
      for (let i = 0; i < 30; i++) issued.push(await client.unary<IssueTokenResponse>("issueToken", { name: "ci", subject: "pglite@example.com", teams: ["red"] }, bearer(admin)));
      for (const t of issued) expect(await stateOn(client, admin, t.token)).toBe("active");
      const connect = createClient(TokenService, createConnectTransport({ baseUrl: `http://127.0.0.1:${sut.service.httpPort}`, httpVersion: "1.1" }));
      const dry = await connect.revokeTokens({ selector: { team: "red" }, dryRun: true, pageSize: 5 }, { headers: bearer(admin) });
      expect(dry).toMatchObject({ matchedCount: 30n, revokedCount: 0n });
      expect(dry.tokens).toHaveLength(5);
      const done = await connect.revokeTokens({ selector: { team: "red", name: "ci" } }, { headers: bearer(admin) });
      expect(done.revokedCount).toBe(30n);
      for (const t of issued) expect(await stateOn(client, admin, t.token)).toBe("REVOKED");
      await expect.poll(() => stream.ids.size, POLL).toBe(30);
      await expect.poll(async () => (await bulkEvents(client, admin)).map((e) => e.message), POLL).toEqual(["30 tokens revoked in bulk (team=red, name=ci)"]);
    } finally {
      stream.close();
      client.close();
    }
  });
});
