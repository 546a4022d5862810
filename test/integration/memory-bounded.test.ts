/**
 * Per-token state stays bounded under churn: issuing, introspecting and
 * revoking many tokens (while a fixed hot set is hit and unknown tokens are
 * asked about) must not leave anything behind per token once the cache has
 * let it go. Found by the soak (`npm run soak`): the built answers kept for
 * hot tokens were held by a strong Map keyed by the cached claims, so every
 * token that left the cache kept its ~2 KB answer (plus its stamped copy and
 * encoded bytes) until 10,000 newer ones pushed it out.
 */
import { randomBytes } from "node:crypto";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TokenService, type IntrospectTokenResponse, type IssueTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { hotAnswerCount } from "../../src/rpc/mapping.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

/** A full GC, so that answers only weakly held are gone before counting. */
async function fullGc(): Promise<void> {
  setFlagsFromString("--expose-gc");
  const gc = runInNewContext("gc") as () => void;
  // WeakRefs read in this job stay alive until it ends: let it end first.
  for (let i = 0; i < 3; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
    gc();
  }
}

const CACHE_MAX_ENTRIES = 40;

describe("memory stays bounded under token churn", () => {
  let db: TestDatabase;
  let sut: ServiceUnderTest;
  let client: ReturnType<typeof grpcClient>;
  let admin: string;
  const auth = () => ({ authorization: `Bearer ${admin}` });

  beforeAll(async () => {
    db = await createTestDatabase();
    sut = await startTestService({ DATABASE_URL: db.url, CACHE_MAX_ENTRIES: String(CACHE_MAX_ENTRIES), REVOCATION_HEARTBEAT: "100ms", RATE_LIMIT_ISSUE: "off", RATE_LIMIT_REVOKE: "off" });
    admin = sut.bootstrapToken!;
    client = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
  });

  afterAll(async () => {
    client?.close();
    await sut?.service.stop();
    await db?.drop();
  });

  const issue = () => client.unary<IssueTokenResponse>("issueToken", { name: "churn", subject: "churn@example.com" }, auth());
  const revoke = (token: string) => client.unary("revokeToken", { target: { case: "token", value: token } }, auth());
  const introspect = (token: string) => client.unary<IntrospectTokenResponse>("introspectToken", { token }, auth());

  it("keeps built answers only for tokens the cache still holds, however many tokens came and went", async () => {
    const hot: string[] = [];
    for (let i = 0; i < 10; i++) hot.push((await issue()).token);
    const cycles = 300;
    for (let i = 0; i < cycles; i++) {
      const { token } = await issue();
      // Twice: the second is a cache hit, which earns a kept answer.
      expect((await introspect(token)).active).toBe(true);
      expect((await introspect(token)).active).toBe(true);
      await revoke(token);
      // Revocation positions advance while the hot set keeps being hit.
      for (const h of hot) await introspect(h);
      expect((await introspect(token)).active).toBe(false);
      expect((await introspect(`cf-${randomBytes(24).toString("base64url")}`)).active).toBe(false);
    }
    await fullGc();
    // At most one answer per cached token (and a few shared inactive ones), not one per token ever seen.
    expect(hotAnswerCount()).toBeLessThanOrEqual(CACHE_MAX_ENTRIES + 10);
  }, 300_000);
});
