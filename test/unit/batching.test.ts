import { describe, expect, it } from "vitest";
import { PeriodicBatcher } from "../../src/domain/batcher.js";
import { SecurityEventRecorder } from "../../src/domain/security-events.js";
import { CapturedLog, FixedClock, MemorySecurityEventStore } from "../support/fakes.js";

describe("batched writes", () => {
  it("folds a flood of identical security events into one row with a count and one log line", async () => {
    const store = new MemorySecurityEventStore();
    const log = new CapturedLog();
    const clock = new FixedClock();
    const recorder = new SecurityEventRecorder(store, log, clock, 60_000);
    const event = { type: "environment_mismatch", severity: "critical", message: "m", serviceEnvironment: "production", tokenHint: "cf-…abcd" } as const;
    for (let i = 0; i < 1000; i++) {
      recorder.record(event);
      clock.advance(1);
    }
    recorder.record({ ...event, tokenHint: "cf-…wxyz" });
    await recorder.flush();
    expect(store.writes).toBe(1);
    expect(store.rows).toHaveLength(2);
    expect(store.rows[0]).toMatchObject({ count: 1000, type: "environment_mismatch" });
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
