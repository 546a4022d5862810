/**
 * Secrets the service keeps for itself and every replica shares, such as the
 * key that authenticates page tokens. Created on first start (insert if
 * absent), never configured.
 */
import { sql } from "kysely";
import type { Kysely } from "kysely";

const UP = [
  sql`
    CREATE TABLE server_secrets (
      name       text        PRIMARY KEY,
      secret     bytea       NOT NULL CHECK (octet_length(secret) >= 32),
      created_at timestamptz NOT NULL DEFAULT now()
    )`,
];

/** Applies this migration. */
export async function up(db: Kysely<unknown>): Promise<void> {
  for (const statement of UP) await statement.execute(db);
}

/** Reverts this migration. */
export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`DROP TABLE server_secrets`.execute(db);
}
