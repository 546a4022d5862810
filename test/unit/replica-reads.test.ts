/**
 * Routing of cache misses between a read replica and the primary
 * (domain/replica-reads.ts), with fakes and a fixed clock: a replica answer
 * is used only when its snapshot covers every revocation applied here, and
 * it is cached as of the last confirmation, never as of the read.
 */
import { describe, expect, it } from "vitest";
import type { TokenRecord } from "../../src/domain/model.js";
import { ReplicaReadRouter, type ReplicaLookup, type ReplicaReads } from "../../src/domain/replica-reads.js";
import { TokenCache } from "../../src/domain/token-cache.js";

const silent = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined } as never;

function record(name: string, revoked = false): TokenRecord {
  return { id: "00000000-0000-4000-8000-000000000001", name, revokedAt: revoked ? new Date(0) : null } as unknown as TokenRecord;
}

function setup(replicaAnswer: () => Promise<ReplicaLookup>) {
  let now = 10_000;
  const mark = { position: 5, confirmedAt: 9_900 };
  let primaryReads = 0;
  const replica: ReplicaReads & { fail: boolean; pings: number } = {
    fail: false,
    pings: 0,
    findByDigest: () => (replica.fail ? Promise.reject(new Error("down")) : replicaAnswer()),
    ping: async () => {
      replica.pings++;
      if (replica.fail) throw new Error("down");
    },
  };
  const router = new ReplicaReadRouter(
    replica,
    async () => (primaryReads++, record("primary", true)),
    { mark: () => ({ ...mark }) },
    { stalenessMs: 2_000, lagRetryMs: 100, probeMs: 5 },
    silent,
    () => now,
  );
  return { router, mark, replica, primaryReads: () => primaryReads, advance: (ms: number) => (now += ms) };
}

describe("a replica answer is used", () => {
  it("when its snapshot's log head covers the position applied here, proven as of the last confirmation", async () => {
    const f = setup(async () => ({ record: record("replica"), position: 5 }));
    let proven: number | undefined;
    expect((await f.router.findByDigest(new Uint8Array(32), (at) => (proven = at)))?.name).toBe("replica");
    expect(proven).toBe(9_900);
    expect(f.primaryReads()).toBe(0);
    expect(f.router.stats().served).toBe(1);
  });
});

describe("the primary answers instead", () => {
  it("when the replica has not replayed a revocation applied here (the primary says revoked)", async () => {
    let head = 4;
    const f = setup(async () => ({ record: record("replica"), position: head }));
    const answer = await f.router.findByDigest(new Uint8Array(32));
    expect(answer?.revokedAt).not.toBeNull();
    expect(f.router.stats().lagging).toBe(1);
    // While it is not known to have caught up, one miss per 100 ms tries it; the rest go straight to the primary.
    await f.router.findByDigest(new Uint8Array(32));
    expect(f.router.stats().skipped).toBe(1);
    f.advance(101);
    await f.router.findByDigest(new Uint8Array(32));
    expect(f.router.stats().lagging).toBe(2);
    // Caught up: the next try is served, and every miss after it goes to the replica again.
    head = 5;
    f.advance(101);
    expect((await f.router.findByDigest(new Uint8Array(32)))?.name).toBe("replica");
    expect((await f.router.findByDigest(new Uint8Array(32)))?.name).toBe("replica");
    expect(f.router.stats()).toMatchObject({ served: 2, lagging: 2, skipped: 1 });
  });

  it("a revocation applied here sends one miss to find out whether the replica holds it, not all of them", async () => {
    const f = setup(async () => ({ record: record("replica"), position: f.mark.position }));
    await f.router.findByDigest(new Uint8Array(32)); // the replica is seen at head 5
    f.advance(500);
    f.mark.position = 6; // a notice; the replica replays it at once (the common case)
    const answers = await Promise.all([1, 2, 3].map(() => f.router.findByDigest(new Uint8Array(32))));
    expect(answers.map((a) => a?.name)).toEqual(["replica", "primary", "primary"]);
    expect((await f.router.findByDigest(new Uint8Array(32)))?.name).toBe("replica");
  });

  it("when a notice is applied while the replica read is in flight (the position is read after the read)", async () => {
    let release!: (v: ReplicaLookup) => void;
    const f = setup(() => new Promise((resolve) => (release = resolve)));
    const pending = f.router.findByDigest(new Uint8Array(32));
    await new Promise((r) => setImmediate(r));
    f.mark.position = 6; // the revocation's notice lands; the replica's snapshot was taken before it
    release({ record: record("replica"), position: 5 });
    expect((await pending)?.name).toBe("primary");
  });

  it("when no revocation confirmation is recent enough to prove a replica answer by", async () => {
    const f = setup(async () => ({ record: record("replica"), position: 9 }));
    f.advance(2_000); // confirmed 2,100 ms ago
    expect((await f.router.findByDigest(new Uint8Array(32)))?.name).toBe("primary");
    expect(f.router.stats().unconfirmed).toBe(1);
  });

  it("when the replica has no such row (perhaps issued a moment ago, not replayed yet)", async () => {
    const f = setup(async () => ({ record: undefined, position: 9 }));
    expect((await f.router.findByDigest(new Uint8Array(32)))?.name).toBe("primary");
    expect(f.router.stats().not_found).toBe(1);
  });

  it("when the replica fails, until a probe reaches it again", async () => {
    const f = setup(async () => ({ record: record("replica"), position: 5 }));
    f.replica.fail = true;
    expect((await f.router.findByDigest(new Uint8Array(32)))?.name).toBe("primary");
    expect(f.router.replicaDown).toBe(true);
    expect((await f.router.findByDigest(new Uint8Array(32)))?.name).toBe("primary");
    expect(f.router.stats()).toMatchObject({ failed: 1, skipped: 1 });
    await expect.poll(() => f.replica.pings).toBeGreaterThan(1);
    f.replica.fail = false;
    await expect.poll(() => f.router.replicaDown).toBe(false);
    f.advance(101); // the first try after its return (it may have missed revocations while away)
    expect((await f.router.findByDigest(new Uint8Array(32)))?.name).toBe("replica");
    f.router.stop();
  });
});

describe("the cache", () => {
  it("keeps a replica answer as of when it was proven, so it ages out within the staleness bound of that proof", async () => {
    const cache = new TokenCache<string | null>({ maxEntries: 10, maxBytes: 1e6, stalenessMs: 2_000, negativeTtlMs: 1_000, sizeOf: () => 1 });
    await cache.load("k", 10_000, async (provenAt) => {
      provenAt(9_000);
      return "v";
    });
    expect(cache.get("k", 10_900)?.record).toBe("v");
    expect(cache.get("k", 11_001)).toBeUndefined(); // 2,001 ms after the proof, though only 1,001 after the read
  });
});
