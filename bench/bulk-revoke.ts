/**
 * Bulk revocation at scale (issue 13): seeds N tokens (default 100,000) with
 * one SQL statement, starts two replicas on one PostgreSQL database, warms
 * replica B's cache, opens a WatchRevocations stream on B, then asks replica
 * A to revoke them all with one `RevokeTokens` call, while a loop keeps
 * introspecting an unrelated token on B (the hot path). Prints, as JSON:
 * how long the call took on A, when B's stream had heard of the last
 * revoked token (the last one inactive on B: B's cache drops each as it
 * hears of it), and B's introspection latencies meanwhile.
 *
 *   npm run build --silent && npx tsc -p bench/tsconfig.json && node dist/bench/bulk-revoke.js
 *   BULK_TOKENS=20000 BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test node dist/bench/bulk-revoke.js
 *
 * Not part of `npm test`. Both replicas are pinned to the server core.
 */
import { mkdirSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import pg from "pg";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { TokenService } from "../gen/tokens/v1/token_service_pb.js";
import { SCOPES } from "../src/domain/model.js";
import { mintToken } from "../src/domain/token-format.js";
import { TMP_DIR } from "./common.js";
import { startTokenService } from "./processes.js";

const N = Number(process.env["BULK_TOKENS"] ?? 100_000);
const ADMIN_URL = process.env["BENCH_DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/test";

async function main(): Promise<void> {
  mkdirSync(TMP_DIR, { recursive: true });
  const name = `tis_bench_bulk_${randomBytes(4).toString("hex")}`;
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  const url = new URL(ADMIN_URL);
  url.pathname = `/${name}`;
  const env = { DATABASE_URL: url.toString(), CACHE_STALENESS: "10m", RPC_MAX_TIMEOUT: "10m", RATE_LIMIT_REVOKE: "off", RATE_LIMIT_INTROSPECT: "off", MAX_ACTIVE_TOKENS_PER_SUBJECT: "1000000" };
  const a = await startTokenService("bulk-a", env);
  const b = await startTokenService("bulk-b", env);
  const db = new pg.Client({ connectionString: url.toString() });
  await db.connect();
  try {
    // The caller: an admin token written straight into the store.
    const caller = mintToken("development");
    const now = new Date();
    await db.query(
      `INSERT INTO tokens (id, digest, display_hint, name, subject, full_name, teams, scopes, namespaces, is_admin, metadata, environment, created_at, created_by, expires_at)
       VALUES (gen_random_uuid(), $1, $2, 'bench-admin', 'admin@bench', '', '{}', $3, '{}', true, '{}', 'development', $4, 'bench', $5)`,
      [caller.digest, caller.displayHint, Object.values(SCOPES), now, new Date(now.getTime() + 86_400_000)],
    );
    const bystander = mintToken("development");
    const seeded = Array.from({ length: N }, () => mintToken("development"));
    const seedStart = performance.now();
    const createdAt = new Date(now.getTime() - 60_000);
    await db.query(
      `INSERT INTO tokens (id, digest, display_hint, name, subject, full_name, teams, scopes, namespaces, is_admin, metadata, environment, created_at, created_by, expires_at)
       SELECT gen_random_uuid(), v.d, v.h, 'seeded', v.s, '', '{}', '{}', '{}', false, '{}', 'development', $3, 'bench', $4
       FROM unnest($1::bytea[], $2::text[], $5::text[]) AS v(d, h, s)`,
      [[...seeded.map((m) => m.digest), bystander.digest], [...seeded.map((m) => m.displayHint), bystander.displayHint], createdAt, new Date(now.getTime() + 86_400_000), [...seeded.map(() => "leaver@bench"), "stays@bench"]],
    );
    await db.query("ANALYZE tokens");
    const seedMs = performance.now() - seedStart;

    const headers = { authorization: `Bearer ${caller.token}` };
    const onA = createClient(TokenService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${a.grpcPort}` }));
    const onB = createClient(TokenService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${b.grpcPort}` }));
    const sample = [seeded[0]!, seeded[Math.floor(N / 2)]!, seeded[N - 1]!];
    for (const m of sample) if (!(await onB.introspectToken({ token: m.token }, { headers })).active) throw new Error("seeded token not active");

    // B's stream: every revocation B hears of (and drops from its cache).
    const abort = new AbortController();
    const heard = new Set<string>();
    let lastHeardAt = 0;
    let streamOpen!: () => void;
    const opened = new Promise<void>((resolve) => (streamOpen = resolve));
    const streaming = (async () => {
      try {
        for await (const event of onB.watchRevocations({ heartbeatInterval: durationFromMs(500) }, { headers, signal: abort.signal })) {
          if (event.event.case === "heartbeat") streamOpen();
          if (event.event.case === "revocation") {
            heard.add(event.event.value.tokenId);
            lastHeardAt = performance.now();
          }
        }
      } catch {
        // aborted at the end
      }
    })();
    await opened;

    // The hot path on B meanwhile.
    const latencies: number[] = [];
    let hot = true;
    const hotLoop = (async () => {
      while (hot) {
        const t = performance.now();
        const answer = await onB.introspectToken({ token: bystander.token }, { headers });
        latencies.push(performance.now() - t);
        if (!answer.active) throw new Error("bystander went inactive");
      }
    })();

    const t0 = performance.now();
    const done = await onA.revokeTokens({ selector: { subject: "leaver@bench" }, reason: "bench" }, { headers, timeoutMs: 600_000 });
    const callMs = performance.now() - t0;
    while (heard.size < N && performance.now() - t0 < 600_000) await new Promise((resolve) => setTimeout(resolve, 20));
    const lastInactiveOnBMs = lastHeardAt - t0;
    hot = false;
    await hotLoop;
    for (const m of sample) if ((await onB.introspectToken({ token: m.token }, { headers })).active) throw new Error("a revoked token is still active on B");
    abort.abort();
    await streaming;

    latencies.sort((x, y) => x - y);
    const pct = (p: number) => Number((latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * p))] ?? 0).toFixed(2));
    console.log(
      JSON.stringify(
        {
          tokens: N,
          revoked: Number(done.revokedCount),
          seedMs: Math.round(seedMs),
          revokeCallMs: Math.round(callMs),
          heardOnB: heard.size,
          lastInactiveOnBMs: Math.round(lastInactiveOnBMs),
          revokedPerSecond: Math.round((N / callMs) * 1000),
          hotPathOnB: { calls: latencies.length, p50Ms: pct(0.5), p99Ms: pct(0.99), maxMs: pct(1) },
        },
        null,
        2,
      ),
    );
  } finally {
    await db.end();
    await Promise.all([a.stop(), b.stop()]);
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    await admin.end();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
