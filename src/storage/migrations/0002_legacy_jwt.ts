/**
 * Legacy JWTs: revoked `jti`s and per-subject usage during the deprecation window.
 */
import { sql } from "kysely";
import type { Kysely } from "kysely";

const UP = [
  sql`
    CREATE TABLE legacy_jwt_revocations (
      jti           text        PRIMARY KEY,
      revoked_at    timestamptz NOT NULL,
      revoked_by    text        NOT NULL,
      revoke_reason text        NOT NULL DEFAULT '',
      -- The JWT's own expiry, when known: after it the row can be pruned.
      expires_at    timestamptz NULL
    )`,
  sql`
    CREATE TABLE legacy_jwt_usage (
      subject       text        PRIMARY KEY,
      introspections bigint     NOT NULL CHECK (introspections > 0),
      first_seen    timestamptz NOT NULL,
      last_seen     timestamptz NOT NULL
    )`,
  sql`CREATE INDEX legacy_jwt_usage_last_seen_idx ON legacy_jwt_usage (last_seen DESC, subject DESC)`,
];

/** Applies this migration. */
export async function up(db: Kysely<unknown>): Promise<void> {
  for (const statement of UP) await statement.execute(db);
}

/** Reverts this migration. */
export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`DROP TABLE legacy_jwt_usage`.execute(db);
  await sql`DROP TABLE legacy_jwt_revocations`.execute(db);
}
