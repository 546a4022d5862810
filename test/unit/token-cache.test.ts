import { describe, expect, it } from "vitest";
import { authenticate } from "../../src/domain/access.js";
import { introspectToken } from "../../src/domain/introspect.js";
import { bootstrapAdmin, issueToken } from "../../src/domain/issue.js";
import type { TokenRecord } from "../../src/domain/model.js";
import { revokeToken } from "../../src/domain/revoke.js";
import { TokenCache, type TokenCacheOptions } from "../../src/domain/token-cache.js";
import { fakeDeps } from "../support/fakes.js";

const record = (id: string): TokenRecord => ({
  id, digest: new Uint8Array(32), displayHint: "cf-…abcd", name: "n", subject: "s", fullName: "", teams: [], scopes: [], namespaces: [], isAdmin: false,
  metadata: {}, environment: "development", createdAt: new Date(0), createdBy: "x", issuedByTokenId: null, expiresAt: null, lastUsedAt: null, revokedAt: null, revokedBy: null, revokeReason: null,
});

const cacheOf = (o: Partial<TokenCacheOptions<TokenRecord | null>> = {}) => new TokenCache<TokenRecord | null>({ maxEntries: 3, maxBytes: 1 << 20, stalenessMs: 2000, negativeTtlMs: 500, sizeOf: (key, r) => 400 + key.length + (r?.id.length ?? 0), ...o });

describe("the introspection cache", () => {
  it("serves an entry within the staleness bound, and beyond it only while the channel keeps confirming", () => {
    const cache = cacheOf();
    cache.put("a", record("a"), cache.fence(), 1000);
    expect(cache.get("a", 3000)?.record?.id).toBe("a");
    expect(cache.get("a", 3001)).toBeUndefined();
    cache.confirmUntil(9000); // a heartbeat proves nothing was revoked until 9000
    expect(cache.get("a", 11_000)?.record?.id).toBe("a");
    expect(cache.get("a", 11_001)).toBeUndefined();
  });

  it("remembers unknown tokens only briefly, whatever the channel says", () => {
    const cache = cacheOf();
    cache.put("x", null, cache.fence(), 1000);
    cache.confirmUntil(10_000);
    expect(cache.get("x", 1500)?.record).toBeNull();
    expect(cache.get("x", 1501)).toBeUndefined();
  });

  it("does not cache a store answer read while an eviction happened (the generation fence)", () => {
    const cache = cacheOf();
    const fence = cache.fence();
    cache.evict("other-token"); // any revocation notice during the read
    cache.put("a", record("a"), fence, 1000);
    expect(cache.get("a", 1000)).toBeUndefined();
    cache.put("a", record("a"), cache.fence(), 1000);
    expect(cache.get("a", 1000)).toBeDefined();
    cache.clear();
    expect(cache.get("a", 1000)).toBeUndefined();
  });

  it("holds at most maxEntries, giving recently used entries a second chance", () => {
    const cache = cacheOf();
    for (const k of ["a", "b", "c"]) cache.put(k, record(k), cache.fence(), 0);
    cache.get("a", 0); // a is used: survives the next eviction
    cache.put("d", record("d"), cache.fence(), 0);
    expect(cache.stats().size).toBe(3);
    expect(cache.get("b", 0)).toBeUndefined();
    expect(cache.get("a", 0)).toBeDefined();
  });

  it("holds at most maxBytes", () => {
    const cache = cacheOf({ maxEntries: 1000, maxBytes: 5_000 });
    for (let i = 0; i < 100; i++) cache.put(`k${i}`, record(`id-${i}`), cache.fence(), 0);
    expect(cache.stats().bytes).toBeLessThanOrEqual(5_000);
    expect(cache.stats().size).toBeGreaterThan(0);
  });
});

describe("introspection through the cache", () => {
  const meta = { method: "/tokens.v1.TokenService/IntrospectToken" };

  it("answers repeat introspections without the store, and revocation evicts at once", async () => {
    const f = fakeDeps();
    const admin = await authenticate(f.deps, `Bearer ${(await bootstrapAdmin(f.deps, "a@example.com", "cli")).token}`, meta);
    const issued = await issueToken(f.deps, admin, { name: "t", scopes: [], teams: [], namespaces: [], metadata: {}, subject: "", fullName: "", isAdmin: false }, meta);
    expect((await introspectToken(f.deps, issued.token, meta)).active).toBe(true);
    f.store.down = true; // a cached answer needs no store
    expect((await introspectToken(f.deps, issued.token, meta)).active).toBe(true);
    f.store.down = false;
    await revokeToken(f.deps, admin, { token: issued.token, reason: "" }, meta);
    expect(await introspectToken(f.deps, issued.token, meta)).toMatchObject({ active: false, reason: "revoked" });
  });

  it("never puts back a token revoked while its lookup was in flight (the race)", async () => {
    const f = fakeDeps();
    const admin = await authenticate(f.deps, `Bearer ${(await bootstrapAdmin(f.deps, "a@example.com", "cli")).token}`, meta);
    const issued = await issueToken(f.deps, admin, { name: "t", scopes: [], teams: [], namespaces: [], metadata: {}, subject: "", fullName: "", isAdmin: false }, meta);

    // The store read of a lookup is held until the revocation has committed and evicted.
    const find = f.store.findByDigest.bind(f.store);
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let slowRead = true;
    f.store.findByDigest = async (digest) => {
      const before = await find(digest); // read the row as it was before the revocation...
      if (slowRead) {
        slowRead = false;
        await gate; // ...and answer only after the revocation
      }
      return before;
    };
    const inFlight = introspectToken(f.deps, issued.token, meta);
    await new Promise((r) => setImmediate(r));
    await revokeToken(f.deps, admin, { token: issued.token, reason: "race" }, meta);
    release();
    expect((await inFlight).active).toBe(true); // it started before the revocation: allowed to see the old state
    expect(await introspectToken(f.deps, issued.token, meta)).toMatchObject({ active: false, reason: "revoked" });
  });
});

describe("TokenCache negative segment", () => {
  it("drops expired negative answers as new ones come, not only at its cap (unknown tokens are rarely asked twice)", () => {
    const cache = cacheOf({ negativeMaxEntries: 20_000, negativeTtlMs: 2_000 });
    // A steady stream of distinct unknown tokens, 50 a second for 100 s.
    for (let i = 0; i < 5_000; i++) cache.put(`unknown-${i}`, null, cache.fence(), i * 20);
    // Only those still within their 2 s remain: 100 of them (plus the edge), far below the cap.
    expect(cache.stats().negatives).toBeLessThanOrEqual(101);
    expect(cache.peek("unknown-4999", 99_980)).toBeNull();
    expect(cache.peek("unknown-4899", 99_980)).toBeNull();
  });
});
