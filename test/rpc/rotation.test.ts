import { durationFromMs, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createRouterTransport, type Client } from "@connectrpc/connect";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { InactiveReason, TokenService, TokenState } from "../../gen/tokens/v1/token_service_pb.js";
import { bootstrapAdmin } from "../../src/domain/issue.js";
import type { TokenDeps } from "../../src/domain/ports.js";
import { RateLimits } from "../../src/domain/rate-limit.js";
import { RevocationScheduler } from "../../src/domain/revocation-scheduler.js";
import { RotationWatcher } from "../../src/domain/rotate.js";
import { TokenServiceHandler } from "../../src/rpc/token-service.js";
import { migrateToLatest, openDatabase, type OpenedDatabase } from "../../src/storage/database.js";
import { KyselyTokenStore } from "../../src/storage/token-store.js";
import { fakeDeps } from "../support/fakes.js";

/**
 * RotateToken and RevokeTokens through the real service implementation on
 * Connect's in-memory transport, over a real store (embedded PGlite, one
 * per file): validation, permissions, mapping, the scheduler's passes and
 * the watcher of successor use, with a clock the tests move.
 */
let opened: OpenedDatabase;
let kysely: KyselyTokenStore;

beforeAll(async () => {
  opened = await openDatabase({ dataDir: "memory://", poolMax: 1, connectTimeoutMs: 2000, statementTimeoutMs: 0 });
  await migrateToLatest(opened.db);
  kysely = new KyselyTokenStore(opened.db, opened.prepared);
}, 60_000);

afterAll(async () => {
  await opened?.close();
});

const HOUR = 3_600_000;

function setup() {
  const f = fakeDeps({ maxActiveTokensPerSubject: 1000 });
  // Every test starts later than the last: the store is shared by the file.
  f.clock.advance(Math.floor(Math.random() * 1e9));
  const parts = { cache: f.cache, events: f.events, clock: f.clock, log: f.log, environment: f.deps.policy.environment };
  const watcher = new RotationWatcher({ lifecycle: kysely, tokens: kysely, ...parts });
  const deps: TokenDeps = { ...f.deps, store: kysely, lifecycle: { store: kysely, maxGraceMs: 7 * 24 * HOUR, defaultGraceMs: HOUR, watcher } };
  const transport = createRouterTransport(({ service }) => service(TokenService, new TokenServiceHandler(deps)));
  const client: Client<typeof TokenService> = createClient(TokenService, transport);
  const scheduler = () => new RevocationScheduler({ store: kysely, ...parts }, 1000);
  return { ...f, deps, client, scheduler };
}

const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });

async function code(promise: Promise<unknown>): Promise<{ code: Code; message: string }> {
  try {
    await promise;
  } catch (error) {
    const e = ConnectError.from(error);
    return { code: e.code, message: e.rawMessage };
  }
  throw new Error("expected the call to fail");
}

/** Polls until `check` holds (the watcher works off the request path). */
async function eventually(check: () => Promise<boolean> | boolean): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  throw new Error("condition never held");
}

describe("RotateToken", () => {
  let s: ReturnType<typeof setup>;
  let admin: string;
  let subject: string;
  beforeEach(async () => {
    s = setup();
    admin = (await bootstrapAdmin(s.deps, "admin@example.com", "cli")).token;
    subject = `bob-${Math.random().toString(36).slice(2)}@example.com`;
  });

  const issueBob = (extra: { scopes?: string[]; metadata?: Record<string, string> } = {}) =>
    s.client.issueToken(
      { name: "ci", subject, fullName: "Bob", scopes: extra.scopes ?? ["orders.read", "tokens.create", "tokens.revoke", "tokens.introspect"], teams: ["red"], namespaces: ["ns"], metadata: extra.metadata ?? { pipeline: "42" }, expiry: { case: "ttl", value: durationFromMs(10 * HOUR) } },
      as(admin),
    );

  it("issues a successor with the same claims and expiry, links both, and schedules the old one's revocation", async () => {
    const old = await issueBob();
    s.clock.advance(HOUR);
    const rotated = await s.client.rotateToken({ target: { case: "tokenId", value: old.info!.id }, gracePeriod: durationFromMs(2 * HOUR) }, as(admin));
    expect(rotated.token).toMatch(/^cf-/);
    expect(rotated.token).not.toBe(old.token);
    expect(rotated.info).toMatchObject({ name: "ci", subject, fullName: "Bob", scopes: old.info!.scopes, teams: ["red"], namespaces: ["ns"], metadata: { pipeline: "42" }, predecessorId: old.info!.id, successorId: "", state: TokenState.ACTIVE });
    expect(rotated.info!.expireTime).toEqual(old.info!.expireTime);
    expect(rotated.predecessor).toMatchObject({ id: old.info!.id, successorId: rotated.info!.id, state: TokenState.ACTIVE, revokeOnSuccessorUse: false });
    expect(timestampDate(rotated.predecessor!.scheduledRevokeTime!)).toEqual(new Date(s.clock.now().getTime() + 2 * HOUR));
    // Both work during the grace period.
    expect((await s.client.introspectToken({ token: old.token }, as(admin))).active).toBe(true);
    expect((await s.client.introspectToken({ token: rotated.token }, as(admin))).active).toBe(true);
    // ListTokens shows the links too.
    const listed = await s.client.listTokens({ subject }, as(admin));
    expect(listed.tokens.map((t) => [t.predecessorId, t.successorId])).toEqual([[old.info!.id, ""], ["", rotated.info!.id]]);
  });

  it("renews the lifetime when a ttl is given", async () => {
    const old = await issueBob();
    const rotated = await s.client.rotateToken({ target: { case: "token", value: old.token }, ttl: durationFromMs(48 * HOUR) }, as(admin));
    expect(rotated.info!.expireTime).toEqual(timestampFromDate(new Date(s.clock.now().getTime() + 48 * HOUR)));
  });

  it("revokes the old token at once with a zero grace period", async () => {
    const old = await issueBob();
    const rotated = await s.client.rotateToken({ target: { case: "token", value: old.token }, gracePeriod: durationFromMs(0), reason: "leaked in CI log" }, as(admin));
    expect(rotated.predecessor).toMatchObject({ state: TokenState.REVOKED, revokeReason: "leaked in CI log", successorId: rotated.info!.id });
    expect(rotated.predecessor!.scheduledRevokeTime).toBeUndefined();
    expect((await s.client.introspectToken({ token: old.token }, as(admin))).reason).toBe(InactiveReason.REVOKED);
    expect(s.events.events.filter((e) => e.type === "token_revoked" && e.tokenId === old.info!.id)).toHaveLength(1);
  });

  it("the scheduler revokes the old token when the grace period ends, exactly once across replicas", async () => {
    const old = await issueBob();
    await s.client.rotateToken({ target: { case: "tokenId", value: old.info!.id }, gracePeriod: durationFromMs(HOUR) }, as(admin));
    const [a, b] = [s.scheduler(), s.scheduler()];
    await Promise.all([a.tick(), b.tick()]);
    expect((await s.client.introspectToken({ token: old.token }, as(admin))).active).toBe(true);
    s.clock.advance(HOUR);
    await Promise.all([a.tick(), b.tick()]);
    expect((await s.client.introspectToken({ token: old.token }, as(admin))).reason).toBe(InactiveReason.REVOKED);
    expect(s.events.events.filter((e) => e.type === "token_revoked" && e.tokenId === old.info!.id)).toHaveLength(1);
    const info = (await s.client.listTokens({ subject, includeRevoked: true }, as(admin))).tokens.find((t) => t.id === old.info!.id)!;
    expect(info).toMatchObject({ state: TokenState.REVOKED, revokedBy: "rotation", revokeReason: "rotation grace period ended" });
    expect(info.scheduledRevokeTime).toBeUndefined();
  });

  it("with revoke_on_successor_use revokes the old token at the successor's first use", async () => {
    const old = await issueBob();
    const rotated = await s.client.rotateToken({ target: { case: "token", value: old.token }, revokeOnSuccessorUse: true }, as(admin));
    expect(rotated.predecessor!.revokeOnSuccessorUse).toBe(true);
    expect((await s.client.introspectToken({ token: old.token }, as(admin))).active).toBe(true);
    expect((await s.client.introspectToken({ token: rotated.token }, as(admin))).active).toBe(true);
    await eventually(async () => (await kysely.findById(old.info!.id))?.revokedAt != null);
    s.cache.clear();
    expect((await s.client.introspectToken({ token: old.token }, as(admin))).reason).toBe(InactiveReason.REVOKED);
    // A second use of the successor (another replica would do the same) revokes nothing more.
    await s.client.introspectToken({ token: rotated.token }, as(admin));
    expect(s.events.events.filter((e) => e.type === "token_revoked" && e.tokenId === old.info!.id)).toHaveLength(1);
  });

  it("raises rotated_token_reused when the old token is used after its successor was", async () => {
    const old = await issueBob();
    const rotated = await s.client.rotateToken({ target: { case: "token", value: old.token } }, as(admin));
    // Before the successor is used, the old token's use is normal.
    await s.client.introspectToken({ token: old.token }, as(admin));
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(s.events.events.filter((e) => e.type === "rotated_token_reused")).toHaveLength(0);
    await s.client.introspectToken({ token: rotated.token }, as(admin));
    await eventually(async () => (await kysely.findById(old.info!.id))?.rotation?.successorUsedAt != null);
    s.clock.advance(10_000); // past the per-token check interval
    expect((await s.client.introspectToken({ token: old.token }, as(admin))).active).toBe(true);
    await eventually(() => s.events.events.some((e) => e.type === "rotated_token_reused"));
    const event = s.events.events.find((e) => e.type === "rotated_token_reused")!;
    expect(event).toMatchObject({ severity: "warning", tokenId: old.info!.id, tokenHint: `cf-…${old.token.slice(-4)}` });
  });

  describe("permissions", () => {
    it("lets a holder with tokens.create and tokens.revoke rotate its own token within what it holds", async () => {
      const own = await issueBob({ metadata: {} });
      const rotated = await s.client.rotateToken({ target: { case: "token", value: own.token } }, as(own.token));
      expect(rotated.info).toMatchObject({ subject, scopes: own.info!.scopes, predecessorId: own.info!.id });
      // Not with metadata only an admin may set, nor renewed beyond its own lifetime.
      const labelled = await issueBob();
      expect((await code(s.client.rotateToken({ target: { case: "token", value: labelled.token } }, as(labelled.token)))).code).toBe(Code.PermissionDenied);
      const other = await issueBob({ metadata: {} });
      expect((await code(s.client.rotateToken({ target: { case: "token", value: other.token }, ttl: durationFromMs(100 * HOUR) }, as(other.token)))).code).toBe(Code.PermissionDenied);
    });

    it("answers NOT_FOUND for another subject's id, as for an unknown one", async () => {
      const bob = await issueBob();
      const carol = await s.client.issueToken({ name: "carol", subject: "carol@example.com", scopes: ["tokens.create", "tokens.revoke"] }, as(admin));
      expect(await code(s.client.rotateToken({ target: { case: "tokenId", value: bob.info!.id } }, as(carol.token)))).toEqual({ code: Code.NotFound, message: "token_id: no such token" });
      expect(await code(s.client.rotateToken({ target: { case: "tokenId", value: "00000000-0000-4000-8000-000000000000" } }, as(carol.token)))).toEqual({ code: Code.NotFound, message: "token_id: no such token" });
      // By value, a non-admin may not issue for another subject.
      expect((await code(s.client.rotateToken({ target: { case: "token", value: bob.token } }, as(carol.token)))).code).toBe(Code.PermissionDenied);
    });

    it("needs tokens.create and tokens.revoke", async () => {
      const createOnly = await issueBob({ scopes: ["tokens.create"] });
      expect((await code(s.client.rotateToken({ target: { case: "token", value: createOnly.token } }, as(createOnly.token)))).code).toBe(Code.PermissionDenied);
      const revokeOnly = await issueBob({ scopes: ["tokens.revoke"] });
      expect((await code(s.client.rotateToken({ target: { case: "token", value: revokeOnly.token } }, as(revokeOnly.token)))).code).toBe(Code.PermissionDenied);
    });
  });

  describe("refusals", () => {
    it.each([
      [{}, "target: set one of token or token_id"],
      [{ target: { case: "tokenId" as const, value: "nope" } }, "token_id: must be a UUID"],
      [{ target: { case: "token" as const, value: "" } }, "token: is required (or give token_id)"],
      [{ target: { case: "tokenId" as const, value: "00000000-0000-4000-8000-000000000000" }, gracePeriod: durationFromMs(8 * 24 * HOUR) }, "grace_period: must be between 0s and 7d"],
      [{ target: { case: "tokenId" as const, value: "00000000-0000-4000-8000-000000000000" }, gracePeriod: durationFromMs(-1000) }, "grace_period: must be between 0s and 7d"],
      [{ target: { case: "tokenId" as const, value: "00000000-0000-4000-8000-000000000000" }, reason: "x".repeat(513) }, "reason: must be at most 512 characters"],
      [{ target: { case: "tokenId" as const, value: "00000000-0000-4000-8000-000000000000" }, ttl: durationFromMs(-5) }, "ttl: must be between 1s and 365d"],
    ])("answers INVALID_ARGUMENT naming the field (%#)", async (req, message) => {
      expect(await code(s.client.rotateToken(req, as(admin)))).toEqual({ code: Code.InvalidArgument, message });
    });

    it("answers FAILED_PRECONDITION for a token rotated already, revoked or expired, and issues nothing", async () => {
      const old = await issueBob();
      await s.client.rotateToken({ target: { case: "token", value: old.token } }, as(admin));
      const count = async () => (await s.client.listTokens({ subject, includeRevoked: true, includeExpired: true }, as(admin))).tokens.length;
      const before = await count();
      expect((await code(s.client.rotateToken({ target: { case: "token", value: old.token } }, as(admin)))).code).toBe(Code.FailedPrecondition);
      const revoked = await issueBob();
      await s.client.revokeToken({ target: { case: "token", value: revoked.token } }, as(admin));
      expect((await code(s.client.rotateToken({ target: { case: "token", value: revoked.token } }, as(admin)))).code).toBe(Code.FailedPrecondition);
      expect(await count()).toBe(before + 1); // only the revoked one issued for the test
      expect((await code(s.client.rotateToken({ target: { case: "token", value: "cf-" + "A".repeat(22) } }, as(admin)))).code).toBe(Code.NotFound);
    });
  });
});

describe("RevokeTokens", () => {
  let s: ReturnType<typeof setup>;
  let admin: string;
  let subject: string;
  beforeEach(async () => {
    s = setup();
    admin = (await bootstrapAdmin(s.deps, "admin@example.com", "cli")).token;
    subject = `dana-${Math.random().toString(36).slice(2)}@example.com`;
  });

  const issue = (name: string, sub = subject, scopes: string[] = ["tokens.revoke"], teams: string[] = []) => s.client.issueToken({ name, subject: sub, scopes, teams }, as(admin));

  it("dry run counts and shows a first page without changing anything", async () => {
    for (let i = 0; i < 5; i++) await issue(`t${i}`);
    const dry = await s.client.revokeTokens({ selector: { subject }, dryRun: true, pageSize: 2 }, as(admin));
    expect(dry.matchedCount).toBe(5n);
    expect(dry.revokedCount).toBe(0n);
    expect(dry.operationId).toBe("");
    expect(dry.tokens.map((t) => t.name)).toHaveLength(2);
    expect((await s.client.listTokens({ subject }, as(admin))).tokens).toHaveLength(5);
    expect(s.events.events.filter((e) => e.type === "tokens_bulk_revoked")).toHaveLength(0);
  });

  it("revokes every match as one operation with one security event naming the selector and the count", async () => {
    const kept = await issue("keep");
    const doomed = [];
    for (let i = 0; i < 4; i++) doomed.push(await issue("ci", subject, ["tokens.revoke"], ["red"]));
    const done = await s.client.revokeTokens({ selector: { subject, team: "red", name: "ci" }, reason: "offboarding" }, as(admin));
    expect(done).toMatchObject({ matchedCount: 4n, revokedCount: 4n });
    expect(done.operationId).toMatch(/^[0-9a-f-]{36}$/);
    for (const token of doomed) expect((await s.client.introspectToken({ token: token.token }, as(admin))).reason).toBe(InactiveReason.REVOKED);
    expect((await s.client.introspectToken({ token: kept.token }, as(admin))).active).toBe(true);
    const events = s.events.events.filter((e) => e.type === "tokens_bulk_revoked");
    expect(events).toHaveLength(1);
    expect(events[0]!.message).toBe(`4 tokens revoked in bulk (subject=${subject}, team=red, name=ci): offboarding`);
    // Again: nothing left to revoke.
    expect((await s.client.revokeTokens({ selector: { subject, team: "red" } }, as(admin))).revokedCount).toBe(0n);
  });

  it("selects by issuing token, created-before and expiring-before", async () => {
    const parent = await issue("parent", subject, ["tokens.create", "tokens.revoke"]);
    const child = await s.client.issueToken({ name: "child" }, as(parent.token));
    const cutoff = s.clock.now();
    s.clock.advance(1000);
    const later = await issue("later");
    expect((await s.client.revokeTokens({ selector: { issuedByTokenId: parent.info!.id }, dryRun: true }, as(admin))).tokens.map((t) => t.id)).toEqual([child.info!.id]);
    expect((await s.client.revokeTokens({ selector: { subject, createdBefore: timestampFromDate(new Date(cutoff.getTime() + 1)) }, dryRun: true }, as(admin))).matchedCount).toBe(2n);
    const soon = new Date(timestampDate(later.info!.expireTime!).getTime() + 1);
    expect((await s.client.revokeTokens({ selector: { subject, expireBefore: timestampFromDate(soon) }, dryRun: true }, as(admin))).matchedCount).toBe(3n);
  });

  it("keeps a non-admin to its own subject", async () => {
    const mine = await issue("mine");
    const other = await issue("other", `${subject}-other`);
    // No subject given: forced to the caller's own.
    const done = await s.client.revokeTokens({ selector: { name: "other" } }, as(mine.token));
    expect(done.revokedCount).toBe(0n);
    expect((await s.client.introspectToken({ token: other.token }, as(admin))).active).toBe(true);
    expect((await code(s.client.revokeTokens({ selector: { subject: `${subject}-other` } }, as(mine.token)))).code).toBe(Code.PermissionDenied);
    expect((await s.client.revokeTokens({ selector: { name: "mine" } }, as(mine.token))).revokedCount).toBe(1n);
  });

  it.each([
    [{}, "selector: is required"],
    [{ selector: {} }, "selector: set at least one of subject, team, issued_by_token_id, name, created_before, expire_before"],
    [{ selector: { issuedByTokenId: "x" } }, "selector.issued_by_token_id: must be a UUID"],
    [{ selector: { team: " bad" } }, "selector.team: must be 1 to 128 letters, digits or ._:/- and start with a letter or digit"],
    [{ selector: { name: "n" }, pageSize: 501 }, "page_size: must be between 1 and 500 (0 means 50)"],
    [{ selector: { name: "n" }, reason: "r".repeat(600) }, "reason: must be at most 512 characters"],
  ])("answers INVALID_ARGUMENT naming the field and changes nothing (%#)", async (req, message) => {
    const t = await issue("n");
    expect(await code(s.client.revokeTokens(req, as(admin)))).toEqual({ code: Code.InvalidArgument, message });
    expect((await s.client.introspectToken({ token: t.token }, as(admin))).active).toBe(true);
  });

  it("needs tokens.revoke", async () => {
    const t = await issue("reader", subject, ["tokens.read"]);
    expect((await code(s.client.revokeTokens({ selector: { name: "x" } }, as(t.token)))).code).toBe(Code.PermissionDenied);
  });

  it("a replica's scheduler finishes an operation whose runner stopped, with one event", async () => {
    for (let i = 0; i < 3; i++) await issue("abandoned");
    const started = s.clock.now();
    // Recorded, lease already run out, no batch run: as if its replica died at once.
    await kysely.createBulkRevocation(
      { id: "7d3c9a52-2f0e-4b8e-9f1a-0c6d1e2f3a4b", environment: "development", selector: { subject, name: "abandoned" }, reason: "", requestedBy: "admin@example.com", callerTokenId: null, startedAt: started, revokedCount: 0, finishedAt: null },
      new Date(started.getTime() - 1),
    );
    await Promise.all([s.scheduler().tick(), s.scheduler().tick()]);
    expect((await s.client.revokeTokens({ selector: { subject, name: "abandoned" }, dryRun: true }, as(admin))).matchedCount).toBe(0n);
    const events = s.events.events.filter((e) => e.type === "tokens_bulk_revoked");
    expect(events.map((e) => e.message)).toEqual([`3 tokens revoked in bulk (subject=${subject}, name=abandoned)`]);
  });
});

describe("rate limit classes", () => {
  it("limits RotateToken as an issue and RevokeTokens as a revoke", async () => {
    const s = setup();
    const bucket = { ratePerSecond: 0.001, burst: 1 };
    const limits = new RateLimits(
      { perCaller: { introspect: { ratePerSecond: 1000, burst: 1000 }, issue: bucket, revoke: bucket, list: { ratePerSecond: 1000, burst: 1000 } }, failedAuthPerPeer: { ratePerSecond: 1000, burst: 1000 }, maxKeys: 100, lookupsInFlightPerCaller: 8, lookupsQueuedPerCaller: 100 },
      "development",
      s.events,
    );
    const deps: TokenDeps = { ...s.deps, limits };
    const client = createClient(TokenService, createRouterTransport(({ service }) => service(TokenService, new TokenServiceHandler(deps))));
    const admin = (await bootstrapAdmin(deps, "admin@example.com", "cli")).token;
    // One issue spends the issue bucket: a rotation is then refused, a bulk revocation is not (yet).
    const issued = await client.issueToken({ name: "x", subject: "limited@example.com" }, as(admin));
    expect((await code(client.rotateToken({ target: { case: "token", value: issued.token } }, as(admin)))).code).toBe(Code.ResourceExhausted);
    await client.revokeTokens({ selector: { subject: "limited@example.com" }, dryRun: true }, as(admin));
    expect((await code(client.revokeTokens({ selector: { subject: "limited@example.com" } }, as(admin)))).code).toBe(Code.ResourceExhausted);
    expect((await code(client.revokeToken({ target: { case: "token", value: issued.token } }, as(admin)))).code).toBe(Code.ResourceExhausted);
  });
});
