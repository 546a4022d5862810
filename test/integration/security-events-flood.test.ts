/**
 * The audit trail under a flood (issue 8, item 4), on real PostgreSQL and
 * embedded PGlite: the store takes any batch (chunked under PostgreSQL's
 * 65,535 bind parameters), the recorder folds random bearers from one peer
 * into a handful of rows, a refused write is dropped and logged once instead
 * of wedging the trail, and retention prunes old rows, also with concurrent
 * pruners. One case drives the whole service with 10,000 random bearers.
 */
import { randomUUID } from "node:crypto";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { sql } from "kysely";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Severity, TokenService, type ListSecurityEventsResponse } from "../../gen/tokens/v1/token_service_pb.js";
import type { SecurityEvent, SecurityEventRow } from "../../src/domain/model.js";
import { SecurityEventRecorder } from "../../src/domain/security-events.js";
import { mintToken } from "../../src/domain/token-format.js";
import { migrateToLatest, openDatabase } from "../../src/storage/database.js";
import type { DatabaseOptions, OpenedDatabase } from "../../src/storage/database.js";
import { translateStoreError } from "../../src/storage/errors.js";
import { KyselySecurityEventStore } from "../../src/storage/security-event-store.js";
import { CapturedLog, FixedClock } from "../support/fakes.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";
import { startTcpProxy } from "../support/tcp-proxy.js";

const SETUP_TIMEOUT_MS = 60_000;
const POOL: Omit<DatabaseOptions, "url" | "dataDir"> = { poolMax: 4, connectTimeoutMs: 5_000, statementTimeoutMs: 30_000 };

interface Backend {
  readonly name: string;
  /** PostgreSQL only: the URL, so a case can open a second handle (another replica). */
  readonly postgres: boolean;
  open(): Promise<{ opened: OpenedDatabase; url?: string; teardown(): Promise<void> }>;
}

const backends: Backend[] = [
  {
    name: "PostgreSQL",
    postgres: true,
    async open() {
      const testDb = await createTestDatabase();
      const opened = await openDatabase({ url: testDb.url, ...POOL });
      return {
        opened,
        url: testDb.url,
        async teardown() {
          await opened.close();
          await testDb.drop();
        },
      };
    },
  },
  {
    name: "PGlite",
    postgres: false,
    async open() {
      const opened = await openDatabase({ dataDir: "memory://", ...POOL });
      return { opened, teardown: () => opened.close() };
    },
  },
];

const randomHint = (): string => `cf-…${randomUUID().slice(0, 4)}`;

/** An `authentication_failed` event as `authenticate` raises it for a random bearer. */
const badBearer = (peer: string, i: number): SecurityEvent => ({
  type: "authentication_failed",
  severity: "warning",
  message: "caller credential refused: unknown",
  serviceEnvironment: "development",
  peer,
  userAgent: `bot/${i % 7}`,
  tokenHint: randomHint(),
  method: "/tokens.v1.TokenService/ListTokens",
  requestId: randomUUID(),
});

const mismatch: SecurityEvent = {
  type: "environment_mismatch",
  severity: "critical",
  message: "Token environment mismatch: production token used in development",
  serviceEnvironment: "development",
  tokenEnvironment: "production",
  peer: "198.51.100.7",
  tokenHint: "cfprd-…abcd",
  method: "/tokens.v1.TokenService/IntrospectToken",
};

describe.each(backends)("security events on $name", (backend) => {
  let opened: OpenedDatabase;
  let url: string | undefined;
  let teardown: () => Promise<void>;
  let store: KyselySecurityEventStore;

  beforeAll(async () => {
    ({ opened, url, teardown } = await backend.open());
    await migrateToLatest(opened.db);
    store = new KyselySecurityEventStore(opened.db);
  }, SETUP_TIMEOUT_MS);
  afterAll(() => teardown?.());

  const rowsOf = async (peer: string): Promise<SecurityEventRow[]> => (await store.list({ limit: 100_000 })).filter((r) => r.peer === peer);

  it("stores one batch of 5,000 rows (over 65,535 bind parameters as one INSERT), and a retried batch once", async () => {
    const now = new Date();
    const rows: SecurityEventRow[] = Array.from({ length: 5_000 }, () => ({
      ...badBearer("203.0.113.9", 0),
      requestId: undefined,
      id: randomUUID(),
      firstSeen: now,
      lastSeen: now,
      count: 1,
    })).map(({ requestId: _r, ...row }) => row);
    await store.insertMany(rows);
    // An outage half-way through means the recorder sends the batch again: rows already stored are skipped.
    await store.insertMany(rows);
    expect(await rowsOf("203.0.113.9")).toHaveLength(5_000);
  }, 60_000);

  it("folds 5,000 random bearers from one peer into one row, then stores an environment mismatch raised after them", async () => {
    const log = new CapturedLog();
    const recorder = new SecurityEventRecorder(store, log, new FixedClock(), 60_000);
    for (let i = 0; i < 5_000; i++) recorder.record(badBearer("198.51.100.7", i));
    await recorder.flush();
    recorder.record(mismatch);
    await recorder.flush();

    const rows = await rowsOf("198.51.100.7");
    const flood = rows.filter((r) => r.type === "authentication_failed");
    expect(flood).toHaveLength(1);
    expect(flood[0]).toMatchObject({ count: 5_000, distinctUserAgents: 7 });
    expect(flood[0]!.tokenHintSample).toHaveLength(5);
    // 5,000 random four-character hints: a few collide; the sketch is within its ±7 % (three standard errors of margin).
    expect(flood[0]!.distinctTokenHints).toBeGreaterThan(4_000);
    expect(flood[0]!.distinctTokenHints).toBeLessThan(6_000);
    expect(rows.filter((r) => r.type === "environment_mismatch")).toEqual([expect.objectContaining({ count: 1, tokenHint: "cfprd-…abcd" })]);
    expect(log.lines.filter((l) => (l.fields as { security_event?: string }).security_event === "authentication_failed")).toHaveLength(1);
  }, 60_000);

  it("stores 5,000 distinct actors as the row cap plus one overflow row whose counts add up", async () => {
    const log = new CapturedLog();
    const recorder = new SecurityEventRecorder(store, log, new FixedClock(), 60_000, undefined, { maxRowsPerWindow: 1_000 });
    for (let i = 0; i < 5_000; i++) recorder.record({ ...badBearer(`10.1.${i >> 8}.${i & 255}`, i), method: "/tokens.v1.TokenService/RevokeToken" });
    recorder.record(mismatch);
    await recorder.flush();
    const rows = (await store.list({ limit: 100_000, type: "authentication_failed" })).filter((r) => r.method === "/tokens.v1.TokenService/RevokeToken" || r.foldedSources !== undefined);
    expect(rows).toHaveLength(1_001);
    expect(rows.reduce((n, r) => n + r.count, 0)).toBe(5_000);
    const overflow = rows.find((r) => r.foldedSources !== undefined);
    expect(overflow).toMatchObject({ count: 4_000, severity: "warning" });
    expect(overflow?.peer).toBeUndefined();
    expect(overflow!.foldedSources).toBeGreaterThan(3_500);
    expect(overflow!.foldedSources).toBeLessThan(4_500);
    // One line per opened row and one for the overflow: bounded by the cap, not by the traffic.
    expect(log.lines.filter((l) => (l.fields as { security_event?: string }).security_event === "authentication_failed")).toHaveLength(1_001);
    expect((await store.list({ limit: 10, type: "environment_mismatch" })).length).toBeGreaterThanOrEqual(1);
  }, 60_000);

  it("drops a batch the store refuses (not an outage) with one log line, and stores the next window", async () => {
    const log = new CapturedLog();
    const recorder = new SecurityEventRecorder(store, log, new FixedClock(), 60_000);
    for (let i = 0; i < 100; i++) recorder.record(badBearer("192.0.2.66", i));
    // A refusal that is not an outage: the table is not there (42P01).
    await sql`ALTER TABLE security_events RENAME TO security_events_away`.execute(opened.db);
    try {
      await recorder.flush();
    } finally {
      await sql`ALTER TABLE security_events_away RENAME TO security_events`.execute(opened.db);
    }
    recorder.record(mismatch);
    await recorder.flush();
    await recorder.flush();
    const errors = log.lines.filter((l) => l.level === "error");
    expect(errors).toEqual([expect.objectContaining({ fields: expect.objectContaining({ dropped_rows: 1, dropped_events: 100 }) })]);
    expect(await rowsOf("192.0.2.66")).toEqual([]);
    expect((await store.list({ limit: 10, type: "environment_mismatch" })).length).toBeGreaterThanOrEqual(1);
  });

  it("prunes rows last seen before the retention period, in bounded batches", async () => {
    const clock = new FixedClock(new Date("2031-01-01T00:00:00Z"));
    const day = 24 * 60 * 60 * 1000;
    const at = (daysAgo: number) => new Date(clock.now().getTime() - daysAgo * day);
    const row = (daysAgo: number): SecurityEventRow => ({
      id: randomUUID(),
      type: "permission_denied",
      severity: "warning",
      message: "old",
      serviceEnvironment: "development",
      peer: "192.0.2.200",
      firstSeen: at(daysAgo + 1),
      lastSeen: at(daysAgo),
      count: 1,
    });
    await sql`DELETE FROM security_events`.execute(opened.db);
    await store.insertMany([...Array.from({ length: 25 }, () => row(91)), ...Array.from({ length: 3 }, () => row(89))]);
    const limited = new SecurityEventRecorder(store, new CapturedLog(), clock, 60_000, undefined, { retentionMs: 90 * day, pruneBatchRows: 10, maxPruneBatches: 1 });
    expect(await limited.prune()).toBe(10);
    const log = new CapturedLog();
    const recorder = new SecurityEventRecorder(store, log, clock, 60_000, undefined, { retentionMs: 90 * day, pruneBatchRows: 10 });
    expect(await recorder.prune()).toBe(15);
    const left = await store.list({ limit: 100_000 });
    expect(left.map((r) => r.lastSeen.getTime())).toEqual([at(89), at(89), at(89)].map((d) => d.getTime()));
    expect(log.lines).toEqual([expect.objectContaining({ level: "info", message: "old security events pruned" })]);
    expect(await recorder.prune()).toBe(0);
  });

  // Several replicas need several connections: PostgreSQL only (PGlite is one process's).
  if (backend.postgres) it("prunes from several replicas at once without failing or deleting anything twice", async () => {
    const now = new Date("2032-01-01T00:00:00Z");
    const old = new Date(now.getTime() - 400 * 24 * 60 * 60 * 1000);
    const rows: SecurityEventRow[] = Array.from({ length: 3_000 }, () => ({
      id: randomUUID(),
      type: "permission_denied",
      severity: "warning",
      message: "old",
      serviceEnvironment: "development",
      firstSeen: old,
      lastSeen: old,
      count: 1,
    }));
    await sql`DELETE FROM security_events`.execute(opened.db);
    await store.insertMany(rows);
    const replicas = await Promise.all([openDatabase({ url: url!, ...POOL }), openDatabase({ url: url!, ...POOL }), openDatabase({ url: url!, ...POOL })]);
    try {
      const pruners = replicas.map(
        (r) => new SecurityEventRecorder(new KyselySecurityEventStore(r.db), new CapturedLog(), new FixedClock(now), 60_000, undefined, { retentionMs: 90 * 24 * 60 * 60 * 1000, pruneBatchRows: 100 }),
      );
      const deleted = await Promise.all(pruners.map((p) => p.prune()));
      expect(deleted.reduce((a, b) => a + b, 0)).toBe(3_000);
      expect(await store.list({ limit: 10 })).toEqual([]);
    } finally {
      await Promise.all(replicas.map((r) => r.close()));
    }
  }, 60_000);
});

describe.each([
  ["PostgreSQL", true],
  ["PGlite", false],
] as const)("the service on %s under a flood of random bearers from one peer", (_name, usePostgres) => {
  let db: TestDatabase | undefined;
  let sut: ServiceUnderTest;
  let grpc: ReturnType<typeof grpcClient>;
  const FLOOD = 10_000;

  beforeAll(async () => {
    db = usePostgres ? await createTestDatabase() : undefined;
    sut = await startTestService({ ...(db ? { DATABASE_URL: db.url } : { DATA_DIR: "memory://" }), TOKEN_ENVIRONMENT: "development", LOG_LEVEL: "info" });
    grpc = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
  }, SETUP_TIMEOUT_MS);

  afterAll(async () => {
    grpc?.close();
    await sut?.service.stop();
    await db?.drop();
  });

  it("stores a handful of rows whose counts add up to 10,000, then stores and lists an environment mismatch", async () => {
    const admin = sut.bootstrapToken!;
    let next = 0;
    const codes = new Map<number, number>();
    const worker = async () => {
      while (next < FLOOD) {
        next++;
        const bearer = mintToken("development").token;
        try {
          await grpc.unary("listTokens", {}, { authorization: `Bearer ${bearer}`, "user-agent": `flood/${next % 13}` });
          codes.set(0, (codes.get(0) ?? 0) + 1);
        } catch (err) {
          const code = (err as { code: number }).code;
          codes.set(code, (codes.get(code) ?? 0) + 1);
        }
      }
    };
    await Promise.all(Array.from({ length: 32 }, worker));
    expect(codes).toEqual(new Map([[GrpcStatus.UNAUTHENTICATED, FLOOD]]));

    // A production token presented as a caller credential: the environment guard's critical event.
    const foreign = mintToken("production");
    await expect(grpc.unary("listTokens", {}, { authorization: `Bearer ${foreign.token}` })).rejects.toMatchObject({ code: GrpcStatus.UNAUTHENTICATED });

    const list = async (type: string): Promise<ListSecurityEventsResponse["events"]> =>
      (await grpc.unary<ListSecurityEventsResponse>("listSecurityEvents", { type, pageSize: 100 }, { authorization: `Bearer ${admin}` })).events;
    const mismatches = await list("environment_mismatch");
    expect(mismatches).toEqual([expect.objectContaining({ severity: Severity.CRITICAL, tokenHint: foreign.displayHint, peer: "127.0.0.1", count: 1n })]);

    const flood = (await list("authentication_failed")).filter((e) => e.method === "/tokens.v1.TokenService/ListTokens");
    expect(flood.reduce((n, e) => n + Number(e.count), 0)).toBe(FLOOD);
    // One row per window (10 s) the flood spanned, plus the one ListSecurityEvents flushed early.
    expect(flood.length).toBeGreaterThanOrEqual(1);
    expect(flood.length).toBeLessThanOrEqual(10);
    for (const row of flood) expect(row).toMatchObject({ peer: "127.0.0.1", message: "caller credential refused: unknown" });
    // The API shows a folded row's hints as a sample and a count, never a token.
    expect(flood.some((e) => /^cf-…\w{4}, .* \(\+~?[\d,]+ more\)$/.test(e.tokenHint))).toBe(true);

    const warned = sut.logs.lines.filter((l) => l.security_event === "authentication_failed");
    expect(warned.length).toBe(flood.length);
    const stored = await sut.service.database.db.selectFrom("security_events").select(["count", "token_hint_sample", "distinct_token_hints"]).where("type", "=", "authentication_failed").execute();
    expect(stored.reduce((n, r) => n + Number(r.count), 0)).toBe(FLOOD);
    console.log(`flood of ${FLOOD} random bearers: ${stored.length} rows, ${warned.length} warning lines, distinct hints ${stored.map((r) => r.distinct_token_hints).join("+")}`);
  }, 300_000);
});

describe("a PostgreSQL outage during a flood", () => {
  let testDb: TestDatabase;
  let proxy: Awaited<ReturnType<typeof startTcpProxy>>;
  let opened: OpenedDatabase;

  beforeAll(async () => {
    testDb = await createTestDatabase();
    proxy = await startTcpProxy(5432);
    const url = new URL(testDb.url);
    url.port = String(proxy.port);
    opened = await openDatabase({ url: url.toString(), ...POOL, connectTimeoutMs: 500, statementTimeoutMs: 2_000 });
    await migrateToLatest(opened.db);
  }, SETUP_TIMEOUT_MS);

  afterAll(async () => {
    await opened?.close();
    await proxy?.close();
    await testDb?.drop();
  });

  it("keeps the window's rows while the store is away and stores each exactly once when it is back", async () => {
    const store = new KyselySecurityEventStore(opened.db);
    const log = new CapturedLog();
    const recorder = new SecurityEventRecorder(store, log, new FixedClock(), 60_000);
    for (let i = 0; i < 3_000; i++) recorder.record(badBearer(`172.16.${i % 3}.1`, i));
    proxy.cut();
    await recorder.flush();
    expect(log.lines.filter((l) => l.message.includes("the store is unavailable"))).toEqual([expect.objectContaining({ level: "warn", fields: expect.objectContaining({ kept_rows: 3, dropped_rows: 0 }) })]);
    recorder.record(mismatch);
    proxy.restore();
    // The pool may hand out a connection the cut killed: that is an outage too, kept again.
    await expect
      .poll(async () => {
        await recorder.flush();
        return (await store.list({ limit: 100 })).length;
      }, { timeout: 20_000, interval: 200 })
      .toBe(4);
    const rows = await store.list({ limit: 100 });
    expect(rows.filter((r) => r.type === "authentication_failed").reduce((n, r) => n + r.count, 0)).toBe(3_000);
    expect(rows.filter((r) => r.type === "environment_mismatch")).toHaveLength(1);
    expect(log.lines.filter((l) => l.level === "error")).toEqual([]);
  }, 60_000);
});

describe("write errors, classified", () => {
  it("treats 08P01 (too many bind parameters) as a refusal, not an outage", () => {
    expect(translateStoreError(Object.assign(new Error("bind message has 14464 parameter formats but 0 parameters"), { code: "08P01" })).code).toBe("internal");
    expect(translateStoreError(Object.assign(new Error("connection failure"), { code: "08006" })).code).toBe("unavailable");
    expect(translateStoreError(Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" })).code).toBe("unavailable");
    expect(translateStoreError(Object.assign(new Error("duplicate key"), { code: "23505" })).code).toBe("internal");
  });
});
