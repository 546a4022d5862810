/**
 * Where last-use times should live (issue 11, migration 0012): 40,000 writes
 * (5,000-token batches, each token twice) on a 100,000-token table, three
 * ways: updating `tokens.last_used_at` (the old way), the same after fill
 * factor 80 and a `VACUUM FULL` (so updates could be HOT), and the upsert
 * into the narrow `token_last_used`. Prints time, updates of `tokens` (HOT
 * among them), growth and WAL written. Not part of `npm run bench`.
 *
 * Usage: npm run build && tsc -p bench/tsconfig.json && node dist/bench/last-use-writes.js
 */
import { Client } from "pg";
import { migrateToLatest, openDatabase } from "../src/storage/database.js";
import { adminDatabaseUrl, databaseUrl, dropDatabase } from "./postgres.js";
import { insertRows, mintTokens } from "./seed.js";

const TOKENS = 100_000;
const BATCH = 5_000;
const BATCHES = 4;

const OLD = `UPDATE tokens SET last_used_at = v.at FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, at)
  WHERE tokens.id = v.id AND (tokens.last_used_at IS NULL OR tokens.last_used_at < v.at)`;
const NEW = `INSERT INTO token_last_used (token_id, last_used_at)
  SELECT v.id, v.at FROM unnest($1::uuid[], $2::timestamptz[]) AS v(id, at)
  WHERE EXISTS (SELECT 1 FROM tokens WHERE tokens.id = v.id) ORDER BY v.id
  ON CONFLICT (token_id) DO UPDATE SET last_used_at = EXCLUDED.last_used_at
  WHERE token_last_used.last_used_at < EXCLUDED.last_used_at`;

async function main(): Promise<void> {
  const adminUrl = adminDatabaseUrl();
  const admin = new Client({ connectionString: adminUrl });
  await admin.connect();
  const database = `tis_last_use_${process.pid}`;
  await admin.query(`CREATE DATABASE ${database}`);
  const url = databaseUrl(adminUrl, database);
  try {
    const opened = await openDatabase({ url, poolMax: 4, connectTimeoutMs: 5_000, statementTimeoutMs: 0 });
    await migrateToLatest(opened.db);
    const set = mintTokens("production", TOKENS, "last-use");
    const quarter = TOKENS / 4;
    await Promise.all([0, 1, 2, 3].map((i) => insertRows(opened.db, set.rows.slice(i * quarter, (i + 1) * quarter))));
    await opened.close();
    const c = new Client({ connectionString: url });
    await c.connect();
    await c.query("VACUUM ANALYZE tokens");
    const ids = set.rows.map((row) => row.id);
    const stats = async () =>
      (
        await c.query<{ u: number; h: number; t: string; l: string; lsn: string }>(
          "SELECT n_tup_upd::int AS u, n_tup_hot_upd::int AS h, pg_total_relation_size('tokens')::text AS t, pg_total_relation_size('token_last_used')::text AS l, pg_current_wal_lsn()::text AS lsn FROM pg_stat_user_tables WHERE relname = 'tokens'",
        )
      ).rows[0]!;
    const run = async (label: string, statement: string) => {
      await c.query("SELECT pg_stat_clear_snapshot()");
      const before = await stats();
      const started = performance.now();
      for (let pass = 0; pass < 2; pass++) {
        for (let b = 0; b < BATCHES; b++) {
          const batch = ids.slice(b * BATCH, (b + 1) * BATCH).sort();
          const at = new Date(Date.now() + pass * 1_000);
          await c.query(statement, [batch, batch.map(() => at)]);
        }
      }
      const ms = performance.now() - started;
      // Statistics reach pg_stat_user_tables a little after the statements.
      await new Promise((done) => setTimeout(done, 700));
      await c.query("SELECT pg_stat_clear_snapshot()");
      const after = await stats();
      const wal = Number((await c.query<{ d: string }>("SELECT pg_wal_lsn_diff($1, $2)::text AS d", [after.lsn, before.lsn])).rows[0]!.d);
      const mib = (bytes: number) => (bytes / 1_048_576).toFixed(1);
      process.stdout.write(
        `${label}: ${2 * BATCH * BATCHES} writes in ${ms.toFixed(0)} ms; tokens updated ${after.u - before.u} (HOT ${after.h - before.h}); ` +
          `tokens +${mib(Number(after.t) - Number(before.t))} MiB, token_last_used +${mib(Number(after.l) - Number(before.l))} MiB; WAL ${mib(wal)} MiB\n`,
      );
    };
    await run("UPDATE tokens, fill factor 100", OLD);
    await c.query("UPDATE tokens SET last_used_at = NULL");
    await c.query("ALTER TABLE tokens SET (fillfactor = 80)");
    await c.query("VACUUM FULL tokens");
    await c.query("ANALYZE tokens");
    await run("UPDATE tokens, fill factor 80 after VACUUM FULL", OLD);
    await c.query("ALTER TABLE tokens SET (fillfactor = 100)");
    await c.query("VACUUM FULL tokens");
    await run("upsert into token_last_used (migration 0012)", NEW);
    await c.end();
  } finally {
    await dropDatabase(admin, database);
    await admin.end();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`last-use-writes failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
