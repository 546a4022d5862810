import type { ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TokenService, type IntrospectTokenResponse, type IssueTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { mintToken } from "../../src/domain/token-format.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

/**
 * Issuing must not starve the hot path of store connections: 60 concurrent
 * IssueToken calls for one subject (each holds a pooled connection through
 * its subject's advisory lock) while cache misses keep arriving. The pool's
 * connect timeout is short, so a lookup stuck behind the writes would fail
 * with UNAVAILABLE; the write gate keeps half the pool for lookups.
 */
describe("the write gate on real PostgreSQL", () => {
  let db: TestDatabase;
  let s: ServiceUnderTest;
  let client: ReturnType<typeof grpcClient>;
  let admin: string;
  const auth = () => ({ authorization: `Bearer ${admin}` });

  beforeAll(async () => {
    db = await createTestDatabase();
    s = await startTestService({ DATABASE_URL: db.url, DATABASE_POOL_MAX: "10", DATABASE_CONNECT_TIMEOUT: "150ms", LOG_LEVEL: "warn", RATE_LIMIT_FAILED_AUTH: "2,10" });
    admin = s.bootstrapToken!;
    client = grpcClient(TokenService, `127.0.0.1:${s.service.grpcPort}`);
    await client.unary("listTokens", {}, auth()); // the admin's credential is cached from here on
  });

  afterAll(async () => {
    client?.close();
    await s?.service.stop();
    await db?.drop();
  });

  it("60 concurrent IssueToken calls produce no UNAVAILABLE while introspection misses keep being answered", async () => {
    let issuing = true;
    const issues = Promise.allSettled(
      Array.from({ length: 60 }, (_, i) => client.unary<IssueTokenResponse>("issueToken", { name: `burst-${i}`, subject: "burst@example.com" }, auth())),
    ).finally(() => (issuing = false));

    // Cache misses (unknown tokens, each a store lookup) for as long as the issues run.
    const answered: IntrospectTokenResponse[] = [];
    const lookupErrors: ServiceError[] = [];
    const miss = async () => {
      while (issuing) {
        await client.unary<IntrospectTokenResponse>("introspectToken", { token: mintToken("development").token }, auth()).then(
          (r) => void answered.push(r),
          (e: ServiceError) => void lookupErrors.push(e),
        );
      }
    };
    await Promise.all([issues, miss(), miss(), miss(), miss()]);

    const outcomes = await issues;
    const failed = outcomes.filter((o) => o.status === "rejected").map((o) => `${(o.reason as ServiceError).code} ${(o.reason as ServiceError).details}`);
    expect(failed).toEqual([]);
    expect(lookupErrors.map((e) => `${e.code} ${e.details}`)).toEqual([]);
    expect(answered.length).toBeGreaterThan(0);
    for (const answer of answered) expect(answer.active).toBe(false);
  });

  it("identical concurrent misses share one store read", async () => {
    const cache = s.service.deps.cache;
    const before = cache.stats();
    const token = mintToken("development").token;
    const answers = await Promise.all(Array.from({ length: 50 }, () => client.unary<IntrospectTokenResponse>("introspectToken", { token }, auth())));
    for (const answer of answers) expect(answer.active).toBe(false);
    const after = cache.stats();
    // Every miss either read the store or joined a read in flight; later ones hit the negative entry.
    expect(after.misses - before.misses - (after.coalesced - before.coalesced)).toBe(1);
  });

  it("under a flood: unknown tokens relayed by a gateway are all answered; guessed credentials are cut off cheaply", async () => {
    const cache = s.service.deps.cache;
    const before = cache.stats();
    // 5,000 distinct unknown tokens through one gateway credential, 64 at a time.
    let answered = 0;
    const refused: string[] = [];
    let next = 0;
    const relay = async () => {
      while (next++ < 5000) {
        await client.unary<IntrospectTokenResponse>("introspectToken", { token: mintToken("development").token }, auth()).then(
          (r) => void (r.active ? refused.push("active?") : answered++),
          (e: ServiceError) => void refused.push(`${e.code}`),
        );
      }
    };
    await Promise.all(Array.from({ length: 64 }, relay));
    const relayed = cache.stats();
    expect(refused).toEqual([]);
    expect(answered).toBe(5000);
    // A known token is never pushed out by them.
    expect((await client.unary<IntrospectTokenResponse>("introspectToken", { token: admin }, auth())).active).toBe(true);

    // 2,000 guessed caller credentials from one address.
    const codes = new Map<number, number>();
    for (let i = 0; i < 2000; i++) {
      await client.unary("listTokens", {}, { authorization: `Bearer ${mintToken("development").token}` }).catch((e: ServiceError) => codes.set(e.code, (codes.get(e.code) ?? 0) + 1));
    }
    const guessed = cache.stats();
    const unauthenticated = codes.get(16) ?? 0;
    const exhausted = codes.get(8) ?? 0;
    expect(unauthenticated + exhausted).toBe(2000);
    expect(unauthenticated).toBeLessThan(100); // burst 10, then 2 a second while the flood lasts
    // Store reads for the guesses: one per admitted attempt, none for a refused one.
    const guessReads = guessed.misses - relayed.misses;
    expect(guessReads).toBe(unauthenticated);
    console.log(
      `flood figures: relayed unknown tokens ${answered}/5000 answered, store reads ${relayed.misses - before.misses - (relayed.coalesced - before.coalesced)}; ` +
        `guessed credentials 2000: ${unauthenticated} UNAUTHENTICATED (each one store read), ${exhausted} RESOURCE_EXHAUSTED (no store read)`,
    );
  });
});
