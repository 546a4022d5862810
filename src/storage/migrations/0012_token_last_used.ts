/**
 * Last use lives in its own narrow table (issue 11).
 *
 * Writing `tokens.last_used_at` rewrote the whole token row on every flush:
 * the table's pages are full, so almost no update was HOT (131 of 182,303 in
 * the benchmark) and each one inserted into all six indexes of `tokens`, took
 * the token's row lock (which a revocation then waited for) and WAL-logged
 * the wide row. `token_last_used` holds only the id and the time: an upsert
 * touches its primary key once, on the first use, and afterwards updates a
 * column that is in no index, so with the page space the fill factor leaves
 * the update is HOT.
 *
 * Existing times are copied over. `tokens.last_used_at` stays for now,
 * no longer written, so replicas of the previous release keep working during
 * a rolling upgrade; readers take the later of the two times. A later
 * migration can drop it.
 *
 * No foreign key: tokens are never deleted (revocation keeps history), and
 * the writer only inserts ids it finds in `tokens` (an RI check per row
 * would also take a key-share lock on each token row).
 */
import { sql } from "kysely";
import type { Kysely } from "kysely";

const UP = [
  sql`
    CREATE TABLE token_last_used (
      token_id     uuid        PRIMARY KEY,
      last_used_at timestamptz NOT NULL
    ) WITH (fillfactor = 70)`,
  sql`
    INSERT INTO token_last_used (token_id, last_used_at)
    SELECT id, last_used_at FROM tokens WHERE last_used_at IS NOT NULL`,
];

const DOWN = [
  sql`
    UPDATE tokens SET last_used_at = u.last_used_at
    FROM token_last_used u
    WHERE tokens.id = u.token_id AND (tokens.last_used_at IS NULL OR tokens.last_used_at < u.last_used_at)`,
  sql`DROP TABLE token_last_used`,
];

/** Applies this migration. `Kysely<any>` as every migration: it must not depend on today's schema types. */
export async function up(db: Kysely<any>): Promise<void> {
  for (const statement of UP) await statement.execute(db);
}

/** Reverts this migration. */
export async function down(db: Kysely<any>): Promise<void> {
  for (const statement of DOWN) await statement.execute(db);
}
