import * as grpcJs from "@grpc/grpc-js";
import { PassThrough } from "node:stream";
import pg from "pg";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  Environment,
  InactiveReason,
  TokenService,
  type IntrospectTokenResponse,
  type IssueTokenResponse,
  type ListSecurityEventsResponse,
  type ListTokensResponse,
  type RevokeTokenResponse,
} from "../../gen/tokens/v1/token_service_pb.js";
import { runApiCommand } from "../../src/cli/api-commands.js";
import { buildClaims, newTokenRecord } from "../../src/domain/claims.js";
import { bootstrapAdmin } from "../../src/domain/issue.js";
import { mintToken } from "../../src/domain/token-format.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, TEST_KEK, type ServiceUnderTest } from "../support/service.js";

/**
 * A leaked token and everything it made: a token mints children and
 * grandchildren (on either replica), is revoked with `cascade`, and none of
 * them introspects active anywhere, while every WatchRevocations stream hears
 * of each one. The staleness bound is set far out, so only the pushed
 * notices can explain a prompt answer.
 */

type Client = ReturnType<typeof grpcClient>;
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const CREATOR = ["tokens.create", "tokens.read", "tokens.revoke", "tokens.introspect"];

/** The tree under a root token, and one unrelated token of the same subject. */
interface Family {
  readonly root: IssueTokenResponse;
  readonly descendants: IssueTokenResponse[];
  readonly bystander: IssueTokenResponse;
}

/**
 * admin → root → 3 children (alternating replicas) → 2 grandchildren each →
 * one great-grandchild: 10 descendants in all.
 */
async function growFamily(clients: Client[], admin: string, subject: string): Promise<Family> {
  const on = (i: number) => clients[i % clients.length]!;
  const issue = (i: number, caller: string, name: string) =>
    on(i).unary<IssueTokenResponse>("issueToken", { name, scopes: CREATOR, ...(caller === admin ? { subject } : {}) }, bearer(caller));
  const root = await issue(0, admin, "root");
  const descendants: IssueTokenResponse[] = [];
  for (let c = 0; c < 3; c++) {
    const child = await issue(c, root.token, `child${c}`);
    descendants.push(child);
    for (let g = 0; g < 2; g++) descendants.push(await issue(c + g + 1, child.token, `grandchild${c}.${g}`));
  }
  descendants.push(await issue(1, descendants[1]!.token, "great-grandchild"));
  const bystander = await issue(1, admin, "bystander");
  return { root, descendants, bystander };
}

/** "active", or the inactive reason's name. */
const stateOn = (client: Client, admin: string, token: string) =>
  client.unary<IntrospectTokenResponse>("introspectToken", { token }, bearer(admin)).then((r) => (r.active ? "active" : InactiveReason[r.reason]));

/** An open WatchRevocations stream collecting revoked token ids; resolves once its first heartbeat proves it open. */
async function watch(client: Client, token: string): Promise<{ ids: Set<string>; close(): void }> {
  const md = new grpcJs.Metadata();
  md.set("authorization", `Bearer ${token}`);
  type Event = { event: { case: string; value?: { tokenId?: string } } };
  const stream = (client.client as unknown as Record<string, (req: object, md: grpcJs.Metadata) => grpcJs.ClientReadableStream<Event>>).watchRevocations!.call(
    client.client,
    { heartbeatInterval: durationFromMs(100) },
    md,
  );
  stream.on("error", () => undefined); // cancelling ends it with CANCELLED
  const ids = new Set<string>();
  const open = new Promise<void>((resolve) =>
    stream.on("data", (m: Event) => {
      if (m.event.case === "revocation" && m.event.value?.tokenId) ids.add(m.event.value.tokenId);
      if (m.event.case === "heartbeat") resolve();
    }),
  );
  await open;
  return { ids, close: () => stream.cancel() };
}

/** The whole story against any set of replicas sharing one store. */
async function cascadeStory(services: ServiceUnderTest[], admin: string): Promise<void> {
  const clients = services.map((s) => grpcClient(TokenService, `127.0.0.1:${s.service.grpcPort}`));
  const streams: Awaited<ReturnType<typeof watch>>[] = [];
  try {
    const family = await growFamily(clients, admin, `leak-${services.length}@example.com`);
    const everyone = [family.root, ...family.descendants];
    // Every issuer link is recorded and listable.
    const children = await clients[0]!.unary<ListTokensResponse>("listTokens", { issuedByTokenId: family.root.info!.id }, bearer(admin));
    expect(children.tokens.map((t) => t.name).sort()).toEqual(["child0", "child1", "child2"]);
    expect(children.tokens.every((t) => t.issuedByTokenId === family.root.info!.id)).toBe(true);

    // Warm every replica's cache: each now holds every token as active.
    for (const client of clients) for (const t of [...everyone, family.bystander]) expect(await stateOn(client, admin, t.token)).toBe("active");
    for (const client of clients) streams.push(await watch(client, admin));

    // The holder of the leaked root revokes it with everything below it, on the first replica.
    const answer = await clients[0]!.unary<RevokeTokenResponse>("revokeToken", { target: { case: "token", value: family.root.token }, cascade: true, reason: "leaked" }, bearer(family.root.token));
    expect(answer).toMatchObject({ alreadyRevoked: false, revokedCount: everyone.length });

    for (const client of clients) {
      for (const t of everyone) await expect.poll(() => stateOn(client, admin, t.token), { timeout: 5_000, interval: 10 }).toBe("REVOKED");
      expect(await stateOn(client, admin, family.bystander.token)).toBe("active");
    }
    const ids = everyone.map((t) => t.info!.id).sort();
    for (const stream of streams) await expect.poll(() => [...stream.ids].sort(), { timeout: 5_000, interval: 10 }).toEqual(ids);

    // One security event for the cascade, with the count.
    const events = await clients[0]!.unary<ListSecurityEventsResponse>("listSecurityEvents", { type: "token_revoked" }, bearer(admin));
    const ours = events.events.filter((e) => e.tokenId === family.root.info!.id);
    expect(ours.map((e) => [e.message, e.count])).toEqual([[`token and ${everyone.length - 1} descendants revoked (cascade, ${everyone.length} in all): leaked`, 1n]]);

    // Repeating it revokes nothing more.
    const again = await clients[clients.length - 1]!.unary<RevokeTokenResponse>("revokeToken", { target: { case: "tokenId", value: family.root.info!.id }, cascade: true }, bearer(admin));
    expect(again).toMatchObject({ alreadyRevoked: true, revokedCount: 0 });
  } finally {
    for (const stream of streams) stream.close();
    for (const client of clients) client.close();
  }
}

/**
 * The store itself refuses a child of a revoked issuer: a replica may still
 * hold the issuer as active in its cache for a moment after the cascade.
 */
async function refusesOrphans(service: ServiceUnderTest, admin: string): Promise<void> {
  const client = grpcClient(TokenService, `127.0.0.1:${service.service.grpcPort}`);
  try {
    const issuer = await client.unary<IssueTokenResponse>("issueToken", { name: "issuer", subject: "orphan@example.com", scopes: CREATOR }, bearer(admin));
    await client.unary("revokeToken", { target: { case: "tokenId", value: issuer.info!.id } }, bearer(admin));
    const now = new Date();
    const claims = buildClaims({ subject: "orphan@example.com", name: "late child", environment: "development", issuedAt: now, expiresAt: new Date(now.getTime() + 60_000) });
    const row = newTokenRecord(claims, mintToken("development"), "orphan@example.com", issuer.info!.id);
    await expect(service.service.deps.store.insert(row, { maxActivePerSubject: 100, now })).rejects.toMatchObject({ code: "unauthenticated" });
    expect(await service.service.deps.store.findById(row.id)).toBeUndefined();
  } finally {
    client.close();
  }
}

describe("cascading revocation on PostgreSQL, two replicas", () => {
  let db: TestDatabase;
  let a: ServiceUnderTest;
  let b: ServiceUnderTest;

  beforeAll(async () => {
    db = await createTestDatabase();
    const env = { DATABASE_URL: db.url, CACHE_STALENESS: "10m", REVOCATION_HEARTBEAT: "200ms", REVOCATION_HEARTBEAT_TIMEOUT: "1s", MAX_ACTIVE_TOKENS_PER_SUBJECT: "100" };
    a = await startTestService(env);
    b = await startTestService(env);
  });

  afterAll(async () => {
    await Promise.all([a?.service.stop(), b?.service.stop()]);
    await db?.drop();
  });

  it("revokes a token, its children and grandchildren everywhere, pushed to every replica and stream", async () => {
    await cascadeStory([a, b], a.bootstrapToken!);
  });

  it("refuses to store a child of a revoked issuer", async () => {
    await refusesOrphans(b, a.bootstrapToken!);
  });

  describe("racing an issue", () => {
    let side: pg.Client;
    beforeAll(async () => {
      side = new pg.Client({ connectionString: db.url });
      await side.connect();
    });
    afterAll(async () => {
      await side?.end();
    });

    /** Resolves once some session of the test database waits on a lock: the racer is blocked. */
    const someoneWaits = () =>
      expect
        .poll(async () => (await side.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")).rows[0].n, { timeout: 5_000, interval: 10 })
        .toBeGreaterThan(0);

    const rowUnder = (issuerId: string) => {
      const now = new Date();
      const claims = buildClaims({ subject: "race@example.com", name: "racer", environment: "development", issuedAt: now, expiresAt: new Date(now.getTime() + 60_000) });
      return { row: newTokenRecord(claims, mintToken("development"), "race@example.com", issuerId), now };
    };

    it("catches a child whose issue committed while the cascade waited for it", async () => {
      const client = grpcClient(TokenService, `127.0.0.1:${a.service.grpcPort}`);
      const root = await client.unary<IssueTokenResponse>("issueToken", { name: "race-root", subject: "race@example.com", scopes: CREATOR }, bearer(a.bootstrapToken!));
      client.close();
      // Another session issues a child under the root and holds its transaction open.
      const racer = new pg.Client({ connectionString: db.url });
      await racer.connect();
      try {
        const { row, now } = rowUnder(root.info!.id);
        await racer.query("BEGIN");
        await racer.query(
          "SELECT id FROM insert_token_capped_v2($1, $2, $3, $4, $5, $6, $7::text[], $8::text[], $9::text[], $10, $11::jsonb, $12, $13, $14, $15, $16::uuid, $17, $18)",
          [row.id, Buffer.from(row.digest), row.displayHint, row.name, row.subject, row.fullName, [], [], [], false, "{}", row.environment, row.createdAt, row.createdBy, row.expiresAt, row.issuedByTokenId, 100, now],
        );
        // The cascade starts before the child commits, so its first snapshot cannot see it.
        const cascade = a.service.deps.store.revokeCascade(root.info!.id, { by: "admin", reason: "race", at: new Date() });
        await someoneWaits();
        await racer.query("COMMIT");
        const outcome = await cascade;
        expect(outcome?.descendants.map((d) => d.id)).toEqual([row.id]);
        expect((await a.service.deps.store.findById(row.id))?.revokedAt).not.toBeNull();
      } finally {
        await racer.end();
      }
    });

    it("refuses a child whose issue waited for the cascade to commit", async () => {
      const client = grpcClient(TokenService, `127.0.0.1:${a.service.grpcPort}`);
      const root = await client.unary<IssueTokenResponse>("issueToken", { name: "race-root-2", subject: "race@example.com", scopes: CREATOR }, bearer(a.bootstrapToken!));
      client.close();
      // A revocation of the issuer in flight: its row lock is held until commit.
      await side.query("BEGIN");
      await side.query("UPDATE tokens SET revoked_at = now(), revoked_by = 'admin', revoke_reason = 'race' WHERE id = $1", [root.info!.id]);
      const { row, now } = rowUnder(root.info!.id);
      const issue = a.service.deps.store.insert(row, { maxActivePerSubject: 100, now }).then(
        () => "stored",
        (e: { code: string }) => e.code,
      );
      const watcher = new pg.Client({ connectionString: db.url });
      await watcher.connect();
      try {
        await expect
          .poll(async () => (await watcher.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")).rows[0].n, { timeout: 5_000, interval: 10 })
          .toBeGreaterThan(0);
      } finally {
        await watcher.end();
      }
      await side.query("COMMIT");
      expect(await issue).toBe("unauthenticated");
      expect(await a.service.deps.store.findById(row.id)).toBeUndefined();
    });
  });
});

describe("cascading revocation on PGlite, one service", () => {
  let sut: ServiceUnderTest;

  beforeAll(async () => {
    sut = await startTestService({ DATA_DIR: "memory://", CACHE_STALENESS: "10m", REVOCATION_HEARTBEAT: "200ms", MAX_ACTIVE_TOKENS_PER_SUBJECT: "100" });
  });

  afterAll(async () => {
    await sut?.service.stop();
  });

  it("revokes a token, its children and grandchildren, pushed to the stream", async () => {
    await cascadeStory([sut], sut.bootstrapToken!);
  });

  it("refuses to store a child of a revoked issuer", async () => {
    await refusesOrphans(sut, sut.bootstrapToken!);
  });

  it("tokenctl lists by issuer and revokes with --cascade", async () => {
    const admin = sut.bootstrapToken!;
    const tokenctl = async (args: string[]) => {
      const stdout = new PassThrough();
      const stderr = new PassThrough();
      let out = "";
      let err = "";
      stdout.setEncoding("utf8").on("data", (c: string) => (out += c));
      stderr.setEncoding("utf8").on("data", (c: string) => (err += c));
      const code = await runApiCommand(args[0] as "list", args.slice(1), { TOKENCTL_ADDR: `http://127.0.0.1:${sut.service.httpPort}`, TOKENCTL_TOKEN: admin }, { stdin: new PassThrough(), stdout, stderr });
      return { code, stdout: out, stderr: err };
    };
    const client = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
    try {
      const root = await client.unary<IssueTokenResponse>("issueToken", { name: "cli-root", subject: "cli@example.com", scopes: CREATOR }, bearer(admin));
      const child = await client.unary<IssueTokenResponse>("issueToken", { name: "cli-child", scopes: CREATOR }, bearer(root.token));
      await client.unary<IssueTokenResponse>("issueToken", { name: "cli-grandchild" }, bearer(child.token));

      const listed = await tokenctl(["list", "--issued-by", root.info!.id, "--json"]);
      expect(listed.code).toBe(0);
      expect(listed.stdout.trim().split("\n").map((line) => (JSON.parse(line) as { name: string; issuedByTokenId: string }))).toEqual([
        expect.objectContaining({ name: "cli-child", issuedByTokenId: root.info!.id }),
      ]);
      const revoked = await tokenctl(["revoke", "--id", root.info!.id, "--cascade"]);
      expect(revoked).toMatchObject({ code: 0, stdout: `revoked ${root.info!.id} (cli-root, ${root.info!.displayHint})\n3 tokens revoked by this call (cascade)\n` });
      expect(await stateOn(client, admin, child.token)).toBe("REVOKED");
      const again = await tokenctl(["revoke", "--id", root.info!.id, "--cascade", "--json"]);
      expect(JSON.parse(again.stdout)).toMatchObject({ alreadyRevoked: true });
    } finally {
      client.close();
    }
  });
});

describe("environments sharing one PostgreSQL store", () => {
  let db: TestDatabase;
  let dev: ServiceUnderTest;
  let stg: ServiceUnderTest;
  let devClient: Client;
  let stgClient: Client;
  let devAdmin: string;
  let stgAdmin: string;

  beforeAll(async () => {
    db = await createTestDatabase();
    const env = { DATABASE_URL: db.url, MAX_ACTIVE_TOKENS_PER_SUBJECT: "2", FORWARD_AUTH_ENABLED: "false", KEY_ENCRYPTION_KEY: TEST_KEK };
    dev = await startTestService({ ...env, TOKEN_ENVIRONMENT: "development" });
    stg = await startTestService({ ...env, TOKEN_ENVIRONMENT: "staging" });
    devAdmin = dev.bootstrapToken!;
    // Staging never prints a first-start token; bootstrap as `tokenctl bootstrap` would.
    stgAdmin = (await bootstrapAdmin(stg.service.deps, "admin@example.com", "cli")).token;
    devClient = grpcClient(TokenService, `127.0.0.1:${dev.service.grpcPort}`);
    stgClient = grpcClient(TokenService, `127.0.0.1:${stg.service.grpcPort}`);
  });

  afterAll(async () => {
    devClient?.close();
    stgClient?.close();
    await Promise.all([dev?.service.stop(), stg?.service.stop()]);
    await db?.drop();
  });

  it("neither lists nor counts the other environment's tokens", async () => {
    const subject = "carol@example.com";
    for (let i = 0; i < 2; i++) await stgClient.unary("issueToken", { name: `stg${i}`, subject }, bearer(stgAdmin));
    // Staging's two active tokens for carol do not use up development's allowance of two.
    for (let i = 0; i < 2; i++) await devClient.unary("issueToken", { name: `dev${i}`, subject }, bearer(devAdmin));
    await expect(devClient.unary("issueToken", { name: "dev2", subject }, bearer(devAdmin))).rejects.toMatchObject({ code: grpcJs.status.RESOURCE_EXHAUSTED });

    const devList = await devClient.unary<ListTokensResponse>("listTokens", { includeRevoked: true, includeExpired: true }, bearer(devAdmin));
    expect(new Set(devList.tokens.map((t) => t.environment))).toEqual(new Set([Environment.DEVELOPMENT]));
    expect(devList.tokens.filter((t) => t.subject === subject).map((t) => t.name).sort()).toEqual(["dev0", "dev1"]);
    const stgList = await stgClient.unary<ListTokensResponse>("listTokens", { subject, includeRevoked: true, includeExpired: true }, bearer(stgAdmin));
    expect(stgList.tokens.map((t) => t.name).sort()).toEqual(["stg0", "stg1"]);
    expect(stgList.tokens.every((t) => t.environment === Environment.STAGING)).toBe(true);
  });
});
