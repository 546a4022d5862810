/**
 * The ceiling of the miss path: raw `pg` point lookups by digest from one
 * process, as MEASURED.md measured them (pool of 10, 32 in flight, a named
 * prepared statement), against the same table the service reads. Bounded
 * by a call count and a time limit.
 *
 * Usage (from the runner): node dist/bench/pg-lookup.js '<json PgLookupInput>'
 * prints one line of JSON (PgLookupResult).
 */
import { hash } from "node:crypto";
import { readFileSync } from "node:fs";
import { Pool } from "pg";
import { schedMicros } from "./common.js";

/** What to run. */
export interface PgLookupInput {
  readonly url: string;
  /** JSON file holding an array of tokens; their SHA-256 digests are looked up. */
  readonly tokensFile: string;
  readonly maxCalls: number;
  readonly maxSeconds: number;
  readonly concurrency: number;
  readonly poolMax: number;
}

/** What happened. */
export interface PgLookupResult {
  readonly calls: number;
  readonly found: number;
  readonly seconds: number;
  readonly rate: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  /** This process's CPU time over the run, as a share of one core. */
  readonly clientCpuPercent: number;
  /** Share of the run its main thread spent runnable but waiting for a core. */
  readonly runQueueWaitPercent: number;
}

async function main(): Promise<void> {
  const input = JSON.parse(process.argv[2] ?? "{}") as PgLookupInput;
  const tokens = JSON.parse(readFileSync(input.tokensFile, "utf8")) as string[];
  const digests = tokens.map((token) => hash("sha256", token, "buffer"));
  const pool = new Pool({ connectionString: input.url, max: input.poolMax, application_name: "tis-bench/raw-pg" });
  const query = (digest: Buffer) => pool.query({ name: "bench_token_by_digest", text: "SELECT * FROM tokens WHERE digest = $1", values: [digest] });
  // Open the pool's connections and prepare the statement on each before the clock starts.
  await Promise.all(Array.from({ length: input.poolMax * 2 }, (_, i) => query(digests[i % digests.length]!)));

  const latencies = new Float64Array(input.maxCalls);
  let next = 0;
  let done = 0;
  let found = 0;
  const cpuAtStart = process.cpuUsage();
  const schedAtStart = schedMicros("self");
  const started = performance.now();
  const stopAt = started + input.maxSeconds * 1000;
  const worker = async () => {
    while (next < input.maxCalls && performance.now() < stopAt) {
      const digest = digests[next++ % digests.length]!;
      const t0 = performance.now();
      const result = await query(digest);
      latencies[done++] = performance.now() - t0;
      found += result.rowCount ?? 0;
    }
  };
  await Promise.all(Array.from({ length: input.concurrency }, worker));
  const seconds = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpuAtStart);
  const waited = schedMicros("self").waiting - schedAtStart.waiting;
  await pool.end();
  const sorted = latencies.subarray(0, done).sort();
  const q = (p: number) => (sorted.length === 0 ? Number.NaN : sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]!);
  const result: PgLookupResult = { calls: done, found, seconds, rate: done / seconds, p50Ms: q(0.5), p99Ms: q(0.99), clientCpuPercent: Math.round((cpu.user + cpu.system) / 10_000 / seconds), runQueueWaitPercent: Math.round(waited / 10_000 / seconds) };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`pg-lookup failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
