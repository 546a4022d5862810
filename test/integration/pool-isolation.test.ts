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
    s = await startTestService({ DATABASE_URL: db.url, DATABASE_POOL_MAX: "10", DATABASE_CONNECT_TIMEOUT: "150ms", LOG_LEVEL: "warn" });
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
});
