/**
 * The audit trail under a flood (issue 8, item 4), on real PostgreSQL and PGlite.
 */
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { SecurityEventRow } from "../../src/domain/model.js";
import { SecurityEventRecorder } from "../../src/domain/security-events.js";
import { migrateToLatest, openDatabase } from "../../src/storage/database.js";
import type { DatabaseOptions, OpenedDatabase } from "../../src/storage/database.js";
import { KyselySecurityEventStore } from "../../src/storage/security-event-store.js";
import { createTestDatabase } from "../support/postgres.js";
import { CapturedLog, FixedClock } from "../support/fakes.js";

const SETUP_TIMEOUT_MS = 60_000;
const POOL: Omit<DatabaseOptions, "url" | "dataDir"> = { poolMax: 4, connectTimeoutMs: 5_000, statementTimeoutMs: 30_000 };

interface Backend {
  readonly name: string;
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

const randomHint = (): string => `cf-…${randomUUID().slice(0, 4)}`;

describe.each(backends)("security events on $name", (backend) => {
  let opened: OpenedDatabase;
  let teardown: () => Promise<void>;
  let store: KyselySecurityEventStore;

  beforeAll(async () => {
    ({ opened, teardown } = await backend.open());
    await migrateToLatest(opened.db);
    store = new KyselySecurityEventStore(opened.db);
  }, SETUP_TIMEOUT_MS);
  afterAll(() => teardown?.());

  it("stores one batch of 5,000 rows (over 65,535 bind parameters as one INSERT)", async () => {
    const now = new Date();
    const rows: SecurityEventRow[] = Array.from({ length: 5_000 }, () => ({
      id: randomUUID(),
      type: "authentication_failed",
      severity: "warning",
      message: "caller credential refused: unknown",
      serviceEnvironment: "development",
      peer: "203.0.113.9",
      tokenHint: randomHint(),
      firstSeen: now,
      lastSeen: now,
      count: 1,
    }));
    await store.insertMany(rows);
    const count = await opened.db.selectFrom("security_events").select((eb) => eb.fn.countAll<string>().as("n")).executeTakeFirstOrThrow();
    expect(Number(count.n)).toBeGreaterThanOrEqual(5_000);
  }, 60_000);

  it("is not wedged by a flood of random bearers: an environment mismatch raised after it is stored", async () => {
    const log = new CapturedLog();
    const recorder = new SecurityEventRecorder(store, log, new FixedClock(), 60_000);
    for (let i = 0; i < 5_000; i++) {
      recorder.record({
        type: "authentication_failed",
        severity: "warning",
        message: "caller credential refused: unknown",
        serviceEnvironment: "development",
        peer: "198.51.100.7",
        userAgent: `bot/${i}`,
        tokenHint: randomHint(),
        method: "/tokens.v1.TokenService/ListTokens",
      });
    }
    await recorder.flush();
    recorder.record({
      type: "environment_mismatch",
      severity: "critical",
      message: "Token environment mismatch: production token used in development",
      serviceEnvironment: "development",
      tokenEnvironment: "production",
      peer: "198.51.100.7",
      tokenHint: "cfprd-…abcd",
      method: "/tokens.v1.TokenService/IntrospectToken",
    });
    await recorder.flush();
    const critical = await store.list({ limit: 10, type: "environment_mismatch" });
    expect(critical).toHaveLength(1);
    const flood = (await store.list({ limit: 10_000, type: "authentication_failed" })).filter((r) => r.peer === "198.51.100.7");
    expect(flood.reduce((n, r) => n + r.count, 0)).toBe(5_000);
    expect(flood.length).toBeLessThanOrEqual(5);
  }, 60_000);
});
