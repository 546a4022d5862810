import { describe, expect, it } from "vitest";
import { TokenError } from "../../src/domain/errors.js";
import { introspectToken } from "../../src/domain/introspect.js";
import { bootstrapAdmin } from "../../src/domain/issue.js";
import type { Caller } from "../../src/domain/model.js";
import type { TokenDeps } from "../../src/domain/ports.js";
import { ConcurrencyLimit, RateLimitedError, RateLimits, TokenBuckets, peerOf, retryAfterSeconds, type RateLimitOptions } from "../../src/domain/rate-limit.js";
import { TokenCache } from "../../src/domain/token-cache.js";
import { mintToken } from "../../src/domain/token-format.js";
import { StreamQuota, watchRevocations, type WatchEvent } from "../../src/domain/watch.js";
import { GatedTokenStore } from "../../src/domain/write-gate.js";
import { RevocationHub } from "../../src/domain/revocation-hub.js";
import { CapturedEvents, fakeDeps } from "../support/fakes.js";

const meta = { method: "/tokens.v1.TokenService/IntrospectToken", peer: "192.0.2.7", userAgent: "test" };

const OPTIONS: RateLimitOptions = {
  perCaller: {
    introspect: { ratePerSecond: 10, burst: 3 },
    issue: { ratePerSecond: 1, burst: 1 },
    revoke: { ratePerSecond: 0, burst: 0 },
    list: { ratePerSecond: 1, burst: 2 },
  },
  failedAuthPerPeer: { ratePerSecond: 1, burst: 2 },
  maxKeys: 100,
  lookupsInFlightPerCaller: 2,
  lookupsQueuedPerCaller: 1,
};

const caller = (tokenId: string): Caller => ({ tokenId, subject: `${tokenId}@example.com`, fullName: "", scopes: [], teams: [], namespaces: [], isAdmin: false, expiresAt: null });

/** A promise with its resolver outside, for stores that answer when a test says so. */
function deferred<T>() {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

const flush = () => new Promise((r) => setImmediate(r));

describe("token buckets", () => {
  it("admits the burst, then refuses with the time until the next token", () => {
    const b = new TokenBuckets({ ratePerSecond: 2, burst: 3 }, { maxKeys: 10 });
    expect([b.take("a", 0), b.take("a", 0), b.take("a", 0)]).toEqual([0, 0, 0]);
    expect(b.take("a", 0)).toBe(500);
    expect(b.take("a", 250)).toBe(250);
    expect(b.take("a", 500)).toBe(0); // one token back after half a second
    expect(b.take("b", 500)).toBe(0); // keys are independent
  });

  it("peeks without taking", () => {
    const b = new TokenBuckets({ ratePerSecond: 1, burst: 1 }, { maxKeys: 10 });
    expect(b.peek("a", 0)).toBe(0);
    expect(b.take("a", 0)).toBe(0);
    expect(b.peek("a", 0)).toBe(1000);
    expect(b.peek("a", 0)).toBe(1000);
    expect(b.peek("a", 1000)).toBe(0);
  });

  it("forgets buckets that have refilled: idle keys cost no memory", () => {
    const b = new TokenBuckets({ ratePerSecond: 10, burst: 5 }, { maxKeys: 1000, sweepMs: 1000 });
    for (let i = 0; i < 100; i++) b.take(`k${i}`, 0);
    expect(b.size).toBe(100);
    b.take("late", 5_000); // a new key after the sweep interval sweeps the refilled ones
    expect(b.size).toBe(1);
  });

  it("holds at most maxKeys; newcomers beyond it share one bucket and reset nobody's", () => {
    const b = new TokenBuckets({ ratePerSecond: 1, burst: 2 }, { maxKeys: 10 });
    for (let i = 0; i < 10; i++) b.take(`k${i}`, 0);
    b.take("k0", 0);
    expect(b.take("k0", 0)).toBeGreaterThan(0); // k0 spent its burst
    // A flood of fresh keys: the table stays at 10 and they share the overflow bucket.
    const answers = Array.from({ length: 1000 }, (_, i) => b.take(`new${i}`, 0));
    expect(b.size).toBe(10);
    expect(answers.filter((w) => w === 0)).toHaveLength(2);
    expect(b.take("k0", 0)).toBeGreaterThan(0); // k0 still tracked, still spent
  });

  it("rounds Retry-After up to whole seconds, at least 1", () => {
    expect([retryAfterSeconds(1), retryAfterSeconds(1000), retryAfterSeconds(1001)]).toEqual([1, 1, 2]);
  });
});

describe("peer keys", () => {
  it("keys IPv4 by address and IPv6 by its /64", () => {
    expect(peerOf({ method: "m", peer: "192.0.2.7" })).toBe("192.0.2.7");
    expect(peerOf({ method: "m", peer: "::ffff:192.0.2.7" })).toBe("::ffff:192.0.2.7");
    expect(peerOf({ method: "m", peer: "2001:db8:0:1::5" })).toBe("2001:db8:0:1::/64");
    expect(peerOf({ method: "m", peer: "2001:db8:0:1:aaaa:bbbb:cccc:dddd" })).toBe("2001:db8:0:1::/64");
    expect(peerOf({ method: "m", peer: "::1" })).toBe("0:0:0:0::/64");
    expect(peerOf({ method: "m" })).toBe("unknown");
  });
});

describe("concurrency limit", () => {
  it("runs at most maxRunning per key, queues maxQueued in order, refuses beyond", async () => {
    const limit = new ConcurrencyLimit({ maxRunning: 2, maxQueued: 1, limit: "store_lookups", message: "busy", retryAfterMs: 1000 });
    const gates = [deferred<void>(), deferred<void>(), deferred<void>()];
    const order: number[] = [];
    const runs = gates.map((g, i) => limit.run("a", async () => (order.push(i), g.promise)));
    await flush();
    expect(order).toEqual([0, 1]);
    expect(limit.stats()).toEqual({ running: 2, queued: 1, keys: 1 });
    const refused = await limit.run("a", async () => undefined).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(RateLimitedError);
    expect(refused).toMatchObject({ code: "resource_exhausted", retryAfterMs: 1000, limit: "store_lookups" });
    // Another key has its own lane.
    await expect(limit.run("b", async () => "b")).resolves.toBe("b");
    gates[0]!.resolve();
    await flush();
    expect(order).toEqual([0, 1, 2]);
    gates[1]!.resolve();
    gates[2]!.resolve();
    await Promise.all(runs);
    expect(limit.stats()).toEqual({ running: 0, queued: 0, keys: 0 });
  });

  it("gives the slot back when the task fails", async () => {
    const limit = new ConcurrencyLimit({ maxRunning: 1, maxQueued: 0, limit: "store_writes", message: "busy", retryAfterMs: 1 });
    await expect(limit.run("", async () => Promise.reject(new Error("boom")))).rejects.toThrow("boom");
    await expect(limit.run("", async () => 1)).resolves.toBe(1);
  });
});

describe("RateLimits", () => {
  it("limits each caller per method class, with retry information and one kind of event per offender", () => {
    const events = new CapturedEvents();
    const counted: string[] = [];
    const limits = new RateLimits(OPTIONS, "development", events, { rateLimited: (l) => void counted.push(l) });
    for (let i = 0; i < 3; i++) limits.admit(caller("a"), "introspect", meta, 0);
    const error = (() => {
      try {
        limits.admit(caller("a"), "introspect", meta, 0);
      } catch (e) {
        return e;
      }
    })();
    expect(error).toBeInstanceOf(RateLimitedError);
    expect(error).toMatchObject({ code: "resource_exhausted", retryAfterMs: 100, limit: "caller_introspect" });
    // Other callers and other classes have their own buckets; a disabled class is never refused.
    limits.admit(caller("b"), "introspect", meta, 0);
    limits.admit(caller("a"), "list", meta, 0);
    for (let i = 0; i < 100; i++) limits.admit(caller("a"), "revoke", meta, 0);
    expect(() => limits.admit(caller("a"), "introspect", meta, 0)).toThrow(RateLimitedError);
    expect(counted).toEqual(["caller_introspect", "caller_introspect"]);
    expect(events.events).toHaveLength(2);
    expect(events.events[0]).toEqual({
      type: "rate_limit_exceeded",
      severity: "warning",
      message: "rate limit exceeded: introspect calls by one caller",
      serviceEnvironment: "development",
      callerTokenId: "a",
      callerSubject: "a@example.com",
      method: meta.method,
    });
    expect(events.events[1]).toEqual(events.events[0]); // identical: the sink folds them into one row
    // Time refills.
    limits.admit(caller("a"), "introspect", meta, 100);
  });

  it("charges failed authentications to the address and refuses it once spent", () => {
    const events = new CapturedEvents();
    const limits = new RateLimits(OPTIONS, "development", events);
    expect(limits.authenticationWait(meta, 0)).toBe(0);
    limits.authenticationFailed(meta, 0);
    limits.authenticationFailed(meta, 0);
    expect(limits.authenticationWait(meta, 0)).toBe(1000);
    expect(limits.authenticationWait({ ...meta, peer: "192.0.2.8" }, 0)).toBe(0);
    expect(() => limits.refuseAuthentication(meta, 1000)).toThrow(RateLimitedError);
    expect(events.events).toEqual([expect.objectContaining({ type: "rate_limit_exceeded", peer: "192.0.2.7", method: meta.method })]);
    expect(events.events[0]).not.toHaveProperty("userAgent");
    expect(limits.authenticationWait(meta, 1000)).toBe(0);
  });
});

describe("introspection misses under a flood of unknown tokens", () => {
  /** Fake deps whose store answers digest lookups only when the test says so, counting them. */
  function blockingStore() {
    const f = fakeDeps();
    const pending: { resolve: () => void }[] = [];
    let lookups = 0;
    const inner = f.store.findByDigest.bind(f.store);
    f.store.findByDigest = async (digest) => {
      lookups++;
      await new Promise<void>((resolve) => pending.push({ resolve }));
      return inner(digest);
    };
    const limits = new RateLimits(OPTIONS, "development", f.events);
    const deps: TokenDeps = { ...f.deps, limits };
    return { ...f, deps, limits, pending, lookups: () => lookups, release: () => pending.splice(0).forEach((p) => p.resolve()) };
  }

  it("coalesces identical concurrent misses into one store read", async () => {
    const s = blockingStore();
    const token = mintToken("development").token;
    const answers = Array.from({ length: 20 }, () => introspectToken(s.deps, token, meta, { lookupOwner: "gw" }));
    await flush();
    expect(s.lookups()).toBe(1);
    s.release();
    for (const answer of await Promise.all(answers)) expect(answer).toMatchObject({ active: false, reason: "unknown" });
    expect(s.cache.stats().coalesced).toBe(19);
  });

  it("does not join a read that started before a revocation", async () => {
    const s = blockingStore();
    const token = mintToken("development").token;
    const first = introspectToken(s.deps, token, meta);
    await flush();
    s.cache.evict("something"); // any eviction fences reads in flight
    const second = introspectToken(s.deps, token, meta);
    await flush();
    expect(s.lookups()).toBe(2);
    s.release();
    await flush();
    s.release();
    await Promise.all([first, second]);
  });

  it("caps one caller's reads in flight, queues a few, refuses the rest retryably, and leaves others alone", async () => {
    const s = blockingStore();
    const { token: known } = await bootstrapAdmin(s.deps, "ops@example.com", "cli");
    // Warm the cache with the known token before the flood.
    const warm = introspectToken(s.deps, known, meta, { lookupOwner: "gw" });
    await flush();
    s.release();
    expect(await warm).toMatchObject({ active: true });

    const flood = Array.from({ length: 4 }, () => introspectToken(s.deps, mintToken("development").token, meta, { lookupOwner: "gw" }).catch((e: unknown) => e));
    await flush();
    expect(s.lookups()).toBe(3); // 2 in flight (1 warm-up before)
    expect(s.limits.stats().lookups).toEqual({ running: 2, queued: 1 });
    // The fourth found the queue full.
    const refused = await flood[3];
    expect(refused).toBeInstanceOf(RateLimitedError);
    expect(refused).toMatchObject({ code: "resource_exhausted", limit: "store_lookups", retryAfterMs: 1000 });
    // The same caller's known token is still answered from the cache, and another caller's lookups run.
    expect(await introspectToken(s.deps, known, meta, { lookupOwner: "gw" })).toMatchObject({ active: true });
    const other = introspectToken(s.deps, mintToken("development").token, meta, { lookupOwner: "other" });
    await flush();
    expect(s.lookups()).toBe(4);
    // Draining lets the queued one through.
    s.release();
    await flush();
    s.release();
    const answers = await Promise.all([...flood.slice(0, 3), other]);
    for (const answer of answers) expect(answer).toMatchObject({ active: false, reason: "unknown" });
    expect(s.limits.stats().lookups).toEqual({ running: 0, queued: 0 });
  });
});

describe("the negative segment of the cache", () => {
  const cacheOf = () =>
    new TokenCache<string | null>({ maxEntries: 10, maxBytes: 1 << 20, stalenessMs: 10_000, negativeTtlMs: 10_000, negativeMaxEntries: 5, sizeOf: () => 100 });

  it("a flood of unknown tokens never evicts a known one", () => {
    const cache = cacheOf();
    for (let i = 0; i < 5; i++) cache.put(`known${i}`, `record${i}`, cache.fence(), 0);
    for (let i = 0; i < 10_000; i++) cache.put(`unknown${i}`, null, cache.fence(), 0);
    for (let i = 0; i < 5; i++) expect(cache.get(`known${i}`, 1)?.record).toBe(`record${i}`);
    expect(cache.stats()).toMatchObject({ size: 10, negatives: 5 });
    // The newest unknown tokens are the ones remembered.
    expect(cache.get("unknown9999", 1)?.record).toBeNull();
    expect(cache.get("unknown0", 1)).toBeUndefined();
  });

  it("a token that becomes known leaves the negative segment, and eviction reaches both", () => {
    const cache = cacheOf();
    cache.put("k", null, cache.fence(), 0);
    cache.put("k", "now known", cache.fence(), 0);
    expect(cache.stats()).toMatchObject({ size: 1, negatives: 0 });
    cache.put("n", null, cache.fence(), 0);
    cache.evict("n");
    expect(cache.get("n", 1)).toBeUndefined();
    cache.clear();
    expect(cache.stats()).toMatchObject({ size: 0, negatives: 0, bytes: 0 });
  });
});

describe("the write gate", () => {
  it("runs at most maxConcurrent slow operations; digest lookups and pings pass", async () => {
    const f = fakeDeps();
    let running = 0;
    let most = 0;
    const gate = deferred<void>();
    const inner = f.store.list.bind(f.store);
    f.store.list = async (q) => {
      most = Math.max(most, ++running);
      await gate.promise;
      running--;
      return inner(q);
    };
    const store = new GatedTokenStore(f.store, { maxConcurrent: 2, maxQueued: 10 });
    const lists = Array.from({ length: 8 }, () => store.list({ environment: "development", includeRevoked: true, includeExpired: true, now: new Date(), limit: 10 }));
    await flush();
    expect(store.stats()).toEqual({ running: 2, queued: 6 });
    // The hot path is not behind the gate.
    await expect(store.findByDigest(new Uint8Array(32))).resolves.toBeUndefined();
    await expect(store.ping()).resolves.toBeUndefined();
    gate.resolve();
    await Promise.all(lists);
    expect(most).toBe(2);
  });

  it("refuses with RESOURCE_EXHAUSTED beyond its queue", async () => {
    const f = fakeDeps();
    const gate = deferred<void>();
    f.store.count = async () => (await gate.promise, 0);
    const store = new GatedTokenStore(f.store, { maxConcurrent: 1, maxQueued: 1 });
    const running = [store.count(), store.count()];
    await expect(store.count()).rejects.toMatchObject({ code: "resource_exhausted", limit: "store_writes" });
    gate.resolve();
    await Promise.all(running);
  });
});

describe("revocation streams follow their caller", () => {
  async function take(stream: AsyncGenerator<WatchEvent>, n: number): Promise<WatchEvent[]> {
    const out: WatchEvent[] = [];
    for (let i = 0; i < n; i++) out.push((await stream.next()).value as WatchEvent);
    return out;
  }

  it("ends with unauthenticated right after delivering the caller's own revocation", async () => {
    const hub = new RevocationHub();
    const abort = new AbortController();
    const stream = watchRevocations(hub, 60_000, abort.signal, Date.now, { tokenId: "me", recheckMs: 60_000, recheck: async () => undefined });
    expect((await take(stream, 2)).map((e) => e.kind)).toEqual(["reset", "heartbeat"]);
    hub.revoked("k1", "someone-else");
    expect(await take(stream, 1)).toEqual([{ kind: "revocation", key: "k1", tokenId: "someone-else" }]);
    hub.revoked("k2", "me");
    expect(await take(stream, 1)).toEqual([{ kind: "revocation", key: "k2", tokenId: "me" }]);
    await expect(stream.next()).rejects.toMatchObject({ code: "unauthenticated" });
    abort.abort();
  });

  it("ends when a re-check refuses the credential (expiry), but not on an outage", async () => {
    const hub = new RevocationHub();
    const abort = new AbortController();
    let answer: TokenError | undefined = new TokenError("unavailable", "store down");
    let checks = 0;
    const stream = watchRevocations(hub, 60_000, abort.signal, Date.now, {
      tokenId: "me",
      recheckMs: 5,
      recheck: async () => {
        checks++;
        if (answer) throw answer;
      },
    });
    await take(stream, 2);
    await expect.poll(() => checks).toBeGreaterThan(2); // outages are ignored: still open
    hub.revoked("k", "other");
    expect(await take(stream, 1)).toEqual([{ kind: "revocation", key: "k", tokenId: "other" }]);
    answer = new TokenError("unauthenticated", "caller credential refused: The token has expired.");
    await expect(stream.next()).rejects.toMatchObject({ code: "unauthenticated", message: "caller credential refused: The token has expired." });
    abort.abort();
  });

  it("caps streams per caller and gives slots back", () => {
    const quota = new StreamQuota(2);
    const a = quota.acquire("c");
    quota.acquire("c");
    expect(() => quota.acquire("c")).toThrow(expect.objectContaining({ code: "resource_exhausted" }));
    quota.acquire("d");
    a();
    a(); // twice is once
    expect(quota.size).toBe(2);
    quota.acquire("c");
    expect(() => quota.acquire("c")).toThrow(TokenError);
  });
});

describe("configuration of the limits", () => {
  it("reads `<per second>,<burst>` or off, and refuses anything else naming the key", async () => {
    const { loadConfig } = await import("../../src/config.js");
    const config = loadConfig({ RATE_LIMIT_ISSUE: "2.5,10", RATE_LIMIT_LIST: "off" });
    expect(config.rateLimitIssue).toEqual({ ratePerSecond: 2.5, burst: 10 });
    expect(config.rateLimitList).toEqual({ ratePerSecond: 0, burst: 0 });
    expect(config.rateLimitFailedAuth).toEqual({ ratePerSecond: 2, burst: 10 });
    for (const bad of ["10", "0,5", "5,0", "a,b", "-1,5"]) expect(() => loadConfig({ RATE_LIMIT_REVOKE: bad })).toThrow(/RATE_LIMIT_REVOKE=/);
  });

  it("refuses a write concurrency that could hold the whole pool", async () => {
    const { loadConfig } = await import("../../src/config.js");
    expect(() => loadConfig({ DATABASE_URL: "postgres://x@h/db", DATABASE_POOL_MAX: "4", DATABASE_WRITE_CONCURRENCY: "4" })).toThrow("DATABASE_WRITE_CONCURRENCY: must be below DATABASE_POOL_MAX");
    expect(loadConfig({ DATABASE_URL: "postgres://x@h/db", DATABASE_POOL_MAX: "4", DATABASE_WRITE_CONCURRENCY: "3" }).databaseWriteConcurrency).toBe(3);
  });

  it("takes a heartbeat floor only within the documented 100ms-60s", async () => {
    const { loadConfig } = await import("../../src/config.js");
    expect(loadConfig({}).watchMinHeartbeatMs).toBe(500);
    expect(() => loadConfig({ WATCH_MIN_HEARTBEAT: "50ms" })).toThrow(/WATCH_MIN_HEARTBEAT/);
  });
});
