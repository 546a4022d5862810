/**
 * The cache's memory bound must see what a token holds alone. Tokens share
 * their lists and metadata through a bounded table of profiles; past its
 * bound (a flood of distinct metadata, say) each token's profile is its own
 * memory, and the size estimate behind CACHE_MAX_MEGABYTES must count it.
 * Own file: it fills the module's table of shared profiles.
 */
import { describe, expect, it } from "vitest";
import { CachedToken, createIntrospectionCache, estimateBytes } from "../../src/domain/introspect.js";
import type { TokenRecord } from "../../src/domain/model.js";

const record = (over: Partial<TokenRecord>): TokenRecord => ({
  id: "5f0c6a86-2d0f-4c55-9d6b-0f4f3f1f2a11",
  digest: new Uint8Array(32),
  displayHint: "cf-…abcd",
  name: "ci",
  subject: "ci@example.com",
  fullName: "CI Pipeline",
  teams: ["payments"],
  scopes: ["orders.read"],
  namespaces: [],
  isAdmin: false,
  metadata: {},
  environment: "production",
  createdAt: new Date(1_764_590_400_000),
  createdBy: "x",
  issuedByTokenId: null,
  expiresAt: null,
  lastUsedAt: null,
  revokedAt: null,
  revokedBy: null,
  revokeReason: null,
  ...over,
});

const KEY = "A".repeat(43) + "=";
const bigMetadata = (n: number) => Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`key-${n}-${i}`, "v".repeat(200)]));

describe("the size estimate of a token's own profile", () => {
  it("counts nothing for a shared profile, and the lists and metadata of a profile held alone", () => {
    const shared = new CachedToken(record({ metadata: bigMetadata(-1) }));
    const alike = new CachedToken(record({ metadata: bigMetadata(-1), id: "6f0c6a86-2d0f-4c55-9d6b-0f4f3f1f2a11" }));
    expect(estimateBytes(KEY, alike)).toBe(estimateBytes(KEY, shared));
    const plain = estimateBytes(KEY, new CachedToken(record({})));

    // Fill the table of shared profiles with distinct ones.
    for (let i = 0; i < 20_000; i++) new CachedToken(record({ teams: [`team-${i}`] }));
    const alone = new CachedToken(record({ metadata: bigMetadata(1) }));
    // 16 entries of ~210 characters: well over 3 KiB held by this token alone.
    expect(estimateBytes(KEY, alone) - plain).toBeGreaterThan(3 * 1024);
    // Deterministic: the cache asks again when the entry leaves.
    expect(estimateBytes(KEY, alone)).toBe(estimateBytes(KEY, alone));
  });

  it("keeps the cache within its byte bound when every token holds a large profile alone", () => {
    for (let i = 0; i < 20_000; i++) new CachedToken(record({ teams: [`fill-${i}`] }));
    const maxBytes = 1 << 20;
    const cache = createIntrospectionCache({ maxEntries: 100_000, maxBytes, stalenessMs: 60_000, negativeTtlMs: 1_000 });
    for (let i = 0; i < 2_000; i++) {
      cache.put(`${String(i).padStart(43, "k")}=`, new CachedToken(record({ metadata: bigMetadata(1_000 + i) })), cache.fence(), Date.now());
    }
    const stats = cache.stats();
    expect(stats.bytes).toBeLessThanOrEqual(maxBytes);
    // Each such token is estimated above 3 KiB, so a 1 MiB bound holds well under 400 of them.
    expect(stats.size).toBeLessThan(400);
  });
});
