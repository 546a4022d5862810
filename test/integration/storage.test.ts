/**
 * The storage layer against real PostgreSQL and embedded PGlite: the same
 * cases on both, because production may run PostgreSQL 15 while PGlite runs
 * 17, and because PGlite's single connection hides mistakes PostgreSQL shows
 * (and the other way round). PostgreSQL missing is a failure, not a skip.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Migrator, sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TokenError } from "../../src/domain/errors.js";
import type { SecurityEventRow, TokenRecord } from "../../src/domain/model.js";
import type { NewToken, TokenListQuery } from "../../src/domain/ports.js";
import { migrateToLatest, openDatabase } from "../../src/storage/database.js";
import type { DatabaseOptions, OpenedDatabase } from "../../src/storage/database.js";
import { INTERNAL_MESSAGE, UNAVAILABLE_MESSAGE, translateStoreError } from "../../src/storage/errors.js";
import { KyselySecurityEventStore } from "../../src/storage/security-event-store.js";
import { KyselyTokenStore } from "../../src/storage/token-store.js";
import { KyselyLegacyJwtStore } from "../../src/storage/legacy-jwt-store.js";
import { KyselySigningKeyStore } from "../../src/storage/signing-key-store.js";
import { MIGRATIONS, migrationProvider } from "../../src/storage/migrations/index.js";
import { createTestDatabase } from "../support/postgres.js";

/** PGlite start-up takes seconds; PostgreSQL database creation under one. */
const SETUP_TIMEOUT_MS = 60_000;

const POOL: Omit<DatabaseOptions, "url" | "dataDir"> = { poolMax: 4, connectTimeoutMs: 5_000, statementTimeoutMs: 10_000 };

/** The frozen present of every case: no wall clock, no sleeps. */
const NOW = new Date("2030-06-01T12:00:00.000Z");
const minutes = (n: number): Date => new Date(NOW.getTime() + n * 60_000);

interface Backend {
  readonly name: string;
  /** Opens a fresh, unmigrated database and returns it with its teardown. */
  open(): Promise<{ opened: OpenedDatabase; teardown(): Promise<void> }>;
}

const backends: Backend[] = [
  {
    name: "PostgreSQL",
    async open() {
      const testDb = await createTestDatabase();
      const opened = await openDatabase({ url: testDb.url, ...POOL });
      return {
        opened,
        async teardown() {
          await opened.close();
          await testDb.drop();
        },
      };
    },
  },
  {
    name: "PGlite",
    async open() {
      const opened = await openDatabase({ dataDir: "memory://", ...POOL });
      return { opened, teardown: () => opened.close() };
    },
  },
];

/** A SHA-256 digest of fresh random bytes, as the domain would store. */
function newDigest(): Buffer {
  return createHash("sha256").update(randomBytes(16)).digest();
}

/** A token to insert; each call gets a fresh id and digest. */
function newToken(overrides: Partial<NewToken> = {}): NewToken {
  return {
    id: randomUUID(),
    digest: newDigest(),
    displayHint: "cf-…Ab12",
    name: "ci deploys",
    subject: `user-${randomUUID()}`,
    fullName: "Ada Lovelace",
    teams: ["platform"],
    scopes: ["tokens.introspect"],
    namespaces: ["default"],
    isAdmin: false,
    metadata: {},
    environment: "development",
    createdAt: NOW,
    createdBy: "admin",
    issuedByTokenId: null,
    expiresAt: minutes(60),
    ...overrides,
  };
}

/** What a freshly inserted token reads back as: the digest as a plain Uint8Array, whatever went in. */
function stored(token: NewToken): TokenRecord {
  return { ...token, digest: new Uint8Array(token.digest), lastUsedAt: null, revokedAt: null, revokedBy: null, revokeReason: null };
}

/** Newest first, ties broken by id descending: the order the store promises. */
function byCreatedDesc(a: TokenRecord, b: TokenRecord): number {
  const dt = b.createdAt.getTime() - a.createdAt.getTime();
  return dt !== 0 ? dt : a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

/** A port no process listens on, so connecting is refused at once. */
async function unusedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Awaits a promise expected to reject with a TokenError and returns that error. */
async function tokenErrorOf(promise: Promise<unknown>): Promise<TokenError> {
  const err: unknown = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TokenError);
  return err as TokenError;
}

describe.each(backends)("storage on $name", (backend) => {
  let opened: OpenedDatabase;
  let teardown: () => Promise<void>;
  let firstMigration: string[];
  let tokens: KyselyTokenStore;
  let events: KyselySecurityEventStore;

  beforeAll(async () => {
    ({ opened, teardown } = await backend.open());
    firstMigration = await migrateToLatest(opened.db);
    tokens = new KyselyTokenStore(opened.db, opened.prepared);
    events = new KyselySecurityEventStore(opened.db);
  }, SETUP_TIMEOUT_MS);

  afterAll(async () => {
    await teardown?.();
  }, SETUP_TIMEOUT_MS);

  describe("legacy JWT revocations and usage", () => {
    it("records a jti once and tells a repeat", async () => {
      const legacy = new KyselyLegacyJwtStore(opened.db);
      expect(await legacy.isRevoked("jti-a")).toBe(false);
      expect(await legacy.revoke("jti-a", { by: "ops", reason: "leak", at: NOW, expiresAt: minutes(60) })).toEqual({ alreadyRevoked: false });
      expect(await legacy.revoke("jti-a", { by: "ops", reason: "again", at: NOW, expiresAt: null })).toEqual({ alreadyRevoked: true });
      expect(await legacy.isRevoked("jti-a")).toBe(true);
    });

    it("adds folded usage counts across batches and pages them by last use", async () => {
      const legacy = new KyselyLegacyJwtStore(opened.db);
      await legacy.recordUsage([
        { subject: "u1", count: 2, firstSeen: minutes(1), lastSeen: minutes(2) },
        { subject: "u2", count: 5, firstSeen: minutes(1), lastSeen: minutes(5) },
      ]);
      await legacy.recordUsage([{ subject: "u1", count: 3, firstSeen: minutes(0), lastSeen: minutes(9) }]);
      const first = await legacy.listUsage({ limit: 1 });
      expect(first).toEqual([{ subject: "u1", count: 5, firstSeen: minutes(0), lastSeen: minutes(9) }]);
      const rest = await legacy.listUsage({ limit: 5, after: { lastSeen: first[0]!.lastSeen, subject: "u1" } });
      expect(rest.map((u) => [u.subject, u.count])).toEqual([["u2", 5]]);
    });
  });

  describe("signing keys", () => {
    it("stores, lists newest first, ignores a duplicate kid, and prunes", async () => {
      const keys = new KyselySigningKeyStore(opened.db);
      const key = (kid: string, at: Date) => ({ kid, alg: "ES256" as const, privateKey: { kekId: "0123456789abcdef", wrapped: new Uint8Array([1, 2, 3]) }, publicJwk: { kty: "EC", x: "x" }, createdAt: at, activatesAt: at });
      await keys.insert(key("old", minutes(0)));
      await keys.insert(key("new", minutes(10)));
      await keys.insert({ ...key("new", minutes(20)), publicJwk: { changed: true } });
      expect(await keys.list()).toEqual([key("new", minutes(10)), key("old", minutes(0))]);
      await keys.prune(["old"]);
      expect((await keys.list()).map((k) => k.kid)).toEqual(["new"]);
    });

    it("reseals every key in one transaction, all or nothing, and keeps exactly one form of each private key", async () => {
      const keys = new KyselySigningKeyStore(opened.db);
      await sql`DELETE FROM signing_keys`.execute(opened.db);
      // A row as the version before migration 0005 writes it: the private JWK in the clear.
      await sql`INSERT INTO signing_keys (kid, alg, private_jwk, public_jwk, created_at, activates_at)
                VALUES ('plain', 'ES256', ${JSON.stringify({ kty: "EC", d: "in-the-clear" })}, '{}', ${minutes(0)}, ${minutes(0)})`.execute(opened.db);
      await keys.insert({ kid: "wrapped", alg: "ES256", privateKey: { kekId: "aaaaaaaaaaaaaaaa", wrapped: new Uint8Array([9]) }, publicJwk: {}, createdAt: minutes(1), activatesAt: minutes(1) });
      expect((await keys.list()).map((k) => k.privateKey)).toEqual([{ kekId: "aaaaaaaaaaaaaaaa", wrapped: new Uint8Array([9]) }, { plaintextJwk: { kty: "EC", d: "in-the-clear" } }]);

      const refusal = new Error("cannot unwrap");
      await expect(keys.reseal((k) => { if (k.kid === "wrapped") throw refusal; return { kekId: "bbbbbbbbbbbbbbbb", wrapped: new Uint8Array([1]) }; })).rejects.toBe(refusal);
      expect((await keys.list()).map((k) => k.privateKey.kekId)).toEqual(["aaaaaaaaaaaaaaaa", undefined]);

      expect(await keys.reseal((k) => (k.privateKey.kekId === "bbbbbbbbbbbbbbbb" ? undefined : { kekId: "bbbbbbbbbbbbbbbb", wrapped: new Uint8Array([7, k.kid.length]) }))).toBe(2);
      expect((await keys.list()).map((k) => k.privateKey)).toEqual([{ kekId: "bbbbbbbbbbbbbbbb", wrapped: new Uint8Array([7, 7]) }, { kekId: "bbbbbbbbbbbbbbbb", wrapped: new Uint8Array([7, 5]) }]);
      const raw = await sql<{ n: number }>`SELECT count(*)::int AS n FROM signing_keys WHERE private_jwk IS NOT NULL`.execute(opened.db);
      expect(raw.rows[0]!.n).toBe(0);
      await expect(sql`INSERT INTO signing_keys (kid, alg, public_jwk, created_at, activates_at) VALUES ('none', 'ES256', '{}', now(), now())`.execute(opened.db)).rejects.toThrow(/signing_keys_private_key_one_form/);
    });
  });

  describe("migrations", () => {
    it("apply on a fresh database", async () => {
      expect(opened.kind).toBe(backend.name === "PostgreSQL" ? "postgres" : "pglite");
      expect(firstMigration).toEqual(Object.keys(MIGRATIONS));
      const tables = await sql<{ table_name: string }>`
        SELECT table_name FROM information_schema.tables
        WHERE table_schema = 'public' AND table_name IN ('tokens', 'security_events')
        ORDER BY table_name`.execute(opened.db);
      expect(tables.rows.map((row) => row.table_name)).toEqual(["security_events", "tokens"]);
    });

    it("are idempotent on re-run", async () => {
      expect(await migrateToLatest(opened.db)).toEqual([]);
      expect(await migrateToLatest(opened.db)).toEqual([]);
    });
  });

  describe("lookups by digest in one turn", () => {
    it("share one query and still answer each caller exactly, found or not", async () => {
      const inserted = [newToken(), newToken(), newToken()];
      for (const token of inserted) await tokens.insert(token, { maxActivePerSubject: 1000, now: NOW });
      const unknown = newDigest();
      const answers = await Promise.all([...inserted.map((t) => tokens.findByDigest(t.digest)), tokens.findByDigest(unknown), tokens.findByDigest(inserted[0]!.digest)]);
      expect(answers.map((r) => r?.id)).toEqual([inserted[0]!.id, inserted[1]!.id, inserted[2]!.id, undefined, inserted[0]!.id]);
    });

    it("answer each caller exactly when more arrive than one query takes and while queries are out", async () => {
      const inserted = Array.from({ length: 20 }, () => newToken());
      for (const token of inserted) await tokens.insert(token, { maxActivePerSubject: 1000, now: NOW });
      // 300 in one turn (more than one query's 128), then more on later turns while those are out.
      const digests = Array.from({ length: 300 }, (_, i) => (i % 7 === 0 ? newDigest() : inserted[i % inserted.length]!.digest));
      const first = digests.map((d) => tokens.findByDigest(d));
      const later: Promise<TokenRecord | undefined>[] = [];
      for (let turn = 0; turn < 5; turn++) {
        await new Promise((done) => setImmediate(done));
        later.push(...digests.slice(0, 40).map((d) => tokens.findByDigest(d)));
      }
      const expected = digests.map((_, i) => (i % 7 === 0 ? undefined : inserted[i % inserted.length]!.id));
      expect((await Promise.all(first)).map((r) => r?.id)).toEqual(expected);
      expect((await Promise.all(later)).map((r) => r?.id)).toEqual([0, 1, 2, 3, 4].flatMap(() => expected.slice(0, 40)));
    });
  });

  describe("lookups by digest read the same record as by id", () => {
    it("with every optional part set and microsecond times, alone and batched", async () => {
      const old = newToken({ allowedNetworks: ["10.0.0.0/8", "2001:db8::/32"], rateLimit: { requests: 7, windowMs: 60_000 }, metadata: { a: "1", "ü": "✓" } });
      const successor = newToken();
      for (const t of [old, successor]) await tokens.insert(t, { maxActivePerSubject: 10, now: NOW });
      await tokens.linkRotation(old.id, successor.id, { scheduledRevokeAt: minutes(30), revokeOnSuccessorUse: true });
      await tokens.markSuccessorUsed(old.id, successor.id, minutes(2));
      await tokens.touchLastUsed(new Map([[old.id, minutes(4)]]));
      await tokens.revoke(old.id, { by: "ops", reason: "rotated", at: minutes(5) });
      // Times PostgreSQL keeps to the microsecond: read back truncated to the millisecond either way.
      await sql`UPDATE tokens SET created_at = '2030-06-01 11:00:00.123987+00', expires_at = '2031-02-03 04:05:06.999999+00' WHERE id = ${old.id}`.execute(opened.db);
      const byId = await tokens.findById(old.id);
      expect(byId?.rotation?.successorUsedAt).toEqual(minutes(2));
      expect(byId?.createdAt.getTime()).toBe(Date.parse("2030-06-01T11:00:00.123Z"));
      expect(byId?.expiresAt?.getTime()).toBe(Date.parse("2031-02-03T04:05:06.999Z"));
      expect(await tokens.findByDigest(old.digest)).toEqual(byId);
      const [batched, other] = await Promise.all([tokens.findByDigest(old.digest), tokens.findByDigest(successor.digest)]);
      expect(batched).toEqual(byId);
      expect(other).toEqual(await tokens.findById(successor.id));
    });
  });

  describe("insert and find", () => {
    it("round-trips every field exactly, by digest and by id", async () => {
      const token = newToken({
        displayHint: "cfprd-…Zz99",
        name: "naïve ✓ name",
        fullName: "Grace \"Amazing\" Hopper",
        teams: ["red", "blue,green", "with space", 'quo"te', "back\\slash", "NULL", ""],
        scopes: ["tokens.read", "tokens.create"],
        namespaces: [],
        isAdmin: true,
        metadata: { ticket: "OPS-1", "ünïcode": "✓", empty: "", nested: '{"not":"parsed"}' },
        environment: "production",
        createdAt: new Date("2030-06-01T11:59:59.987Z"),
        createdBy: "bootstrap",
        expiresAt: new Date("2031-01-01T00:00:00.001Z"),
      });
      const inserted = await tokens.insert(token, { maxActivePerSubject: 10, now: NOW });
      expect(inserted).toEqual(stored(token));

      const byDigest = await tokens.findByDigest(token.digest);
      const byId = await tokens.findById(token.id);
      expect(byDigest).toEqual(stored(token));
      expect(byId).toEqual(stored(token));
      // Exactness the deep equality could blur: a plain Uint8Array, millisecond Dates.
      expect(Object.getPrototypeOf(byDigest?.digest)).toBe(Uint8Array.prototype);
      expect(Buffer.from(byDigest?.digest ?? []).equals(token.digest)).toBe(true);
      expect(byDigest?.createdAt.getTime()).toBe(token.createdAt.getTime());
      expect(byDigest?.expiresAt?.getTime()).toBe(token.expiresAt?.getTime());
    });

    it("keeps a token without expiry and with empty arrays", async () => {
      const token = newToken({ expiresAt: null, teams: [], scopes: [], namespaces: [] });
      await tokens.insert(token, { maxActivePerSubject: 10, now: NOW });
      expect(await tokens.findById(token.id)).toEqual(stored(token));
    });

    it("finds nothing for an unknown digest, an unknown id or a malformed id", async () => {
      expect(await tokens.findByDigest(newDigest())).toBeUndefined();
      expect(await tokens.findById(randomUUID())).toBeUndefined();
      expect(await tokens.findById("not-a-uuid")).toBeUndefined();
      expect(await tokens.findById("")).toBeUndefined();
    });

    it("refuses a duplicate digest or id as internal, leaking no driver text", async () => {
      const first = newToken();
      await tokens.insert(first, { maxActivePerSubject: 10, now: NOW });

      const sameDigest = await tokenErrorOf(tokens.insert(newToken({ digest: first.digest }), { maxActivePerSubject: 10, now: NOW }));
      expect(sameDigest.code).toBe("internal");
      expect(sameDigest.message).toBe(INTERNAL_MESSAGE);
      expect((sameDigest.cause as { code?: string }).code).toBe("23505");

      const sameId = await tokenErrorOf(tokens.insert(newToken({ id: first.id }), { maxActivePerSubject: 10, now: NOW }));
      expect(sameId.code).toBe("internal");
      expect(sameId.message).toBe(INTERNAL_MESSAGE);
    });

    it("counts every token ever stored", async () => {
      const before = await tokens.count();
      const token = newToken();
      await tokens.insert(token, { maxActivePerSubject: 10, now: NOW });
      await tokens.revoke(token.id, { by: "admin", reason: "test", at: NOW });
      expect(await tokens.count()).toBe(before + 1);
    });

    it("answers a ping", async () => {
      await expect(tokens.ping()).resolves.toBeUndefined();
    });
  });

  describe("per-subject cap", () => {
    it("refuses the token past the cap, naming the count", async () => {
      const subject = `capped-${randomUUID()}`;
      for (let i = 0; i < 3; i++) await tokens.insert(newToken({ subject }), { maxActivePerSubject: 3, now: NOW });

      const err = await tokenErrorOf(tokens.insert(newToken({ subject }), { maxActivePerSubject: 3, now: NOW }));
      expect(err.code).toBe("resource_exhausted");
      expect(err.message).toBe("subject already holds 3 active tokens, the most allowed; revoke some first");
      const listed = await tokens.list({ environment: "development", subject, includeRevoked: true, includeExpired: true, now: NOW, limit: 10 });
      expect(listed).toHaveLength(3);
    });

    it("does not count revoked or expired tokens, nor other subjects'", async () => {
      const subject = `mixed-${randomUUID()}`;
      const limits = { maxActivePerSubject: 2, now: NOW };
      const revoked = newToken({ subject });
      await tokens.insert(revoked, limits);
      await tokens.revoke(revoked.id, { by: "admin", reason: "rotated", at: NOW });
      // Expired at `now` exactly counts as expired, as in the domain's tokenState.
      await tokens.insert(newToken({ subject, createdAt: minutes(-120), expiresAt: minutes(-60) }), { ...limits, now: minutes(-90) });
      await tokens.insert(newToken({ subject, createdAt: minutes(-120), expiresAt: NOW }), { ...limits, now: minutes(-90) });
      await tokens.insert(newToken(), limits);

      await tokens.insert(newToken({ subject }), limits);
      await tokens.insert(newToken({ subject, expiresAt: null }), limits);
      const err = await tokenErrorOf(tokens.insert(newToken({ subject }), limits));
      expect(err.code).toBe("resource_exhausted");
      expect(err.message).toContain("holds 2 active tokens");
    });

    it("holds under concurrent inserts for one subject", async () => {
      const subject = `race-${randomUUID()}`;
      const outcomes = await Promise.allSettled(
        Array.from({ length: 8 }, () => tokens.insert(newToken({ subject }), { maxActivePerSubject: 3, now: NOW })),
      );
      const fulfilled = outcomes.filter((o) => o.status === "fulfilled");
      const rejected = outcomes.filter((o): o is PromiseRejectedResult => o.status === "rejected");
      expect(fulfilled).toHaveLength(3);
      expect(rejected).toHaveLength(5);
      for (const r of rejected) expect((r.reason as TokenError).code).toBe("resource_exhausted");
    });
  });

  describe("revoke", () => {
    it("revokes once, then reports the first revocation, then nothing for unknown ids", async () => {
      const token = newToken();
      await tokens.insert(token, { maxActivePerSubject: 10, now: NOW });

      const first = await tokens.revoke(token.id, { by: "alice", reason: "leaked", at: minutes(1) });
      expect(first).toEqual({
        alreadyRevoked: false,
        record: { ...stored(token), revokedAt: minutes(1), revokedBy: "alice", revokeReason: "leaked" },
      });

      const second = await tokens.revoke(token.id, { by: "bob", reason: "again", at: minutes(2) });
      expect(second).toEqual({
        alreadyRevoked: true,
        record: { ...stored(token), revokedAt: minutes(1), revokedBy: "alice", revokeReason: "leaked" },
      });
      expect((await tokens.findById(token.id))?.revokedBy).toBe("alice");

      expect(await tokens.revoke(randomUUID(), { by: "alice", reason: "x", at: NOW })).toBeUndefined();
      expect(await tokens.revoke("not-a-uuid", { by: "alice", reason: "x", at: NOW })).toBeUndefined();
    });

    describe("revokeOne (one call: find, revoke, read back)", () => {
      const first = { by: "alice", reason: "leaked", at: minutes(1) };
      const again = { by: "bob", reason: "again", at: minutes(2) };
      const revokedBy = (token: NewToken) => ({ ...stored(token), revokedAt: minutes(1), revokedBy: "alice", revokeReason: "leaked" });

      it.each(["id", "digest"] as const)("by %s: revoked, then the first revocation again, with the last use", async (by) => {
        const token = newToken();
        await tokens.insert(token, { maxActivePerSubject: 10, now: NOW });
        await tokens.touchLastUsed(new Map([[token.id, minutes(0.5)]]));
        const target = by === "id" ? { id: token.id, environment: token.environment } : { digest: token.digest, environment: token.environment };
        expect(await tokens.revokeOne(target, first)).toEqual({ alreadyRevoked: false, record: { ...revokedBy(token), lastUsedAt: minutes(0.5) } });
        expect(await tokens.revokeOne(target, again)).toEqual({ alreadyRevoked: true, record: { ...revokedBy(token), lastUsedAt: minutes(0.5) } });
      });

      it("an unknown id or digest, and a token of another environment, are undefined and untouched", async () => {
        const token = newToken({ environment: "production" });
        await tokens.insert(token, { maxActivePerSubject: 10, now: NOW });
        expect(await tokens.revokeOne({ id: randomUUID(), environment: "production" }, first)).toBeUndefined();
        expect(await tokens.revokeOne({ id: "not-a-uuid", environment: "production" }, first)).toBeUndefined();
        expect(await tokens.revokeOne({ digest: newDigest(), environment: "production" }, first)).toBeUndefined();
        expect(await tokens.revokeOne({ id: token.id, environment: "development" }, first)).toBeUndefined();
        expect(await tokens.revokeOne({ digest: token.digest, environment: "development" }, first)).toBeUndefined();
        expect((await tokens.findById(token.id))?.revokedAt).toBeNull();
      });

      it("with a subject: another subject's token is other_subject, revoked or not, and untouched", async () => {
        const mine = newToken({ subject: "carol" });
        const theirs = newToken({ subject: "dave" });
        const theirsRevoked = newToken({ subject: "dave" });
        for (const t of [mine, theirs, theirsRevoked]) await tokens.insert(t, { maxActivePerSubject: 10, now: NOW });
        await tokens.revoke(theirsRevoked.id, first);
        const as = (t: NewToken) => ({ id: t.id, environment: t.environment, subject: "carol" });
        expect(await tokens.revokeOne(as(theirs), again)).toBe("other_subject");
        expect(await tokens.revokeOne(as(theirsRevoked), again)).toBe("other_subject");
        expect((await tokens.findById(theirs.id))?.revokedAt).toBeNull();
        expect((await tokens.findById(theirsRevoked.id))?.revokedBy).toBe("alice");
        expect(await tokens.revokeOne(as(mine), first)).toEqual({ alreadyRevoked: false, record: revokedBy(mine) });
        // Unknown ids stay unknown with a subject too.
        expect(await tokens.revokeOne({ id: randomUUID(), environment: "development", subject: "carol" }, first)).toBeUndefined();
      });

      it("concurrent revocations: the first wins, every other reports it, one log entry", async () => {
        const token = newToken();
        await tokens.insert(token, { maxActivePerSubject: 10, now: NOW });
        const outcomes = await Promise.all(
          Array.from({ length: 8 }, (_, i) => tokens.revokeOne({ digest: token.digest, environment: token.environment }, { by: `admin-${i}`, reason: "race", at: minutes(i) })),
        );
        const winners = outcomes.filter((o) => typeof o === "object" && !o.alreadyRevoked);
        expect(winners).toHaveLength(1);
        const winner = winners[0] as { record: TokenRecord };
        for (const o of outcomes) expect(o).toEqual({ alreadyRevoked: o !== winner, record: winner.record });
        const logged = await sql<{ n: string | number }>`SELECT count(*) AS n FROM revocation_log WHERE subject_id = ${token.id}`.execute(opened.db);
        expect(Number(logged.rows[0]?.n)).toBe(1);
      });
    });
  });

  describe("list", () => {
    const subject = `lister-${randomUUID()}`;
    const inserted: NewToken[] = [];
    let revokedId: string;
    let expiredId: string;

    beforeAll(async () => {
      // Inserted "in the past", when none had expired yet.
      const limits = { maxActivePerSubject: 100, now: minutes(-1_000) };
      // Twelve share one created_at, so only the id orders them; five more are spread out.
      for (let i = 0; i < 12; i++) inserted.push(newToken({ subject, createdAt: minutes(-10), teams: i % 3 === 0 ? ["red", "blue"] : ["blue"] }));
      for (let i = 0; i < 5; i++) {
        inserted.push(newToken({ subject, createdAt: minutes(-20 - i), teams: ["green"], expiresAt: i === 2 ? minutes(-1) : minutes(60) }));
      }
      for (const token of inserted) await tokens.insert(token, limits);
      const revoked = inserted[3];
      const expired = inserted[14];
      if (revoked === undefined || expired === undefined) throw new Error("fixture too small");
      revokedId = revoked.id;
      expiredId = expired.id;
      await tokens.revoke(revokedId, { by: "admin", reason: "test", at: minutes(-5) });
    }, SETUP_TIMEOUT_MS);

    /** Follows the keyset cursor until a short page, checking each page's size. */
    async function allPages(query: Omit<TokenListQuery, "after">): Promise<TokenRecord[][]> {
      const pages: TokenRecord[][] = [];
      let after: TokenListQuery["after"];
      for (;;) {
        const page = await tokens.list({ ...query, ...(after !== undefined && { after }) });
        expect(page.length).toBeLessThanOrEqual(query.limit);
        pages.push(page);
        const last = page.at(-1);
        if (page.length < query.limit || last === undefined) return pages;
        after = { createdAt: last.createdAt, id: last.id };
      }
    }

    it("pages through identical created_at values by id, with no duplicates or gaps", async () => {
      const pages = await allPages({ environment: "development", subject, includeRevoked: true, includeExpired: true, now: NOW, limit: 5 });
      expect(pages.map((p) => p.length)).toEqual([5, 5, 5, 2]);
      const ids = pages.flat().map((r) => r.id);
      expect(new Set(ids).size).toBe(17);
      const expected = (await Promise.all(inserted.map((t) => tokens.findById(t.id))))
        .filter((r): r is TokenRecord => r !== undefined)
        .sort(byCreatedDesc);
      expect(ids).toEqual(expected.map((r) => r.id));
    });

    it("ends with an empty page when the last page is full", async () => {
      const pages = await allPages({ environment: "development", subject, includeRevoked: true, includeExpired: true, now: NOW, limit: 17 });
      expect(pages.map((p) => p.length)).toEqual([17, 0]);
    });

    it("hides revoked and expired tokens unless asked", async () => {
      const ids = async (q: Partial<TokenListQuery>): Promise<string[]> =>
        (await tokens.list({ environment: "development", subject, includeRevoked: false, includeExpired: false, now: NOW, limit: 100, ...q })).map((r) => r.id);
      const active = await ids({});
      expect(active).toHaveLength(15);
      expect(active).not.toContain(revokedId);
      expect(active).not.toContain(expiredId);
      expect(await ids({ includeRevoked: true })).toContain(revokedId);
      expect(await ids({ includeRevoked: true })).not.toContain(expiredId);
      expect(await ids({ includeExpired: true })).toContain(expiredId);
      expect(await ids({ includeExpired: true })).not.toContain(revokedId);
      // Expiry is judged at the query's `now`, not the database clock.
      expect(await ids({ now: minutes(-2) })).toContain(expiredId);
    });

    it("filters by team, alone and with the subject", async () => {
      const base = { environment: "development", includeRevoked: true, includeExpired: true, now: NOW, limit: 100 } as const;
      const red = await tokens.list({ ...base, subject, team: "red" });
      expect(red).toHaveLength(4);
      for (const r of red) expect(r.teams).toContain("red");
      expect(await tokens.list({ ...base, subject, team: "blue" })).toHaveLength(12);
      expect(await tokens.list({ ...base, subject, team: "green" })).toHaveLength(5);
      expect(await tokens.list({ ...base, subject, team: "gre" })).toHaveLength(0);
      const green = await tokens.list({ ...base, team: "green" });
      expect(green.map((r) => r.id).sort()).toEqual(inserted.slice(12).map((t) => t.id).sort());
    });

    it("pages through every token without a filter, strictly descending", async () => {
      const pages = await allPages({ environment: "development", includeRevoked: true, includeExpired: true, now: NOW, limit: 7 });
      const rows = pages.flat();
      expect(new Set(rows.map((r) => r.id)).size).toBe(rows.length);
      // Listing stays within one environment; the store holds every environment's tokens.
      const elsewhere = await Promise.all(
        (["staging", "production"] as const).map((environment) => tokens.list({ environment, includeRevoked: true, includeExpired: true, now: NOW, limit: 1000 })),
      );
      expect(elsewhere.flat().every((r) => r.environment !== "development")).toBe(true);
      expect(rows.length + elsewhere.flat().length).toBe(await tokens.count());
      for (let i = 1; i < rows.length; i++) {
        const [prev, cur] = [rows[i - 1], rows[i]];
        if (prev === undefined || cur === undefined) throw new Error("unreachable");
        expect(byCreatedDesc(prev, cur)).toBeLessThan(0);
      }
    });

    it("returns nothing for a limit of zero", async () => {
      expect(await tokens.list({ environment: "development", subject, includeRevoked: true, includeExpired: true, now: NOW, limit: 0 })).toEqual([]);
    });
  });

  describe("touchLastUsed", () => {
    it("records a batch, ignores unknown ids, and only moves forward", async () => {
      const a = newToken();
      const b = newToken();
      const untouched = newToken();
      for (const t of [a, b, untouched]) await tokens.insert(t, { maxActivePerSubject: 10, now: NOW });

      await tokens.touchLastUsed(
        new Map([
          [a.id, minutes(1)],
          [b.id, new Date(minutes(2).getTime() + 7)],
          [randomUUID(), minutes(3)],
          ["not-a-uuid", minutes(3)],
        ]),
      );
      expect((await tokens.findById(a.id))?.lastUsedAt).toEqual(minutes(1));
      expect((await tokens.findById(b.id))?.lastUsedAt).toEqual(new Date(minutes(2).getTime() + 7));
      expect((await tokens.findById(untouched.id))?.lastUsedAt).toBeNull();

      // A late-arriving older batch does not move the time back.
      await tokens.touchLastUsed(new Map([[a.id, minutes(0)], [b.id, minutes(5)]]));
      expect((await tokens.findById(a.id))?.lastUsedAt).toEqual(minutes(1));
      expect((await tokens.findById(b.id))?.lastUsedAt).toEqual(minutes(5));
    });

    it("does nothing for an empty batch", async () => {
      await expect(tokens.touchLastUsed(new Map())).resolves.toBeUndefined();
    });

    it("keeps last use out of the token's row (migration 0012): the row is not rewritten", async () => {
      const t = newToken();
      await tokens.insert(t, { maxActivePerSubject: 10, now: NOW });
      const version = async () => (await sql<{ v: string }>`SELECT xmin::text AS v FROM tokens WHERE id = ${t.id}`.execute(opened.db)).rows[0]?.v;
      const before = await version();
      await tokens.touchLastUsed(new Map([[t.id, minutes(1)]]));
      await tokens.touchLastUsed(new Map([[t.id, minutes(2)]]));
      expect(await version()).toBe(before);
      expect((await tokens.findById(t.id))?.lastUsedAt).toEqual(minutes(2));
    });

    it("reports last use wherever a record is read: by digest (alone and batched), list, revoke", async () => {
      const a = newToken();
      const b = newToken();
      for (const t of [a, b]) await tokens.insert(t, { maxActivePerSubject: 10, now: NOW });
      await tokens.touchLastUsed(new Map([[a.id, minutes(3)]]));
      expect((await tokens.findByDigest(a.digest))?.lastUsedAt).toEqual(minutes(3));
      const [both, unknown, other] = await Promise.all([tokens.findByDigest(a.digest), tokens.findByDigest(randomBytes(32)), tokens.findByDigest(b.digest)]);
      expect(both).toMatchObject({ id: a.id, lastUsedAt: minutes(3) });
      expect(both?.digest).toEqual(new Uint8Array(a.digest));
      expect(unknown).toBeUndefined();
      expect(other).toMatchObject({ id: b.id, lastUsedAt: null });
      const listed = await tokens.list({ environment: a.environment, subject: a.subject, includeRevoked: true, includeExpired: true, now: NOW, limit: 10 });
      expect(listed.find((r) => r.id === a.id)?.lastUsedAt).toEqual(minutes(3));
      expect((await tokens.revoke(a.id, { by: "ops", reason: "test", at: NOW }))?.record.lastUsedAt).toEqual(minutes(3));
    });

    it("reads the later of the old column (written by the previous release) and its own table", async () => {
      const t = newToken();
      await tokens.insert(t, { maxActivePerSubject: 10, now: NOW });
      await tokens.touchLastUsed(new Map([[t.id, minutes(1)]]));
      await sql`UPDATE tokens SET last_used_at = ${minutes(9)} WHERE id = ${t.id}`.execute(opened.db);
      expect((await tokens.findById(t.id))?.lastUsedAt).toEqual(minutes(9));
      expect((await tokens.findByDigest(t.digest))?.lastUsedAt).toEqual(minutes(9));
    });

    it("migration 0012 carries existing last-use times over, and back down", async () => {
      const t = newToken();
      await tokens.insert(t, { maxActivePerSubject: 10, now: NOW });
      await tokens.touchLastUsed(new Map([[t.id, minutes(4)]]));
      const migrator = new Migrator({ db: opened.db, provider: migrationProvider });
      // Down to the one before it, through any later migrations.
      const down = await migrator.migrateTo("0011_usage_binding");
      expect(down.error).toBeUndefined();
      expect(down.results?.at(-1)?.migrationName).toBe("0012_token_last_used");
      const old = (await sql<{ at: Date | null }>`SELECT last_used_at AS at FROM tokens WHERE id = ${t.id}`.execute(opened.db)).rows[0];
      expect(old?.at).toEqual(minutes(4));
      await sql`UPDATE tokens SET last_used_at = ${minutes(6)} WHERE id = ${t.id}`.execute(opened.db);
      expect((await migrateToLatest(opened.db))[0]).toBe("0012_token_last_used");
      const moved = (await sql<{ at: Date }>`SELECT last_used_at AS at FROM token_last_used WHERE token_id = ${t.id}`.execute(opened.db)).rows[0];
      expect(moved?.at).toEqual(minutes(6));
    });
  });

  describe("security events", () => {
    const at = (seconds: number): Date => new Date(NOW.getTime() + seconds * 1_000);
    const full: SecurityEventRow = {
      id: randomUUID(),
      type: "environment_mismatch",
      severity: "critical",
      message: "a production token was presented to development",
      serviceEnvironment: "development",
      tokenEnvironment: "production",
      callerTokenId: randomUUID(),
      callerSubject: "svc-ci",
      peer: "10.0.0.7:51234",
      userAgent: "grpc-node-js/1.14.3",
      tokenHint: "cfprd-…Xy12",
      tokenId: randomUUID(),
      method: "/tokens.v1.TokenService/IntrospectToken",
      firstSeen: at(0),
      lastSeen: at(42.5),
      count: 3_000_000_123,
    };
    const minimal: SecurityEventRow = {
      id: randomUUID(),
      type: "authentication_failed",
      severity: "info",
      message: "unknown token",
      serviceEnvironment: "staging",
      firstSeen: at(-10),
      lastSeen: at(-10),
      count: 1,
    };
    // Six warnings sharing one first_seen, so paging must break ties by id.
    const tied: SecurityEventRow[] = Array.from({ length: 6 }, (_, i) => ({
      id: randomUUID(),
      type: "permission_denied",
      severity: "warning",
      message: `denied ${i}`,
      serviceEnvironment: "development",
      method: "/tokens.v1.TokenService/RevokeToken",
      firstSeen: at(-5),
      lastSeen: at(i),
      count: i + 1,
    }));
    const all = [full, minimal, ...tied];

    beforeAll(async () => {
      await events.insertMany([]);
      await events.insertMany(all);
    });

    it("round-trips every field, leaving absent ones absent", async () => {
      const rows = await events.list({ limit: 100 });
      expect(rows.find((r) => r.id === full.id)).toEqual(full);
      const readMinimal = rows.find((r) => r.id === minimal.id);
      expect(readMinimal).toEqual(minimal);
      expect(Object.keys(readMinimal ?? {}).sort()).toEqual(Object.keys(minimal).sort());
    });

    it("lists newest first and pages across tied first_seen by id", async () => {
      const seen: SecurityEventRow[] = [];
      let after: { firstSeen: Date; id: string } | undefined;
      for (;;) {
        const page = await events.list({ limit: 3, ...(after !== undefined && { after }) });
        seen.push(...page);
        const last = page.at(-1);
        if (page.length < 3 || last === undefined) break;
        after = { firstSeen: last.firstSeen, id: last.id };
      }
      const expected = [...all].sort((a, b) => b.firstSeen.getTime() - a.firstSeen.getTime() || (a.id < b.id ? 1 : -1));
      expect(seen.map((r) => r.id)).toEqual(expected.map((r) => r.id));
    });

    it("filters by type, minimum severity and last_seen", async () => {
      const ids = async (q: Omit<Parameters<KyselySecurityEventStore["list"]>[0], "limit">): Promise<string[]> =>
        (await events.list({ limit: 100, ...q })).map((r) => r.id).sort();
      expect(await ids({ type: "permission_denied" })).toEqual(tied.map((r) => r.id).sort());
      expect(await ids({ minSeverity: "info" })).toHaveLength(all.length);
      expect(await ids({ minSeverity: "warning" })).toEqual([full, ...tied].map((r) => r.id).sort());
      expect(await ids({ minSeverity: "critical" })).toEqual([full.id]);
      // since is inclusive on last_seen: tied[3..5] end at 3, 4, 5 s; full ends at 42.5 s.
      expect(await ids({ since: at(3) })).toEqual([full, ...tied.slice(3)].map((r) => r.id).sort());
      expect(await ids({ type: "permission_denied", minSeverity: "critical" })).toEqual([]);
    });
  });

  // Last in this block: it closes the shared handle (teardown's close is idempotent).
  describe("after close", () => {
    it("reports unavailable, not not-found", async () => {
      await opened.close();
      for (const call of [tokens.ping(), tokens.findById(randomUUID()), events.list({ limit: 1 })]) {
        const err = await tokenErrorOf(call);
        expect(err.code).toBe("unavailable");
        expect(err.message).toBe(UNAVAILABLE_MESSAGE);
      }
    });
  });
});

describe("PostgreSQL only", () => {
  it("turns an unreachable server into unavailable, with no driver text", async () => {
    const port = await unusedPort();
    const opened = await openDatabase({ url: `postgres://postgres@127.0.0.1:${port}/nowhere`, ...POOL, connectTimeoutMs: 2_000 });
    try {
      const store = new KyselyTokenStore(opened.db);
      for (const call of [store.ping(), store.findByDigest(newDigest()), store.insert(newToken(), { maxActivePerSubject: 1, now: NOW })]) {
        const err = await tokenErrorOf(call);
        expect(err.code).toBe("unavailable");
        expect(err.message).toBe(UNAVAILABLE_MESSAGE);
        expect(err.message).not.toMatch(/ECONNREFUSED|127\.0\.0\.1|connect/i);
        expect(err.cause).toBeDefined();
      }
    } finally {
      await opened.close();
    }
  });

  it("turns a statement timeout into unavailable", async () => {
    const testDb = await createTestDatabase();
    const opened = await openDatabase({ url: testDb.url, ...POOL, statementTimeoutMs: 200 });
    try {
      const err = translateStoreError(await sql`SELECT pg_sleep(5)`.execute(opened.db).then(() => undefined, (e: unknown) => e));
      expect(err.code).toBe("unavailable");
      expect((err.cause as { code?: string }).code).toBe("57014");
      // The connection survives the cancellation.
      await expect(new KyselyTokenStore(opened.db).ping()).resolves.toBeUndefined();
    } finally {
      await opened.close();
      await testDb.drop();
    }
  }, SETUP_TIMEOUT_MS);

  it("names the failed migration and applies none of it", async () => {
    const testDb = await createTestDatabase();
    const opened = await openDatabase({ url: testDb.url, ...POOL });
    try {
      // A stray table in the way makes 0001 fail half-way, after other statements ran.
      await sql`CREATE TABLE security_events (id int)`.execute(opened.db);
      const err: unknown = await migrateToLatest(opened.db).then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(Error);
      expect((err as Error).message).toBe("database migration failed at migration 0001_initial; no pending migration was applied");
      expect((err as Error).cause).toBeDefined();
      const tokensTable = await sql<{ exists: boolean }>`SELECT to_regclass('public.tokens') IS NOT NULL AS exists`.execute(opened.db);
      expect(tokensTable.rows[0]?.exists).toBe(false);
    } finally {
      await opened.close();
      await testDb.drop();
    }
  }, SETUP_TIMEOUT_MS);

  it("migrates once when two instances start together", async () => {
    const testDb = await createTestDatabase();
    const a = await openDatabase({ url: testDb.url, ...POOL });
    const b = await openDatabase({ url: testDb.url, ...POOL });
    try {
      const results = await Promise.all([migrateToLatest(a.db), migrateToLatest(b.db)]);
      expect(results.flat()).toEqual(Object.keys(MIGRATIONS));
    } finally {
      await a.close();
      await b.close();
      await testDb.drop();
    }
  }, SETUP_TIMEOUT_MS);
});

describe("PGlite on disk", () => {
  it("creates a missing data directory and keeps data across restarts", async () => {
    const root = await mkdtemp(join(tmpdir(), "tis-storage-"));
    const dataDir = join(root, "nested", "pgdata");
    try {
      const token = newToken();
      const first = await openDatabase({ dataDir, ...POOL });
      try {
        expect(await migrateToLatest(first.db)).toEqual(Object.keys(MIGRATIONS));
        await new KyselyTokenStore(first.db).insert(token, { maxActivePerSubject: 1, now: NOW });
      } finally {
        await first.close();
      }
      const second = await openDatabase({ dataDir, ...POOL });
      try {
        expect(await migrateToLatest(second.db)).toEqual([]);
        expect(await new KyselyTokenStore(second.db).findById(token.id)).toEqual(stored(token));
      } finally {
        await second.close();
      }
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  }, SETUP_TIMEOUT_MS);
});

describe("translateStoreError", () => {
  const sqlError = (code: string): Error => Object.assign(new Error(`driver text for ${code}`), { code });

  it.each(["08006", "08001", "57P01", "57P02", "57P03", "53300", "53100", "57014", "40001", "40P01", "55P03"])(
    "maps SQLSTATE %s to unavailable",
    (code) => {
      const err = translateStoreError(sqlError(code));
      expect(err.code).toBe("unavailable");
      expect(err.message).toBe(UNAVAILABLE_MESSAGE);
    },
  );

  it.each(["23505", "23514", "22P02", "42P01", "XX000"])("maps SQLSTATE %s to internal", (code) => {
    const err = translateStoreError(sqlError(code));
    expect(err.code).toBe("internal");
    expect(err.message).toBe(INTERNAL_MESSAGE);
    expect(err.message).not.toContain("driver text");
  });

  it("maps socket errors, pool timeouts and closed handles to unavailable", () => {
    const inputs: unknown[] = [
      sqlError("ECONNREFUSED"),
      sqlError("ECONNRESET"),
      new AggregateError([sqlError("ECONNREFUSED"), sqlError("ECONNREFUSED")], "connect failed"),
      new Error("Connection terminated unexpectedly"),
      new Error("timeout exceeded when trying to connect"),
      new Error("Connection terminated due to connection timeout", { cause: new Error("timeout expired") }),
      new Error("wrapped", { cause: sqlError("57P01") }),
      new Error("PGlite is closed"),
    ];
    for (const input of inputs) expect(translateStoreError(input).code).toBe("unavailable");
  });

  it("passes a TokenError through and maps anything else to internal", () => {
    const own = new TokenError("resource_exhausted", "too many");
    expect(translateStoreError(own)).toBe(own);
    for (const input of [new Error("something odd"), "a string", undefined, null, { code: 42 }]) {
      const err = translateStoreError(input);
      expect(err.code).toBe("internal");
      expect(err.cause).toBe(input);
    }
  });
});
