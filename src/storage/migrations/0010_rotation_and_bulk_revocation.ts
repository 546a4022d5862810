/**
 * Rotation with grace and bulk revocation (issue 13).
 *
 * On `tokens`:
 * - `predecessor_id` / `successor_id` link a rotated token and its successor;
 * - `scheduled_revoke_at` is when a rotated token's grace period ends; every
 *   replica's scheduler looks for due rows through a partial index that holds
 *   only unrevoked tokens with a schedule, so it stays tiny;
 * - `revoke_on_successor_use` asks for the old token's revocation at the
 *   successor's first use, and `successor_used_at` records that first use
 *   (so using the old token afterwards raises `rotated_token_reused`).
 *
 * `bulk_revocations` records each `RevokeTokens` operation before any token
 * is revoked, with its selector as columns, so a replica that stops midway
 * leaves a row another replica resumes (`lease_until` says who runs it now).
 *
 * All new columns are nullable or have a constant default, so adding them
 * rewrites no existing row (PostgreSQL 11+).
 */
import { sql } from "kysely";
import type { Kysely } from "kysely";

const UP = [
  sql`
    ALTER TABLE tokens
      ADD COLUMN predecessor_id          uuid        NULL,
      ADD COLUMN successor_id            uuid        NULL,
      ADD COLUMN scheduled_revoke_at     timestamptz NULL,
      ADD COLUMN revoke_on_successor_use boolean     NOT NULL DEFAULT false,
      ADD COLUMN successor_used_at       timestamptz NULL`,
  sql`CREATE INDEX tokens_scheduled_revoke_idx ON tokens (scheduled_revoke_at) WHERE scheduled_revoke_at IS NOT NULL AND revoked_at IS NULL`,
  sql`
    CREATE TABLE bulk_revocations (
      id                 uuid        PRIMARY KEY,
      environment        text        NOT NULL,
      subject            text        NULL,
      team               text        NULL,
      issued_by_token_id uuid        NULL,
      name               text        NULL,
      created_before     timestamptz NULL,
      expire_before      timestamptz NULL,
      reason             text        NOT NULL,
      requested_by       text        NOT NULL,
      caller_token_id    uuid        NULL,
      started_at         timestamptz NOT NULL,
      lease_until        timestamptz NOT NULL,
      revoked_count      bigint      NOT NULL DEFAULT 0,
      finished_at        timestamptz NULL
    )`,
  sql`CREATE INDEX bulk_revocations_unfinished_idx ON bulk_revocations (lease_until) WHERE finished_at IS NULL`,
];

const DOWN = [
  sql`DROP TABLE bulk_revocations`,
  sql`DROP INDEX tokens_scheduled_revoke_idx`,
  sql`
    ALTER TABLE tokens
      DROP COLUMN predecessor_id,
      DROP COLUMN successor_id,
      DROP COLUMN scheduled_revoke_at,
      DROP COLUMN revoke_on_successor_use,
      DROP COLUMN successor_used_at`,
];

/** Applies this migration. `Kysely<any>` as every migration: it must not depend on today's schema types. */
export async function up(db: Kysely<any>): Promise<void> {
  for (const statement of UP) await statement.execute(db);
}

/** Reverts this migration. */
export async function down(db: Kysely<any>): Promise<void> {
  for (const statement of DOWN) await statement.execute(db);
}
