/**
 * Which token issued which: `tokens.issued_by_token_id`, so a leaked token's
 * revocation can follow it to everything it made (a recursive query down
 * this column), and `ListTokens` can filter by it.
 *
 * The capped insert of migration 0004 gets a second version,
 * `insert_token_capped_v2`, that
 * - takes and stores the issuing token's id;
 * - counts the per-subject cap within the token's own environment only
 *   (environments may share one store, and one environment's tokens must not
 *   use up another's allowance);
 * - refuses (SQLSTATE TK002) when the issuing token is revoked by the time
 *   the row is written. It reads the issuer `FOR SHARE`, which conflicts with
 *   the row lock a revocation's UPDATE takes: an issue and a cascade on the
 *   same issuer are serialised, so either the cascade sees the new child or
 *   the issue sees the revoked issuer. Without this a leaked token that a
 *   replica still had cached could mint a child just after its cascade.
 *
 * The 0004 function stays, so replicas of the previous release keep issuing
 * during a rolling upgrade (their tokens simply record no issuer). No foreign
 * key: a token row outlives nothing it refers to, and one would only slow
 * every insert.
 */
import { sql } from "kysely";
import type { Kysely } from "kysely";

/** The SQLSTATE the function raises when the issuing token has been revoked. */
export const ISSUER_REVOKED_SQLSTATE = "TK002";

const UP = [
  sql`ALTER TABLE tokens ADD COLUMN issued_by_token_id uuid NULL`,
  // Serves both the cascade's recursive step (children of a token) and
  // ListTokens filtered by issuer, newest first with the keyset on (created_at, id).
  sql`CREATE INDEX tokens_issued_by_created_idx ON tokens (issued_by_token_id, created_at DESC, id DESC) WHERE issued_by_token_id IS NOT NULL`,
  sql`
    CREATE FUNCTION insert_token_capped_v2(
      p_id uuid, p_digest bytea, p_display_hint text, p_name text, p_subject text, p_full_name text,
      p_teams text[], p_scopes text[], p_namespaces text[], p_is_admin boolean, p_metadata jsonb,
      p_environment text, p_created_at timestamptz, p_created_by text, p_expires_at timestamptz,
      p_issued_by_token_id uuid, p_max_active bigint, p_now timestamptz
    ) RETURNS SETOF tokens LANGUAGE plpgsql VOLATILE AS $fn$
    DECLARE
      held bigint;
    BEGIN
      IF p_issued_by_token_id IS NOT NULL THEN
        -- FOR SHARE waits for a revocation of the issuer in flight and then
        -- re-reads the row, so a cascade that committed first is seen.
        PERFORM 1 FROM tokens WHERE id = p_issued_by_token_id AND revoked_at IS NULL FOR SHARE;
        IF NOT FOUND THEN
          RAISE EXCEPTION USING ERRCODE = 'TK002', MESSAGE = 'issuing token revoked';
        END IF;
      END IF;
      -- Same lock space and key as 0004, so old and new replicas serialise on one subject.
      PERFORM pg_advisory_xact_lock(1953458993, hashtext(p_subject));
      SELECT count(*) INTO held FROM tokens
        WHERE subject = p_subject AND environment = p_environment
          AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > p_now);
      IF held >= p_max_active THEN
        RAISE EXCEPTION USING ERRCODE = 'TK001', MESSAGE = held::text;
      END IF;
      RETURN QUERY
        INSERT INTO tokens (id, digest, display_hint, name, subject, full_name, teams, scopes, namespaces,
                            is_admin, metadata, environment, created_at, created_by, expires_at, issued_by_token_id)
        VALUES (p_id, p_digest, p_display_hint, p_name, p_subject, p_full_name, p_teams, p_scopes, p_namespaces,
                p_is_admin, p_metadata, p_environment, p_created_at, p_created_by, p_expires_at, p_issued_by_token_id)
        RETURNING *;
    END
    $fn$`,
];

const DOWN = [
  sql`DROP FUNCTION insert_token_capped_v2`,
  sql`DROP INDEX tokens_issued_by_created_idx`,
  sql`ALTER TABLE tokens DROP COLUMN issued_by_token_id`,
];

/** Applies this migration. `Kysely<any>` as every migration: it must not depend on today's schema types. */
export async function up(db: Kysely<any>): Promise<void> {
  for (const statement of UP) await statement.execute(db);
}

/** Reverts this migration. */
export async function down(db: Kysely<any>): Promise<void> {
  for (const statement of DOWN) await statement.execute(db);
}
