/**
 * The cache's compact layout (issue 11, item 4) must say exactly what the
 * record said: packed times to the millisecond, flags, environment, shared
 * lists, the rare fields of bound and rotated tokens. And the size estimate
 * must track what the entries hold, so CACHE_MAX_MEGABYTES means something.
 */
import { describe, expect, it } from "vitest";
import { CachedToken, createIntrospectionCache, estimateBytes } from "../../src/domain/introspect.js";
import type { TokenRecord } from "../../src/domain/model.js";
import { TokenCache } from "../../src/domain/token-cache.js";

const record = (over: Partial<TokenRecord> = {}): TokenRecord => ({
  id: "5f0c6a86-2d0f-4c55-9d6b-0f4f3f1f2a11",
  digest: new Uint8Array(32),
  displayHint: "cf-…abcd",
  name: "ci",
  subject: "ci@example.com",
  fullName: "CI Pipeline",
  teams: ["payments", "checkout"],
  scopes: ["orders.read", "orders.write"],
  namespaces: ["eu-west-prod"],
  isAdmin: false,
  metadata: { purpose: "benchmark" },
  environment: "production",
  createdAt: new Date(1_764_590_400_123),
  createdBy: "x",
  issuedByTokenId: null,
  expiresAt: new Date(1_767_182_400_999),
  lastUsedAt: null,
  revokedAt: null,
  revokedBy: null,
  revokeReason: null,
  ...over,
});

describe("a cached token", () => {
  it("keeps every claim of its record, times to the millisecond", () => {
    const token = new CachedToken(record({ isAdmin: true }));
    expect(token).toMatchObject({ id: record().id, subject: "ci@example.com", fullName: "CI Pipeline", name: "ci", isAdmin: true, revoked: false, environment: "production", kind: "opaque" });
    expect(token.issuedAtMs).toBe(1_764_590_400_123);
    expect(token.expiresAtMs).toBe(1_767_182_400_999);
    expect(token.issuedAt).toEqual(new Date(1_764_590_400_123));
    expect(token.expiresAt).toEqual(new Date(1_767_182_400_999));
    expect([token.teams, token.scopes, token.namespaces, token.metadata]).toEqual([["payments", "checkout"], ["orders.read", "orders.write"], ["eu-west-prod"], { purpose: "benchmark" }]);
    expect([token.allowedNetworks, token.rateLimit, token.binding, token.predecessorId, token.successorId]).toEqual([[], undefined, undefined, undefined, undefined]);
  });

  it("says never-expiring, revoked, and times before 2020 or past 2088 exactly", () => {
    const never = new CachedToken(record({ expiresAt: null, revokedAt: new Date(), environment: "staging" }));
    expect([never.expiresAtMs, never.expiresAt, never.revoked, never.environment]).toEqual([Number.POSITIVE_INFINITY, null, true, "staging"]);
    const far = new CachedToken(record({ createdAt: new Date(1_000_000_000_001), expiresAt: new Date(4_000_000_000_777) }));
    expect([far.issuedAtMs, far.expiresAtMs]).toEqual([1_000_000_000_001, 4_000_000_000_777]);
  });

  it("shares one frozen profile among tokens with the same lists and metadata, and keeps different ones apart", () => {
    const a = new CachedToken(record({ id: "a" }));
    const b = new CachedToken(record({ id: "b", teams: ["payments", "checkout"] }));
    const c = new CachedToken(record({ id: "c", metadata: { purpose: "other" } }));
    expect(b.teams).toBe(a.teams);
    expect(b.metadata).toBe(a.metadata);
    expect(Object.isFrozen(a.teams) && Object.isFrozen(a.metadata)).toBe(true);
    expect(c.metadata).toEqual({ purpose: "other" });
    expect(c.teams).toEqual(a.teams);
  });

  it("keeps networks, rate limit, binding and rotation links of the tokens that have them", () => {
    const token = new CachedToken(
      record({
        allowedNetworks: ["10.0.0.0/8"],
        rateLimit: { requests: 5, windowMs: 1000 },
        rotation: { predecessorId: "p", successorId: null, scheduledRevokeAt: null, revokeOnSuccessorUse: false, successorUsedAt: null },
      }),
    );
    expect(token.allowedNetworks).toEqual(["10.0.0.0/8"]);
    expect(token.rateLimit).toEqual({ requests: 5, windowMs: 1000 });
    expect(token.binding).toBeDefined();
    expect([token.predecessorId, token.successorId]).toEqual(["p", undefined]);
  });
});

describe("the cache's entries", () => {
  it("serve until exactly fetchedAt + staleness, to the millisecond", () => {
    const cache = new TokenCache<string | null>({ maxEntries: 10, maxBytes: 1 << 20, stalenessMs: 2_000, negativeTtlMs: 500, sizeOf: () => 100 });
    const at = 1_764_590_400_123;
    cache.put("k", "v", cache.fence(), at);
    cache.put("n", null, cache.fence(), at);
    expect(cache.get("k", at + 2_000)?.fetchedAt).toBe(at);
    expect(cache.get("k", at + 2_001)).toBeUndefined();
    expect(cache.get("n", at + 500)?.negative).toBe(true);
    expect(cache.get("n", at + 501)).toBeUndefined();
  });

  it("count their estimated bytes in and out, so the total returns to zero", () => {
    const cache = createIntrospectionCache({ maxEntries: 100, maxBytes: 1 << 30, stalenessMs: 2_000, negativeTtlMs: 1_000 });
    for (let i = 0; i < 50; i++) cache.put(`key${i}`, new CachedToken(record({ id: `id-${i}`, subject: `user-${i}@example.com` })), cache.fence(), 0);
    cache.put("unknown", null, cache.fence(), 0);
    expect(cache.stats().bytes).toBeGreaterThan(0);
    for (let i = 0; i < 50; i++) cache.evict(`key${i}`);
    cache.evict("unknown");
    expect(cache.stats()).toMatchObject({ size: 0, bytes: 0 });
  });

  it("are held to CACHE_MAX_MEGABYTES by their estimate", () => {
    const token = new CachedToken(record());
    const each = estimateBytes("k".repeat(44), token);
    const cache = createIntrospectionCache({ maxEntries: 1_000_000, maxBytes: each * 100, stalenessMs: 2_000, negativeTtlMs: 1_000 });
    for (let i = 0; i < 1_000; i++) cache.put(String(i).padStart(44, "k"), new CachedToken(record({ id: `id-${i}`.padEnd(36, "0") })), cache.fence(), 0);
    expect(cache.stats().size).toBe(100);
    expect(cache.stats().bytes).toBeLessThanOrEqual(each * 100);
  });

  it("estimates more for longer strings and for strings outside Latin-1", () => {
    const short = estimateBytes("k".repeat(44), new CachedToken(record()));
    const long = estimateBytes("k".repeat(44), new CachedToken(record({ fullName: "x".repeat(200) })));
    const wide = estimateBytes("k".repeat(44), new CachedToken(record({ fullName: "€".repeat(200) })));
    expect(long).toBeGreaterThan(short + 200);
    expect(wide).toBeGreaterThan(long + 200);
  });
});
