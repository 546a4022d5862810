/**
 * Cache misses read from a real streaming standby (DATABASE_READ_URL), made
 * by the test: a private primary and `pg_basebackup -R` standby
 * (test/support/pg-cluster.ts). Replay paused simulates lag; stopping the
 * standby simulates its outage.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Client } from "pg";
import { TokenService, type IntrospectTokenResponse, type IssueTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { loadConfig } from "../../src/config.js";
import { startPgCluster, type PgCluster } from "../support/pg-cluster.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

async function sqlOn<T>(url: string, text: string, values: unknown[] = []): Promise<T[]> {
  const client = new Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query(text, values)).rows as T[];
  } finally {
    await client.end();
  }
}

describe("read replicas for cache misses", () => {
  let cluster: PgCluster;
  let admin: string | undefined;

  beforeAll(async () => {
    cluster = await startPgCluster();
  }, 120_000);

  afterAll(async () => {
    await cluster?.stop();
  });

  it("refuses DATABASE_READ_URL without DATABASE_URL (PGlite has no replicas)", () => {
    expect(() => loadConfig({ DATABASE_READ_URL: "postgres://standby.example/tokens" })).toThrow(/DATABASE_READ_URL: needs DATABASE_URL/);
    expect(() => loadConfig({ DATABASE_URL: "postgres://p/t", DATABASE_READ_URL: "mysql://secret@x/y" })).toThrow(/DATABASE_READ_URL=.*must start with postgres/);
  });

  // The log reads of catch-up (notify) and of every poll (poll) stay on the primary either way.
  describe.each(["notify", "poll"] as const)("with REVOCATION_TRANSPORT=%s", (transport) => {
    let sut: ServiceUnderTest;
    let client: ReturnType<typeof grpcClient>;
    const auth = () => ({ authorization: `Bearer ${admin!}` });

    beforeAll(async () => {
      sut = await startTestService({ DATABASE_URL: cluster.primaryUrl, DATABASE_READ_URL: cluster.standbyUrl, REVOCATION_HEARTBEAT: "100ms", REVOCATION_TRANSPORT: transport });
      // Only the first start on the empty store prints a bootstrap token.
      admin ??= sut.bootstrapToken;
      client = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
      // The admin token is a miss too; the replica must have it (and the hub be confirmed) before the cases count reads.
      await cluster.waitForReplay();
      for (let i = 0; i < 500 && sut.service.deps.revocations.confirmedAt === 0; i++) await new Promise((r) => setTimeout(r, 20));
    }, 60_000);

    afterAll(async () => {
      client?.close();
      await sut?.service.stop();
    });

    const issue = (name: string) => client.unary<IssueTokenResponse>("issueToken", { name, subject: "replica@example.com" }, auth());
    const revoke = (token: string) => client.unary("revokeToken", { target: { case: "token", value: token } }, auth());
    const introspect = (token: string) => client.unary<IntrospectTokenResponse>("introspectToken", { token }, auth());

    /** `token_service_replica_reads_total` by outcome, from /metrics. */
    async function replicaReads(): Promise<Record<string, number>> {
      const text = await (await fetch(`http://127.0.0.1:${sut.service.httpPort}/metrics`)).text();
      const out: Record<string, number> = {};
      for (const m of text.matchAll(/^token_service_replica_reads_total\{outcome="(\w+)"\} (\d+)$/gm)) out[m[1]!] = Number(m[2]);
      return out;
    }

    /** A token issued on the primary and replayed on the standby. */
    async function replicated(name: string): Promise<IssueTokenResponse> {
      const issued = await issue(name);
      await cluster.waitForReplay();
      return issued;
    }

    /** Whether a fresh replicated token's miss is served by the standby now (not skipped while it is not known to be caught up). */
    async function servedNow(): Promise<boolean> {
      const { token } = await replicated("probe");
      const before = (await replicaReads())["served"] ?? 0;
      await introspect(token);
      return ((await replicaReads())["served"] ?? 0) > before;
    }

    it("serves misses from the standby: an answer shows the standby's row, not the primary's", async () => {
      const { token, info } = await replicated("as-replayed");
      await cluster.pauseReplay();
      try {
        // A change the standby has not replayed (not a revocation: nothing to prove against).
        await sqlOn(cluster.primaryUrl, "UPDATE tokens SET name = 'primary-only' WHERE id = $1", [info!.id]);
        const before = await replicaReads();
        const answer = await introspect(token);
        expect(answer.active).toBe(true);
        expect(answer.tokenName).toBe("as-replayed");
        expect((await replicaReads())["served"]).toBe((before["served"] ?? 0) + 1);
      } finally {
        await cluster.resumeReplay();
      }
    });

    it("never answers active for a token whose revocation it applied while the standby had not replayed it", async () => {
      const { token, info } = await replicated("revoked-while-lagging");
      expect((await introspect(token)).active).toBe(true); // cached, as a gateway's token would be
      await cluster.pauseReplay();
      try {
        const position = sut.service.deps.revocations.position;
        await revoke(token);
        // The notice is applied: the cache entry evicted, the hub's position moved on.
        await expect.poll(() => sut.service.deps.revocations.position, { timeout: 5_000, interval: 5 }).toBeGreaterThan(position);
        // The hazard is real: the standby still shows the token unrevoked.
        const [row] = await sqlOn<{ unrevoked: boolean }>(cluster.standbyUrl, "SELECT revoked_at IS NULL AS unrevoked FROM tokens WHERE id = $1", [info!.id]);
        expect(row?.unrevoked).toBe(true);
        const before = await replicaReads();
        for (let i = 0; i < 5; i++) {
          const answer = await introspect(token);
          expect(answer.active).toBe(false);
          expect(answer.reason).toBe(4 /* REVOKED */);
        }
        // The standby was asked and its stale answer refused (then read from the primary).
        expect((await replicaReads())["lagging"]).toBeGreaterThan(before["lagging"] ?? 0);
      } finally {
        await cluster.resumeReplay();
      }
      await cluster.waitForReplay();
      expect((await introspect(token)).active).toBe(false);
    });

    it("under concurrent lookups while the standby lags, no answer stamped with the revocation's position is active", async () => {
      const tokens = await Promise.all([1, 2, 3].map((i) => issue(`burst-${i}`)));
      await cluster.waitForReplay();
      await cluster.pauseReplay();
      try {
        for (const { token } of tokens) {
          expect((await introspect(token)).active).toBe(true);
          const revokedAt = BigInt(sut.service.deps.revocations.position + 1);
          let stop = false;
          const answers: IntrospectTokenResponse[] = [];
          const burst = Promise.all(
            Array.from({ length: 8 }, async () => {
              while (!stop) answers.push(await introspect(token));
            }),
          );
          await revoke(token);
          // Answers stamped at or after the revocation's position: the replica had applied it before looking up.
          await expect.poll(() => answers.filter((a) => a.revocationPosition >= revokedAt).length, { timeout: 10_000, interval: 5 }).toBeGreaterThanOrEqual(20);
          stop = true;
          await burst;
          expect(answers.filter((a) => a.revocationPosition >= revokedAt && a.active)).toEqual([]);
        }
      } finally {
        await cluster.resumeReplay();
      }
    });

    it("a miss for a token not yet replayed is read from the primary (active, not unknown)", async () => {
      await cluster.pauseReplay();
      try {
        const { token } = await issue("fresh");
        const before = await replicaReads();
        expect((await introspect(token)).active).toBe(true);
        const after = await replicaReads();
        expect((after["not_found"] ?? 0) + (after["skipped"] ?? 0)).toBeGreaterThan((before["not_found"] ?? 0) + (before["skipped"] ?? 0));
      } finally {
        await cluster.resumeReplay();
      }
    });

    it("falls back to the primary while the standby is down, with a log line and a metric, and returns to it", async () => {
      // After an earlier case's revocations, misses try the standby again once it is seen to have replayed them.
      await expect.poll(servedNow, { timeout: 10_000, interval: 200 }).toBe(true);
      const tokens = await Promise.all(["down-1", "down-2", "down-3"].map((n) => issue(n)));
      await cluster.waitForReplay();
      await cluster.stopStandby();
      try {
        const before = await replicaReads();
        for (const { token } of tokens) expect((await introspect(token)).active).toBe(true);
        const after = await replicaReads();
        expect(after["failed"]).toBeGreaterThan(before["failed"] ?? 0);
        expect(sut.logs.lines.some((l) => l["msg"] === "read replica unreachable; cache misses are read from the primary until it answers again")).toBe(true);
      } finally {
        await cluster.startStandby();
      }
      // The probe finds it again; new misses are served by it.
      await expect.poll(() => sut.logs.lines.some((l) => l["msg"] === "read replica reachable again; cache misses are read from it"), { timeout: 15_000 }).toBe(true);
      const { token } = await replicated("after-restart");
      const before = await replicaReads();
      expect((await introspect(token)).active).toBe(true);
      expect((await replicaReads())["served"]).toBe((before["served"] ?? 0) + 1);
    });
  });
});
