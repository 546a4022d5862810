/**
 * The revocation log (migration 0009) on real PostgreSQL and PGlite: every
 * revocation gets one strictly increasing, gapless position in the same
 * statement as the revocation; positions commit in position order (the
 * counter row's lock); pruning is bounded and moves the pruning mark.
 */
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { sql } from "kysely";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { NewToken } from "../../src/domain/ports.js";
import { migrateToLatest, openDatabase, type OpenedDatabase } from "../../src/storage/database.js";
import { KyselyLegacyJwtStore } from "../../src/storage/legacy-jwt-store.js";
import { KyselyRevocationLog } from "../../src/storage/revocation-log.js";
import { KyselyTokenStore } from "../../src/storage/token-store.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";

const POOL = { poolMax: 4, connectTimeoutMs: 5_000, statementTimeoutMs: 10_000 };
const NOW = new Date("2030-06-01T12:00:00.000Z");
const REVOCATION = { by: "admin", reason: "test", at: NOW };

function newToken(overrides: Partial<NewToken> = {}): NewToken {
  return {
    id: randomUUID(),
    digest: createHash("sha256").update(randomBytes(16)).digest(),
    displayHint: "cf-…Ab12",
    name: "n",
    subject: `user-${randomUUID()}`,
    fullName: "A",
    teams: [],
    scopes: [],
    namespaces: [],
    isAdmin: false,
    metadata: {},
    environment: "development",
    createdAt: NOW,
    createdBy: "admin",
    issuedByTokenId: null,
    expiresAt: null,
    ...overrides,
  };
}

const backends = [
  {
    name: "PostgreSQL",
    async open() {
      const testDb = await createTestDatabase();
      const opened = await openDatabase({ url: testDb.url, ...POOL });
      return { opened, testDb, teardown: async () => (await opened.close(), await testDb.drop()) };
    },
  },
  {
    name: "PGlite",
    async open() {
      const opened = await openDatabase({ dataDir: "memory://", ...POOL });
      return { opened, testDb: undefined as TestDatabase | undefined, teardown: () => opened.close() };
    },
  },
];

for (const backend of backends) {
  describe(`the revocation log on ${backend.name}`, () => {
    let opened: OpenedDatabase;
    let testDb: TestDatabase | undefined;
    let teardown: () => Promise<unknown>;
    let tokens: KyselyTokenStore;
    let legacy: KyselyLegacyJwtStore;
    let log: KyselyRevocationLog;

    beforeAll(async () => {
      ({ opened, testDb, teardown } = await backend.open());
      await migrateToLatest(opened.db);
      tokens = new KyselyTokenStore(opened.db, opened.prepared);
      legacy = new KyselyLegacyJwtStore(opened.db);
      log = new KyselyRevocationLog(opened.db);
    }, 60_000);
    afterAll(() => teardown?.());

    const insert = (t: NewToken) => tokens.insert(t, { maxActivePerSubject: 100, now: NOW });

    it("logs each revocation once, with consecutive positions, and notifies each with its position", async () => {
      const notices: string[] = [];
      const session = await opened.listen((p) => notices.push(p), () => undefined);
      try {
        const start = (await log.readAfter(Number.MAX_SAFE_INTEGER, 1)).head;
        const single = newToken();
        await insert(single);
        await tokens.revoke(single.id, REVOCATION);
        await tokens.revoke(single.id, REVOCATION); // already revoked: nothing logged
        const root = newToken();
        await insert(root);
        const child = newToken({ issuedByTokenId: root.id, subject: root.subject });
        await insert(child);
        const grandchild = newToken({ issuedByTokenId: child.id, subject: root.subject });
        await insert(grandchild);
        await tokens.revokeCascade(root.id, REVOCATION);
        expect((await legacy.revoke("jti-1", { ...REVOCATION, expiresAt: null })).alreadyRevoked).toBe(false);
        expect((await legacy.revoke("jti-1", { ...REVOCATION, expiresAt: null })).alreadyRevoked).toBe(true);

        const page = await log.readAfter(start, 100);
        expect(page.entries.map((e) => e.position)).toEqual([start + 1, start + 2, start + 3, start + 4, start + 5]);
        expect(page.head).toBe(start + 5);
        expect(page.entries[0]).toEqual({ position: start + 1, kind: "token", id: single.id, key: Buffer.from(single.digest).toString("base64") });
        expect(new Set(page.entries.slice(1, 4).map((e) => e.id))).toEqual(new Set([root.id, child.id, grandchild.id]));
        expect(page.entries[4]).toMatchObject({ kind: "legacy_jti", id: "jti-1", key: undefined });
        // Paging: after a position, at most the limit.
        expect((await log.readAfter(start + 2, 2)).entries.map((e) => e.position)).toEqual([start + 3, start + 4]);

        await expect.poll(() => notices.length, { timeout: 5_000 }).toBe(5);
        expect(notices[0]).toMatch(new RegExp(`^r:${Buffer.from(single.digest).toString("base64").replace(/[+/]/g, "\\$&")}:${single.id}:\\d+:${start + 1}$`));
        expect(notices[4]).toBe(`l:${start + 5}`);
      } finally {
        await session.close();
      }
    });

    it("keeps positions gapless and unique under concurrent revocations", async () => {
      const start = (await log.readAfter(Number.MAX_SAFE_INTEGER, 1)).head;
      const many = Array.from({ length: 20 }, () => newToken());
      for (const t of many) await insert(t);
      await Promise.all(many.map((t) => tokens.revoke(t.id, REVOCATION)));
      const page = await log.readAfter(start, 100);
      expect(page.entries.map((e) => e.position)).toEqual(many.map((_, i) => start + i + 1));
      expect(new Set(page.entries.map((e) => e.id))).toEqual(new Set(many.map((t) => t.id)));
    });

    it("prunes old entries in bounded batches and moves the pruning mark", async () => {
      const before = await log.readAfter(0, 1000);
      expect(before.prunedThrough).toBe(0);
      expect(await log.prune(new Date(Date.now() - 3_600_000), 10)).toBe(0); // nothing that old
      expect(await log.prune(new Date(Date.now() + 60_000), 3)).toBe(3);
      const after = await log.readAfter(0, 1000);
      expect(after.prunedThrough).toBe(before.entries[2]!.position);
      expect(after.entries.length).toBe(before.entries.length - 3);
      expect(after.head).toBe(before.head);
    });

    if (backend.name === "PostgreSQL") {
      it("logs a revocation made by plain SQL too, and lets no position become visible before a smaller one: the second revocation waits for the first to commit", async () => {
        const first = newToken();
        const second = newToken();
        await insert(first);
        await insert(second);
        const a = new pg.Client({ connectionString: testDb!.url });
        await a.connect();
        try {
          await a.query("BEGIN");
          // Plain SQL, as an operator or a replica of the previous release would revoke: the trigger logs it all the same.
          await a.query("UPDATE tokens SET revoked_at = now(), revoked_by = 'manual', revoke_reason = 'manual' WHERE id = $1", [first.id]);
          const head = (await log.readAfter(Number.MAX_SAFE_INTEGER, 1)).head;
          let secondDone = false;
          const pending = tokens.revoke(second.id, REVOCATION).then((r) => ((secondDone = true), r));
          // The second revocation is blocked on the counter row's lock: it has no position yet, and nothing new is visible.
          await expect
            .poll(async () => Number((await a.query("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'")).rows[0].n), { timeout: 5_000 })
            .toBe(1);
          expect(secondDone).toBe(false);
          expect((await log.readAfter(head, 10)).entries).toEqual([]);
          await a.query("COMMIT");
          await pending;
          const page = await log.readAfter(head, 10);
          expect(page.entries.map((e) => [e.position, e.id])).toEqual([
            [head + 1, first.id],
            [head + 2, second.id],
          ]);
        } finally {
          await a.end();
        }
      });
    }

    it("logs nothing for other updates of a token (last-used times)", async () => {
      const head = (await log.readAfter(Number.MAX_SAFE_INTEGER, 1)).head;
      const t = newToken();
      await insert(t);
      await tokens.touchLastUsed(new Map([[t.id, NOW]]));
      expect((await log.readAfter(head, 10)).entries).toEqual([]);
    });

    it("keeps the statement's revocation and its log entry together", async () => {
      const head = (await log.readAfter(Number.MAX_SAFE_INTEGER, 1)).head;
      const t = newToken();
      await insert(t);
      await opened.db.transaction().execute(async (trx) => {
        const store = new KyselyTokenStore(trx);
        await store.revoke(t.id, REVOCATION);
        const { rows } = await sql<{ n: string | number }>`SELECT count(*) AS n FROM revocation_log WHERE subject_id = ${t.id}`.execute(trx);
        expect(Number(rows[0]!.n)).toBe(1);
      });
      expect((await log.readAfter(head, 10)).entries.map((e) => e.id)).toEqual([t.id]);
    });
  });
}
