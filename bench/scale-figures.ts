/**
 * The per-replica figures docs/scaling.md needs that the main benchmark does
 * not measure, on the real PostgreSQL (small and quick: run it niced):
 *
 * - revocation write cost: `UPDATE tokens SET revoked_at` with the
 *   revocation-log trigger (counter row, log INSERT, pg_notify) against the
 *   same UPDATE with the trigger disabled: latency, PostgreSQL backend CPU,
 *   WAL bytes per revocation, and log table bytes per entry;
 * - NOTIFY fan-out: one sender, N listeners on one channel, heartbeat-sized
 *   payloads: PostgreSQL CPU (every backend involved) and listener-side Node
 *   CPU (node-postgres) per notice delivered, against a run with no listener.
 *
 *   npm run build --silent && npx tsc -p bench/tsconfig.json && \
 *     nice node dist/bench/scale-figures.js '{"revocations":1000,"notices":2000,"listeners":[1,10,40]}'
 *
 * CPU times come from /proc/<pid>/stat (10 ms ticks), so runs are sized to
 * take seconds. PostgreSQL must be on this machine for backend CPU.
 */
import { Client } from "pg";
import { migrateToLatest, openDatabase } from "../src/storage/database.js";
import { createTestDatabase } from "../test/support/postgres.js";
import { cpuMicros, round } from "./common.js";
import { insertRows, mintTokens } from "./seed.js";

const options = {
  revocations: 1000,
  notices: 2000,
  listeners: [1, 10, 40],
  /** Paced runs: notices per second (100 replicas' heartbeats at 500 ms = 200/s) and for how long. */
  pacedRate: 200,
  pacedSeconds: 5,
  ...(JSON.parse(process.argv[2] ?? "{}") as Partial<{ revocations: number; notices: number; listeners: number[]; pacedRate: number; pacedSeconds: number }>),
};

async function connect(url: string): Promise<{ client: Client; pid: number }> {
  const client = new Client({ connectionString: url });
  await client.connect();
  const { rows } = await client.query<{ pid: number }>("SELECT pg_backend_pid() AS pid");
  return { client, pid: rows[0]!.pid };
}

const lsnBytes = async (client: Client) => Number((await client.query<{ b: string }>("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS b")).rows[0]!.b);

/** Revokes `ids` one statement (one transaction) at a time and measures it. */
async function revokeAll(client: Client, pid: number, ids: readonly string[]) {
  const cpu0 = cpuMicros(pid);
  const wal0 = await lsnBytes(client);
  const t0 = performance.now();
  for (const id of ids) await client.query("UPDATE tokens SET revoked_at = now() WHERE id = $1", [id]);
  const elapsedMs = performance.now() - t0;
  const wal = (await lsnBytes(client)) - wal0;
  const cpu = cpuMicros(pid) - cpu0;
  return { n: ids.length, meanMs: round(elapsedMs / ids.length), perSecondSequential: Math.round((ids.length * 1000) / elapsedMs), backendCpuUsEach: round(cpu / ids.length), walBytesEach: Math.round(wal / ids.length) };
}

async function revocationCost(url: string, withLog: readonly string[], withoutLog: readonly string[]) {
  const { client, pid } = await connect(url);
  const logged = await revokeAll(client, pid, withLog);
  await client.query("ALTER TABLE tokens DISABLE TRIGGER tokens_revocation_logged");
  const plain = await revokeAll(client, pid, withoutLog);
  await client.query("ALTER TABLE tokens ENABLE TRIGGER tokens_revocation_logged");
  await client.query("VACUUM ANALYZE revocation_log");
  const size = (await client.query<{ rows: string; bytes: string; heap: string }>(
    "SELECT count(*)::bigint AS rows, pg_total_relation_size('revocation_log')::bigint AS bytes, pg_relation_size('revocation_log')::bigint AS heap FROM revocation_log",
  )).rows[0]!;
  await client.end();
  return {
    withLog: logged,
    withoutLog: plain,
    logMarginal: { meanMs: round(logged.meanMs - plain.meanMs), backendCpuUsEach: round(logged.backendCpuUsEach - plain.backendCpuUsEach), walBytesEach: logged.walBytesEach - plain.walBytesEach },
    logTable: { rows: Number(size.rows), totalBytesPerEntry: Math.round(Number(size.bytes) / Number(size.rows)), heapBytesPerEntry: Math.round(Number(size.heap) / Number(size.rows)) },
  };
}

/**
 * One sender NOTIFYs heartbeat-sized payloads; `n` listeners must each
 * receive all of them. Flat out (`pacedRate` undefined: notices arrive in
 * batches, the cheapest case per notice) or paced at `pacedRate` per second
 * for `pacedSeconds` (each notice arrives on its own, as heartbeats do).
 */
async function fanOut(url: string, n: number, pacedRate?: number) {
  const count = pacedRate === undefined ? options.notices : pacedRate * options.pacedSeconds;
  const sender = await connect(url);
  const listeners = await Promise.all(Array.from({ length: n }, () => connect(url)));
  let received = 0;
  const target = n * count;
  let done: () => void = () => undefined;
  const all = new Promise<void>((resolve) => (done = resolve));
  for (const { client } of listeners) {
    client.on("notification", () => {
      if (++received === target) done();
    });
    await client.query("LISTEN bench_fanout");
  }
  if (target === 0) done();
  const pids = [sender.pid, ...listeners.map((l) => l.pid)];
  const pg0 = pids.map(cpuMicros);
  const sender0 = cpuMicros(sender.pid);
  const node0 = process.cpuUsage();
  const t0 = performance.now();
  // The heartbeat's shape: `h:<replica nonce>:<sequence>`.
  for (let i = 0; i < count; i++) {
    await sender.client.query("SELECT pg_notify('bench_fanout', $1)", [`h:0123456789abcdef:${i}`]);
    if (pacedRate !== undefined) {
      const due = t0 + ((i + 1) * 1000) / pacedRate;
      const wait = due - performance.now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }
  const sentMs = performance.now() - t0;
  await all;
  const deliveredMs = performance.now() - t0;
  const node = process.cpuUsage(node0);
  const pgCpu = pids.reduce((sum, pid, i) => sum + cpuMicros(pid) - pg0[i]!, 0);
  const senderCpu = cpuMicros(sender.pid) - sender0;
  await Promise.all([sender, ...listeners].map((c) => c.client.end()));
  return {
    listeners: n,
    paced: pacedRate ?? "flat out",
    notices: count,
    delivered: received,
    sentPerSecond: Math.round((count * 1000) / sentMs),
    deliveredPerSecond: n === 0 ? 0 : Math.round((received * 1000) / deliveredMs),
    senderBackendCpuUsPerNotify: round(senderCpu / count),
    pgCpuUsTotal: Math.round(pgCpu),
    nodeCpuUsTotal: node.user + node.system,
  };
}

const testDb = await createTestDatabase();
try {
  const seed = await openDatabase({ url: testDb.url, poolMax: 2, connectTimeoutMs: 5000, statementTimeoutMs: 0 });
  await migrateToLatest(seed.db);
  const withLog = mintTokens("development", options.revocations, "with-log").rows;
  const withoutLog = mintTokens("development", options.revocations, "without-log").rows;
  await insertRows(seed.db, [...withLog, ...withoutLog]);
  await seed.close();
  const revocation = await revocationCost(testDb.url, withLog.map((r) => r.id), withoutLog.map((r) => r.id));
  const series = async (pacedRate?: number) => {
    const runs = [];
    for (const n of [0, ...options.listeners]) runs.push(await fanOut(testDb.url, n, pacedRate));
    const base = runs[0]!;
    return runs.map((r) => ({
      ...r,
      // What each delivery costs beyond sending with nobody listening.
      pgCpuUsPerDelivery: r.delivered === 0 ? 0 : round((r.pgCpuUsTotal - base.pgCpuUsTotal) / r.delivered),
      nodeCpuUsPerDelivery: r.delivered === 0 ? 0 : round((r.nodeCpuUsTotal - base.nodeCpuUsTotal) / r.delivered),
    }));
  };
  const flatOut = await series();
  const paced = await series(options.pacedRate);
  const result = { date: new Date().toISOString(), loadAverage: (await import("node:os")).loadavg(), options, revocation, flatOut, paced };
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
} finally {
  await testDb.drop();
}
process.exit(0);
