/**
 * Revocation propagation with each transport: two replicas on one
 * PostgreSQL, a revocation committed through A's store, timed until B's
 * revocation hub hands it to B's cache. `notify` pushes it (LISTEN/NOTIFY);
 * `poll` reads the revocation log every REVOCATION_POLL_INTERVAL (250 ms).
 *
 *   npm run build --silent && npx tsc -p bench/tsconfig.json && \
 *     nice node dist/bench/propagation-transports.js '{"revocations":40}'
 */
import { loadConfig } from "../src/config.js";
import { createLogger } from "../src/logger.js";
import { startService } from "../src/main.js";
import { migrateToLatest, openDatabase } from "../src/storage/database.js";
import { createTestDatabase } from "../test/support/postgres.js";
import { insertRows, mintTokens } from "./seed.js";

const options = { revocations: 40, gapMs: 100, ...(JSON.parse(process.argv[2] ?? "{}") as Partial<{ revocations: number; gapMs: number }>) };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function run(transport: "notify" | "poll") {
  const testDb = await createTestDatabase();
  const seed = await openDatabase({ url: testDb.url, poolMax: 2, connectTimeoutMs: 5000, statementTimeoutMs: 0 });
  await migrateToLatest(seed.db);
  const minted = mintTokens("development", options.revocations, "prop");
  await insertRows(seed.db, minted.rows);
  await seed.close();
  const config = loadConfig({ DATABASE_URL: testDb.url, LISTEN_HOST: "127.0.0.1", GRPC_PORT: "0", HTTP_PORT: "0", LOG_LEVEL: "error", REVOCATION_TRANSPORT: transport, METRICS_ENABLED: "false", SHUTDOWN_GRACE: "1s" });
  const a = await startService(config, { log: createLogger("error"), bootstrapOnFirstStart: false });
  const b = await startService(config, { log: createLogger("error"), bootstrapOnFirstStart: false });
  const heard = new Map<string, number>();
  b.deps.revocations.subscribe({ revoked: (_key, id) => heard.set(id, performance.now()), confirmed: () => undefined, reset: () => undefined });
  const lags: number[] = [];
  for (const row of minted.rows) {
    const started = performance.now();
    await a.deps.store.revoke(row.id, { by: "bench", reason: "propagation", at: new Date() });
    while (!heard.has(row.id)) await sleep(1);
    lags.push(heard.get(row.id)! - started);
    // A random gap, so revocations do not fall at one phase of the poll.
    await sleep(options.gapMs * (0.5 + 2 * Math.random()));
  }
  await Promise.all([a.stop(), b.stop()]);
  await testDb.drop();
  lags.sort((x, y) => x - y);
  const at = (q: number) => Math.round(lags[Math.min(lags.length - 1, Math.floor(q * lags.length))]! * 10) / 10;
  return { transport, revocations: lags.length, p50Ms: at(0.5), p90Ms: at(0.9), maxMs: at(1) };
}

const results = [await run("notify"), await run("poll")];
process.stdout.write(`${JSON.stringify({ options, results }, null, 2)}\n`);
process.exit(0);
