import { describe, expect, it } from "vitest";
import type { TokenRecord } from "../../src/domain/model.js";
import type { LifecycleStore } from "../../src/domain/ports.js";
import { RevocationScheduler } from "../../src/domain/revocation-scheduler.js";
import { RotationWatcher } from "../../src/domain/rotate.js";
import { keyOfDigest } from "../../src/domain/token-format.js";
import { CapturedEvents, CapturedLog, FixedClock } from "../support/fakes.js";

/**
 * The rotation watcher and the revocation scheduler with a scripted store
 * and a fixed clock: what they ask of the store, how often, and that a
 * failing store never escapes them (they run off the request path).
 */

const PRED = "11111111-1111-4111-8111-111111111111";
const SUCC = "22222222-2222-4222-8222-222222222222";

function record(id: string, extra: Partial<TokenRecord> = {}): TokenRecord {
  return {
    id, digest: new Uint8Array(32).fill(id.charCodeAt(0)), displayHint: "cf-…abcd", name: "n", subject: "s", fullName: "", teams: [], scopes: [], namespaces: [], isAdmin: false, metadata: {},
    environment: "development", createdAt: new Date(0), createdBy: "x", issuedByTokenId: null, expiresAt: null, lastUsedAt: null, revokedAt: null, revokedBy: null, revokeReason: null, ...extra,
  };
}

/** A LifecycleStore whose every method fails unless a test scripts it; calls are counted. */
function scriptedStore(script: Partial<LifecycleStore>) {
  const calls: string[] = [];
  const fail = (name: string) => async () => {
    calls.push(name);
    throw new Error(`${name} not scripted`);
  };
  const names: (keyof LifecycleStore)[] = ["linkRotation", "dueRevocations", "revokeMany", "usedRotations", "markSuccessorUsed", "matching", "createBulkRevocation", "bulkRevokeBatch", "finishBulkRevocation", "claimBulkRevocation"];
  const store = Object.fromEntries(
    names.map((name) => {
      const scripted = script[name] as ((...args: unknown[]) => Promise<unknown>) | undefined;
      return [name, scripted ? async (...args: unknown[]) => (calls.push(name), scripted(...args)) : fail(name)];
    }),
  ) as unknown as LifecycleStore;
  return { store, calls };
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 5));

function parts(store: LifecycleStore, findById: (id: string) => Promise<TokenRecord | undefined> = async () => undefined) {
  const evicted: string[] = [];
  const events = new CapturedEvents();
  const log = new CapturedLog();
  const clock = new FixedClock();
  return { evicted, events, log, clock, parts: { lifecycle: store, store, tokens: { findById }, cache: { evict: (key: string) => void evicted.push(key) }, events, clock, log, environment: "development" as const } };
}

describe("RotationWatcher", () => {
  it("records a successor's first use once per replica, and revokes the predecessor when asked, raising one event", async () => {
    const { store, calls } = scriptedStore({
      markSuccessorUsed: async () => record(PRED, { rotation: { predecessorId: null, successorId: SUCC, scheduledRevokeAt: new Date(1), revokeOnSuccessorUse: true, successorUsedAt: new Date(0) } }),
      revokeMany: async () => [record(PRED, { revokedAt: new Date(0) })],
    });
    const p = parts(store);
    const watcher = new RotationWatcher(p.parts);
    watcher.successorUsed(SUCC, PRED);
    watcher.successorUsed(SUCC, PRED);
    await settle();
    expect(calls).toEqual(["markSuccessorUsed", "revokeMany"]);
    expect(p.evicted).toEqual([keyOfDigest(record(PRED).digest)]);
    expect(p.events.events.map((e) => [e.type, e.tokenId])).toEqual([["token_revoked", PRED]]);
  });

  it("does not revoke when the rotation did not ask for it, and tries again after a store failure", async () => {
    let fail = true;
    const { store, calls } = scriptedStore({
      markSuccessorUsed: async () => {
        if (fail) throw new Error("store down");
        return record(PRED, { rotation: { predecessorId: null, successorId: SUCC, scheduledRevokeAt: new Date(1), revokeOnSuccessorUse: false, successorUsedAt: new Date(0) } });
      },
    });
    const p = parts(store);
    const watcher = new RotationWatcher(p.parts);
    watcher.successorUsed(SUCC, PRED);
    await settle();
    expect(p.log.lines.some((l) => l.level === "warn")).toBe(true);
    fail = false;
    watcher.successorUsed(SUCC, PRED);
    await settle();
    expect(calls).toEqual(["markSuccessorUsed", "markSuccessorUsed"]);
    expect(p.events.events).toEqual([]);
  });

  it("checks a rotated token's reuse at most every few seconds, and raises rotated_token_reused only after the successor was used", async () => {
    let successorUsedAt: Date | null = null;
    const reads: string[] = [];
    const { store } = scriptedStore({});
    const p = parts(store, async (id) => {
      reads.push(id);
      return record(PRED, { rotation: { predecessorId: null, successorId: SUCC, scheduledRevokeAt: new Date(1), revokeOnSuccessorUse: false, successorUsedAt } });
    });
    const watcher = new RotationWatcher(p.parts);
    const meta = { method: "/tokens.v1.TokenService/IntrospectToken", peer: "10.0.0.1" };
    watcher.rotatedTokenUsed(PRED, "cf-…abcd", meta);
    await settle();
    expect(p.events.events).toEqual([]);
    successorUsedAt = new Date(0);
    watcher.rotatedTokenUsed(PRED, "cf-…abcd", meta); // within the interval: not read again
    await settle();
    expect(reads).toHaveLength(1);
    p.clock.advance(5_000);
    watcher.rotatedTokenUsed(PRED, "cf-…abcd", meta);
    await settle();
    expect(reads).toHaveLength(2);
    expect(p.events.events).toMatchObject([{ type: "rotated_token_reused", severity: "warning", tokenId: PRED, tokenHint: "cf-…abcd", peer: "10.0.0.1" }]);
  });
});

describe("RevocationScheduler", () => {
  it("revokes what is due, only what is due at that time, and raises an event per token it revoked", async () => {
    let asked: { ids: readonly string[]; dueBy?: Date } | undefined;
    const { store } = scriptedStore({
      dueRevocations: async () => [PRED],
      revokeMany: async (ids: readonly string[], _revocation: unknown, options?: { dueBy?: Date }) => {
        asked = { ids, ...(options?.dueBy ? { dueBy: options.dueBy } : {}) };
        return [record(PRED, { revokedAt: new Date(0), revokedBy: "rotation" })];
      },
      usedRotations: async () => [],
      claimBulkRevocation: async () => undefined,
    });
    const p = parts(store);
    await new RevocationScheduler(p.parts, 1000).tick();
    expect(asked).toEqual({ ids: [PRED], dueBy: p.clock.now() });
    expect(p.events.events.map((e) => [e.type, e.tokenId, e.message])).toEqual([["token_revoked", PRED, "rotated token revoked: grace period ended"]]);
  });

  it("drops a used rotation's cached answer once per replica", async () => {
    const { store } = scriptedStore({ dueRevocations: async () => [], usedRotations: async () => [record(PRED)], claimBulkRevocation: async () => undefined });
    const p = parts(store);
    const scheduler = new RevocationScheduler(p.parts, 1000);
    await scheduler.tick();
    await scheduler.tick();
    expect(p.evicted).toEqual([keyOfDigest(record(PRED).digest)]);
  });

  it("never throws: a failing store is logged and the next pass tries again", async () => {
    const { store } = scriptedStore({});
    const p = parts(store);
    await expect(new RevocationScheduler(p.parts, 1000).tick()).resolves.toBeUndefined();
    expect(p.log.lines.filter((l) => l.level === "warn").map((l) => l.message)).toEqual(["revocation scheduler pass failed; retrying at the next"]);
  });

  it("runs passes on its timer until stopped", async () => {
    let passes = 0;
    const { store } = scriptedStore({ dueRevocations: async () => (passes++, []), usedRotations: async () => [], claimBulkRevocation: async () => undefined });
    const p = parts(store);
    const scheduler = new RevocationScheduler(p.parts, 5);
    scheduler.start();
    await expect.poll(() => passes, { timeout: 2_000, interval: 5 }).toBeGreaterThanOrEqual(2);
    await scheduler.stop();
    const stoppedAt = passes;
    await new Promise((resolve) => setTimeout(resolve, 30));
    expect(passes).toBe(stoppedAt);
  });
});
