/**
 * Store lookups after a revocation channel blip, before and after issue 10.
 *
 * One replica on PostgreSQL, reached through a TCP proxy so the network can
 * be cut. COUNT tokens are seeded and introspected once (all cached), then
 * a steady load of RATE introspections per second of uniformly random
 * cached tokens runs throughout. The proxy is cut for CUT_MS (the pool and
 * the LISTEN session die; a few tokens are revoked meanwhile on a direct
 * connection), then restored, and the store lookups (cache misses that
 * reach `findByDigest`) are counted for WINDOW_MS from the restore.
 *
 * "flush" plays the service before the revocation log: when the channel is
 * back, the replica clears its cache (`RevocationHub.reset()`). "catch-up"
 * is the service now: it reads the log from its position and evicts just
 * the revoked tokens.
 *
 *   npm run build --silent && npx tsc -p bench/tsconfig.json && \
 *     nice node dist/bench/blip-lookups.js '{"count":100000,"rate":2000}'
 */
import { loadConfig } from "../src/config.js";
import { introspectToken } from "../src/domain/introspect.js";
import { createLogger } from "../src/logger.js";
import { startService } from "../src/main.js";
import { openDatabase, migrateToLatest } from "../src/storage/database.js";
import { createTestDatabase } from "../test/support/postgres.js";
import { startTcpProxy } from "../test/support/tcp-proxy.js";
import { insertRows, mintTokens } from "./seed.js";

interface Options {
  count: number;
  rate: number;
  cutMs: number;
  windowMs: number;
  revokedDuringCut: number;
}

const options: Options = { count: 100_000, rate: 2000, cutMs: 5000, windowMs: 60_000, revokedDuringCut: 10, ...(JSON.parse(process.argv[2] ?? "{}") as Partial<Options>) };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function run(mode: "flush" | "catch-up") {
  const testDb = await createTestDatabase();
  const url = new URL(testDb.url);
  const seedDb = await openDatabase({ url: testDb.url, poolMax: 4, connectTimeoutMs: 5000, statementTimeoutMs: 0 });
  await migrateToLatest(seedDb.db);
  const minted = mintTokens("development", options.count, "blip");
  await insertRows(seedDb.db, minted.rows);

  const proxy = await startTcpProxy(Number(url.port || 5432), url.hostname);
  const viaProxy = new URL(testDb.url);
  viaProxy.port = String(proxy.port);
  const config = loadConfig({
    DATABASE_URL: viaProxy.toString(),
    LISTEN_HOST: "127.0.0.1",
    GRPC_PORT: "0",
    HTTP_PORT: "0",
    LOG_LEVEL: "error",
    CACHE_MAX_ENTRIES: String(options.count * 2),
    CACHE_MAX_MEGABYTES: "2048",
    DATABASE_CONNECT_TIMEOUT: "1s",
    SHUTDOWN_GRACE: "1s",
    METRICS_ENABLED: "false",
  });
  const service = await startService(config, { log: createLogger("error"), bootstrapOnFirstStart: false });
  const deps = service.deps;
  if (mode === "flush") deps.revocations.restored = () => deps.revocations.reset();

  let lookups = 0;
  let failedLookups = 0;
  const find = deps.store.findByDigest.bind(deps.store);
  deps.store.findByDigest = (digest) => {
    lookups++;
    return find(digest).catch((error: unknown) => {
      failedLookups++;
      throw error;
    });
  };
  const meta = { method: "/bench/blip" };
  // Warm: every token cached.
  for (let i = 0; i < minted.tokens.length; i += 500) {
    await Promise.all(minted.tokens.slice(i, i + 500).map((t) => introspectToken(deps, t, meta)));
  }
  const warmLookups = lookups;

  // Steady load throughout.
  let stop = false;
  let calls = 0;
  const load = (async () => {
    const perTick = Math.max(1, Math.round(options.rate / 20));
    while (!stop) {
      const started = Date.now();
      const batch: Promise<unknown>[] = [];
      for (let i = 0; i < perTick; i++) {
        const token = minted.tokens[Math.floor(Math.random() * minted.tokens.length)]!;
        batch.push(introspectToken(deps, token, meta).catch(() => undefined));
      }
      calls += perTick;
      await Promise.all(batch);
      await sleep(Math.max(0, 50 - (Date.now() - started)));
    }
  })();
  await sleep(2000);
  const steadyBefore = lookups;
  await sleep(2000);
  const steadyLookupsPer2s = lookups - steadyBefore;

  proxy.cut();
  const cutAt = lookups;
  // Revocations while the replica is cut off (on a direct connection).
  const admin = await openDatabase({ url: testDb.url, poolMax: 1, connectTimeoutMs: 5000, statementTimeoutMs: 0 });
  const { KyselyTokenStore } = await import("../src/storage/token-store.js");
  const direct = new KyselyTokenStore(admin.db);
  for (const row of minted.rows.slice(0, options.revokedDuringCut)) await direct.revoke(row.id, { by: "bench", reason: "blip", at: new Date() });
  await sleep(options.cutMs);
  proxy.restore();
  const duringCut = lookups - cutAt;
  const restoredAt = lookups;
  const failedAtRestore = failedLookups;
  const callsAtRestore = calls;
  await sleep(options.windowMs);
  const afterRestore = lookups - restoredAt;
  const failedAfter = failedLookups - failedAtRestore;
  stop = true;
  await load;
  // Every token revoked during the cut must be inactive now.
  const stillActive = (await Promise.all(minted.tokens.slice(0, options.revokedDuringCut).map((t) => introspectToken(deps, t, meta)))).filter((r) => r.active).length;
  const result = {
    mode,
    cachedTokens: options.count,
    ratePerSecond: options.rate,
    warmLookups,
    steadyLookupsPer2s,
    lookupsDuringCut: duringCut,
    lookupsInWindowAfterRestore: afterRestore,
    failedLookupsInWindow: failedAfter,
    callsInWindow: calls - callsAtRestore,
    revokedDuringCutStillActive: stillActive,
  };
  await service.stop();
  await admin.close();
  await seedDb.close();
  await proxy.close();
  await testDb.drop();
  return result;
}

const results = [];
for (const mode of ["flush", "catch-up"] as const) {
  results.push(await run(mode));
  process.stderr.write(`${JSON.stringify(results.at(-1))}\n`);
}
process.stdout.write(`${JSON.stringify({ options, results }, null, 2)}\n`);
process.exit(0);
