/**
 * Backend JWT signing keys, shared by every replica.
 */
import { sql } from "kysely";
import type { Kysely } from "kysely";

const UP = [
  sql`
    CREATE TABLE signing_keys (
      kid          text        PRIMARY KEY,
      alg          text        NOT NULL CHECK (alg IN ('ES256', 'EdDSA')),
      private_jwk  jsonb       NOT NULL,
      public_jwk   jsonb       NOT NULL,
      created_at   timestamptz NOT NULL,
      activates_at timestamptz NOT NULL
    )`,
];

/** Applies this migration. */
export async function up(db: Kysely<unknown>): Promise<void> {
  for (const statement of UP) await statement.execute(db);
}

/** Reverts this migration. */
export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`DROP TABLE signing_keys`.execute(db);
}
