import { describe, expect, it } from "vitest";
import { PeriodicBatcher } from "../../src/domain/batcher.js";
import { DistinctCount } from "../../src/domain/distinct-count.js";
import { TokenError } from "../../src/domain/errors.js";
import type { SecurityEvent, SecurityEventRow } from "../../src/domain/model.js";
import type { SecurityEventMetrics } from "../../src/domain/ports.js";
import { SecurityEventRecorder, foldedValues } from "../../src/domain/security-events.js";
import { CapturedLog, FixedClock, MemorySecurityEventStore } from "../support/fakes.js";

/** An `authentication_failed` event for a random bearer, as `authenticate` raises it. */
const bearer = (peer: string, hint: string, userAgent = "bot/1"): SecurityEvent => ({
  type: "authentication_failed",
  severity: "warning",
  message: "caller credential refused: unknown",
  serviceEnvironment: "development",
  peer,
  userAgent,
  tokenHint: hint,
  method: "/tokens.v1.TokenService/ListTokens",
});

const critical: SecurityEvent = {
  type: "environment_mismatch",
  severity: "critical",
  message: "Token environment mismatch: production token used in development",
  serviceEnvironment: "development",
  tokenEnvironment: "production",
  peer: "10.9.9.9",
  tokenHint: "cfprd-…abcd",
};

/** A store that fails every write with the given error while `failing` is set. */
class FailingStore extends MemorySecurityEventStore {
  failing: Error | undefined;
  override async insertMany(rows: readonly SecurityEventRow[]): Promise<void> {
    if (this.failing) {
      this.writes++;
      throw this.failing;
    }
    await super.insertMany(rows);
  }
}

/** Metrics that add up what the recorder reports. */
class CountingMetrics implements SecurityEventMetrics {
  events = 0;
  overflowed = 0;
  dropped: Record<string, number> = {};
  securityEvent(): void {
    this.events++;
  }
  securityEventsOverflowed(count: number): void {
    this.overflowed += count;
  }
  securityEventsDropped(reason: string, count: number): void {
    this.dropped[reason] = (this.dropped[reason] ?? 0) + count;
  }
}

const total = (rows: readonly SecurityEventRow[]): number => rows.reduce((n, r) => n + r.count, 0);
const eventLines = (log: CapturedLog, type: string) => log.lines.filter((l) => (l.fields as { security_event?: string }).security_event === type);

describe("batched writes", () => {
  it("folds a flood of identical security events into one row with a count and one log line", async () => {
    const store = new MemorySecurityEventStore();
    const log = new CapturedLog();
    const clock = new FixedClock();
    const recorder = new SecurityEventRecorder(store, log, clock, 60_000);
    const event = { type: "environment_mismatch", severity: "critical", message: "m", serviceEnvironment: "production", tokenHint: "cf-…abcd", peer: "10.0.0.1" } as const;
    for (let i = 0; i < 1000; i++) {
      recorder.record(event);
      clock.advance(1);
    }
    recorder.record({ ...event, peer: "10.0.0.2" });
    await recorder.flush();
    expect(store.writes).toBe(1);
    expect(store.rows).toHaveLength(2);
    expect(store.rows[0]).toMatchObject({ count: 1000, type: "environment_mismatch", tokenHint: "cf-…abcd" });
    expect(store.rows[0]!.tokenHintSample).toBeUndefined();
    expect(store.rows[0]!.lastSeen.getTime() - store.rows[0]!.firstSeen.getTime()).toBe(999);
    expect(log.lines).toHaveLength(2);
    expect(log.lines[0]).toMatchObject({ level: "warn", fields: { security_event: "environment_mismatch" } });
  });

  it("keeps a failed batch and writes it on the next flush", async () => {
    const written: Map<string, number>[] = [];
    let fail = true;
    const errors: unknown[] = [];
    const batcher = new PeriodicBatcher<number>({
      intervalMs: 60_000,
      maxPending: 10,
      merge: (a, b) => Math.max(a, b),
      write: async (batch) => {
        if (fail) throw new Error("down");
        written.push(new Map(batch));
      },
      onError: (error) => errors.push(error),
    });
    batcher.add("a", 1);
    await batcher.flush();
    expect(errors).toHaveLength(1);
    batcher.add("a", 3);
    fail = false;
    await batcher.stop();
    expect(written).toEqual([new Map([["a", 3]])]);
  });

  it("drops new keys beyond its bound instead of growing without limit, and says so", async () => {
    const details: { dropped: number }[] = [];
    const batcher = new PeriodicBatcher<number>({ intervalMs: 60_000, maxPending: 2, merge: (a) => a, write: async () => {}, onError: (_e, d) => details.push(d) });
    for (const key of ["a", "b", "c", "d"]) batcher.add(key, 1);
    expect(batcher.size).toBe(2);
    await batcher.flush();
    expect(details).toEqual([{ pending: 2, dropped: 2 }]);
  });
});

describe("security events under a flood", () => {
  it("folds random bearers from one peer by actor: one row, one log line, a sample and a count of the hints, never more", async () => {
    const store = new MemorySecurityEventStore();
    const log = new CapturedLog();
    const recorder = new SecurityEventRecorder(store, log, new FixedClock(), 60_000);
    for (let i = 0; i < 10_000; i++) recorder.record({ ...bearer("203.0.113.5", `cf-…${i.toString(36).padStart(4, "0")}`, `ua/${i % 3}`), requestId: `r${i}` });
    await recorder.flush();
    expect(store.rows).toHaveLength(1);
    const row = store.rows[0]!;
    expect(row).toMatchObject({ count: 10_000, tokenHint: "cf-…0000", userAgent: "ua/0", tokenHintSample: ["cf-…0000", "cf-…0001", "cf-…0002", "cf-…0003", "cf-…0004"] });
    expect(row).toMatchObject({ userAgentSample: ["ua/0", "ua/1", "ua/2"], distinctUserAgents: 3 });
    expect(row.distinctTokenHints).toBeGreaterThan(8_500);
    expect(row.distinctTokenHints).toBeLessThan(11_500);
    expect(row).not.toHaveProperty("requestId");
    expect(eventLines(log, "authentication_failed")).toHaveLength(1);
  });

  it("keeps actors apart: another peer, caller, method or message is another row", async () => {
    const store = new MemorySecurityEventStore();
    const recorder = new SecurityEventRecorder(store, new CapturedLog(), new FixedClock(), 60_000);
    const base = bearer("203.0.113.5", "cf-…aaaa");
    for (const event of [base, { ...base, peer: "203.0.113.6" }, { ...base, method: "/x/Y" }, { ...base, message: "caller credential refused: expired" }, { ...base, callerTokenId: "t1" }, { ...base, userAgent: "other", tokenHint: "cf-…bbbb" }]) {
      recorder.record(event);
    }
    await recorder.flush();
    expect(store.rows.map((r) => r.count).sort()).toEqual([1, 1, 1, 1, 2]);
  });

  it("caps rows per window: further actors fold into one overflow row per type and severity, with one log line", async () => {
    const store = new MemorySecurityEventStore();
    const log = new CapturedLog();
    const metrics = new CountingMetrics();
    const recorder = new SecurityEventRecorder(store, log, new FixedClock(), 60_000, metrics, { maxRowsPerWindow: 3 });
    for (let i = 0; i < 10; i++) for (let j = 0; j < 5; j++) recorder.record(bearer(`10.0.0.${i}`, `cf-…${i}${j}00`));
    recorder.record({ ...critical, severity: "warning", type: "permission_denied", callerTokenId: "t" });
    await recorder.flush();
    const overflow = store.rows.filter((r) => r.foldedSources !== undefined);
    // Three rows for the first three peers; the cap is shared by info and warning, so the permission_denied overflows too.
    expect(store.rows).toHaveLength(5);
    expect(overflow).toEqual([
      expect.objectContaining({ type: "authentication_failed", severity: "warning", count: 35, foldedSources: 7 }),
      expect.objectContaining({ type: "permission_denied", severity: "warning", count: 1, foldedSources: 1 }),
    ]);
    expect(overflow[0]!.message).toMatch(/^authentication_failed events from more sources than the cap of 3 rows per window/);
    expect(overflow[0]).not.toHaveProperty("peer");
    expect(total(store.rows)).toBe(51);
    expect(metrics).toMatchObject({ events: 51, overflowed: 36 });
    expect(eventLines(log, "authentication_failed")).toHaveLength(4);
    expect(eventLines(log, "permission_denied")).toHaveLength(1);
    // The next window starts afresh.
    recorder.record(bearer("10.0.0.9", "cf-…zzzz"));
    await recorder.flush();
    expect(store.rows.at(-1)).toMatchObject({ peer: "10.0.0.9", count: 1 });
  });

  it("keeps room for critical events: a flood of warnings does not crowd out an environment mismatch", async () => {
    const store = new MemorySecurityEventStore();
    const recorder = new SecurityEventRecorder(store, new CapturedLog(), new FixedClock(), 60_000, undefined, { maxRowsPerWindow: 2 });
    for (let i = 0; i < 100; i++) recorder.record(bearer(`10.0.1.${i}`, "cf-…aaaa"));
    recorder.record(critical);
    await recorder.flush();
    expect(store.rows.filter((r) => r.type === "environment_mismatch")).toEqual([expect.objectContaining({ peer: "10.9.9.9", count: 1 })]);
  });

  it("keeps rows through an outage, bounded, with critical ones first, and writes them when the store is back", async () => {
    const store = new FailingStore();
    const log = new CapturedLog();
    const metrics = new CountingMetrics();
    const recorder = new SecurityEventRecorder(store, log, new FixedClock(), 60_000, metrics, { maxRowsPerWindow: 100, maxBufferedRows: 20 });
    store.failing = new TokenError("unavailable", "the token store is unavailable; try again");
    for (let window = 0; window < 3; window++) {
      for (let i = 0; i < 10; i++) recorder.record(bearer(`10.${window}.0.${i}`, "cf-…aaaa"));
      await recorder.flush();
    }
    recorder.record(critical);
    await recorder.flush();
    // 30 warning rows met a buffer of 20 less 2 reserved for critical: 18 kept, 12 dropped and counted.
    expect(metrics.dropped).toEqual({ buffer_full: 12 });
    expect(log.lines.filter((l) => l.level === "warn" && l.message.includes("unavailable"))).toHaveLength(4);
    expect(log.lines.at(-1)).toMatchObject({ fields: { kept_rows: 19, dropped_rows: 0 } });
    store.failing = undefined;
    await recorder.flush();
    expect(store.rows).toHaveLength(19);
    expect(store.rows.filter((r) => r.severity === "critical")).toHaveLength(1);
    // Kept rows are the oldest: the first windows' peers.
    expect(store.rows.filter((r) => r.peer?.startsWith("10.2.")).length).toBe(0);
    await recorder.flush();
    expect(store.rows).toHaveLength(19);
  });

  it("drops a batch the store refuses (not an outage), logs it once, and never retries it", async () => {
    const store = new FailingStore();
    const log = new CapturedLog();
    const metrics = new CountingMetrics();
    const recorder = new SecurityEventRecorder(store, log, new FixedClock(), 60_000, metrics);
    store.failing = new TokenError("internal", "internal error");
    for (let i = 0; i < 50; i++) recorder.record(bearer(`10.0.2.${i}`, "cf-…aaaa"));
    await recorder.flush();
    await recorder.flush();
    await recorder.flush();
    expect(store.writes).toBe(1);
    expect(log.lines.filter((l) => l.level === "error")).toEqual([
      expect.objectContaining({ message: "security events dropped: the store refused them (not an outage, so not retried)", fields: expect.objectContaining({ dropped_rows: 50, dropped_events: 50 }) }),
    ]);
    expect(metrics.dropped).toEqual({ refused: 50 });
    store.failing = undefined;
    recorder.record(critical);
    await recorder.flush();
    expect(store.rows).toEqual([expect.objectContaining({ type: "environment_mismatch" })]);
  });

  it("prunes rows past the retention in batches, and not at all when retention is 0", async () => {
    const clock = new FixedClock();
    const store = new MemorySecurityEventStore();
    const day = 86_400_000;
    const row = (ageDays: number): SecurityEventRow => ({ ...critical, id: `${ageDays}-${Math.random()}`, firstSeen: new Date(clock.now().getTime() - ageDays * day), lastSeen: new Date(clock.now().getTime() - ageDays * day), count: 1 });
    await store.insertMany([...Array.from({ length: 25 }, () => row(100)), row(10)]);
    expect(await new SecurityEventRecorder(store, new CapturedLog(), clock, 60_000, undefined, { retentionMs: 0 }).prune()).toBe(0);
    const recorder = new SecurityEventRecorder(store, new CapturedLog(), clock, 60_000, undefined, { retentionMs: 90 * day, pruneBatchRows: 10, maxPruneBatches: 2 });
    expect(await recorder.prune()).toBe(20);
    expect(await recorder.prune()).toBe(5);
    expect(store.rows).toHaveLength(1);
  });
});

describe("DistinctCount", () => {
  it("is exact up to 64 values and keeps the first few as a sample", () => {
    const count = new DistinctCount(3);
    for (let i = 0; i < 64; i++) for (let j = 0; j < 3; j++) count.add(`v${i}`);
    expect(count.size).toBe(64);
    expect(count.sample).toEqual(["v0", "v1", "v2"]);
  });

  it.each([100, 1_000, 100_000])("estimates %i distinct values within 20 %", (n) => {
    const count = new DistinctCount(0);
    for (let i = 0; i < n; i++) count.add(`cf-…${i}`);
    expect(Math.abs(count.size - n) / n).toBeLessThan(0.2);
  });
});

describe("foldedValues", () => {
  it("shows one value as it is, several as a sample and how many more", () => {
    expect(foldedValues(undefined, undefined, undefined)).toBe("");
    expect(foldedValues("cf-…a", undefined, undefined)).toBe("cf-…a");
    expect(foldedValues("cf-…a", ["cf-…a", "cf-…b"], 2)).toBe("cf-…a, cf-…b");
    expect(foldedValues("cf-…a", ["cf-…a", "cf-…b"], 9)).toBe("cf-…a, cf-…b (+7 more)");
    expect(foldedValues("cf-…a", ["cf-…a", "cf-…b"], 10_000)).toBe("cf-…a, cf-…b (+~9,998 more)");
  });
});
