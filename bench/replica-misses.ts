/**
 * Cache-miss throughput read from a streaming read replica
 * (`DATABASE_READ_URL`) beside the same misses read from the primary, in one
 * run: a private primary and hot standby (test/support/pg-cluster.ts), the
 * same seeded tokens, services started in turns (primary, replica, primary,
 * replica) so drift on the shared machine hits both alike. Each service
 * starts with an empty cache and introspects distinct tokens once each
 * (every call a miss) through the h2 loader; the replica's
 * `token_service_replica_reads_total` shows the misses were served there.
 * Raw `pg` lookups against each server give the ceiling of each.
 *
 *   npm run build && npx tsc -p bench/tsconfig.json && \
 *     nice taskset -c 1 node dist/bench/replica-misses.js
 *
 * Writes bench/results/replica-misses.json and prints a table. Both
 * PostgreSQL servers run on this same machine (two cores shared with
 * everything else), so the figures compare the two read paths' cost; they
 * do not show the primary being relieved, which needs the standby elsewhere.
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { sql } from "kysely";
import { migrateToLatest, openDatabase } from "../src/storage/database.js";
import { startPgCluster } from "../test/support/pg-cluster.js";
import { RESULTS_DIR, TMP_DIR, cpuMicros, round, runLoadScript } from "./common.js";
import type { H2LoadInput, H2LoadResult } from "./h2-load.js";
import type { PgLookupInput, PgLookupResult } from "./pg-lookup.js";
import { startTokenService } from "./processes.js";
import { insertRows, mintCaller, mintTokens } from "./seed.js";

const TOKENS = 60_000;
const WARM = 1_000;
const MISSES = 12_000;
const MISS_SECONDS = 8;
const IN_FLIGHT = 32;
const ROUNDS = 2;

interface Row {
  readonly reads: "primary" | "replica";
  readonly round: number;
  readonly rate: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly cpuUsPerCall: number;
  readonly notActive: number;
  readonly replicaReads?: Record<string, number>;
}

function log(message: string): void {
  process.stdout.write(`[replica-misses] ${message}\n`);
}

async function replicaReads(httpPort: number): Promise<Record<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^token_service_replica_reads_total\{outcome="(\w+)"\} (\d+)$/gm)) out[m[1]!] = Number(m[2]);
  return out;
}

async function main(): Promise<void> {
  mkdirSync(TMP_DIR, { recursive: true });
  log("starting a private primary and a streaming standby");
  const cluster = await startPgCluster("tokens");
  try {
    const opened = await openDatabase({ url: cluster.primaryUrl, poolMax: 4, connectTimeoutMs: 5_000, statementTimeoutMs: 0 });
    const gateway = mintCaller("production", "gateway@bench.example.com", false);
    const set = mintTokens("production", TOKENS, "replica");
    try {
      await migrateToLatest(opened.db);
      await insertRows(opened.db, [...gateway.rows, ...set.rows]);
      await sql`ANALYZE tokens`.execute(opened.db);
    } finally {
      await opened.close();
    }
    await cluster.waitForReplay(120_000);
    log(`${TOKENS.toLocaleString("en-US")} tokens seeded and replayed on the standby`);
    const tokensFile = resolve(TMP_DIR, "replica-tokens.json");
    writeFileSync(tokensFile, JSON.stringify(set.tokens));

    const raw: Record<string, PgLookupResult> = {};
    for (const [name, url] of [["primary", cluster.primaryUrl], ["replica", cluster.standbyUrl]] as const) {
      raw[name] = await runLoadScript<PgLookupResult>("pg-lookup.js", { url, tokensFile, maxCalls: 200_000, maxSeconds: 5, concurrency: 32, poolMax: 10 } satisfies PgLookupInput, 70_000);
      log(`raw pg lookups on the ${name}: ${round(raw[name].rate)}/s, p99 ${round(raw[name].p99Ms)} ms`);
    }

    const rows: Row[] = [];
    const env = {
      TOKEN_ENVIRONMENT: "production",
      DATABASE_URL: cluster.primaryUrl,
      KEY_ENCRYPTION_KEY: randomBytes(32).toString("base64"),
      EXT_AUTHZ_ENABLED: "false",
      CACHE_MAX_ENTRIES: String(TOKENS * 2),
    };
    for (let r = 1; r <= ROUNDS; r++) {
      for (const reads of ["primary", "replica"] as const) {
        const server = await startTokenService(`replica-bench-${reads}-${r}`, reads === "replica" ? { ...env, DATABASE_READ_URL: cluster.standbyUrl } : env);
        try {
          const base = { address: `127.0.0.1:${server.grpcPort}`, callerToken: gateway.tokens[0]!, tokensFile, concurrency: IN_FLIGHT, connections: 4 };
          // Warm-up: connections opened, statements prepared, the caller cached.
          await runLoadScript<H2LoadResult>("h2-load.js", { ...base, first: 0, maxCalls: WARM, maxSeconds: 20 } satisfies H2LoadInput, 80_000);
          const before = reads === "replica" ? await replicaReads(server.httpPort) : undefined;
          const cpuBefore = cpuMicros(server.pid);
          // Each service has its own cache, so the same slice is a miss for each: the same rows, fairly compared.
          const miss = await runLoadScript<H2LoadResult>("h2-load.js", { ...base, first: WARM, maxCalls: MISSES, maxSeconds: MISS_SECONDS } satisfies H2LoadInput, (MISS_SECONDS + 60) * 1000);
          const cpu = cpuMicros(server.pid) - cpuBefore;
          const after = reads === "replica" ? await replicaReads(server.httpPort) : undefined;
          const ok = miss.statuses["0"] ?? 0;
          const row: Row = {
            reads,
            round: r,
            rate: round(ok / miss.seconds),
            p50Ms: round(miss.p50Ms),
            p99Ms: round(miss.p99Ms),
            cpuUsPerCall: round(cpu / Math.max(1, miss.calls)),
            notActive: miss.calls - miss.active,
            ...(after && before ? { replicaReads: Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - (before[k] ?? 0)])) } : {}),
          };
          rows.push(row);
          log(`${reads} reads, round ${r}: ${row.rate} misses/s, p50 ${row.p50Ms} ms, p99 ${row.p99Ms} ms, service CPU ${row.cpuUsPerCall} µs/call${row.replicaReads ? `, replica outcomes ${JSON.stringify(row.replicaReads)}` : ""}`);
        } finally {
          await server.stop();
        }
      }
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const summary = Object.fromEntries(
      (["primary", "replica"] as const).map((reads) => {
        const mine = rows.filter((row) => row.reads === reads);
        return [reads, { rate: median(mine.map((x) => x.rate)), p99Ms: median(mine.map((x) => x.p99Ms)), cpuUsPerCall: median(mine.map((x) => x.cpuUsPerCall)) }];
      }),
    );
    const out = {
      when: new Date().toISOString(),
      tokens: TOKENS,
      missesPerRun: MISSES,
      inFlight: IN_FLIGHT,
      rawPg: Object.fromEntries(Object.entries(raw).map(([k, v]) => [k, { rate: round(v.rate), p50Ms: round(v.p50Ms), p99Ms: round(v.p99Ms) }])),
      rows,
      summary,
    };
    writeFileSync(resolve(RESULTS_DIR, "replica-misses.json"), `${JSON.stringify(out, null, 2)}\n`);
    process.stdout.write("\n| misses read from | misses/s | p50 ms | p99 ms | service CPU µs/call | raw pg lookups/s on that server |\n|---|---|---|---|---|---|\n");
    for (const reads of ["primary", "replica"] as const) {
      const s = summary[reads]!;
      const mine = rows.filter((row) => row.reads === reads);
      process.stdout.write(`| ${reads} | ${mine.map((x) => x.rate).join(", ")} | ${mine.map((x) => x.p50Ms).join(", ")} | ${mine.map((x) => x.p99Ms).join(", ")} | ${s.cpuUsPerCall} | ${round(raw[reads]!.rate)} |\n`);
    }
  } finally {
    await cluster.stop();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
