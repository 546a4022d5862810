/**
 * Issuing under the per-subject cap in ONE round trip.
 *
 * The cap needs a per-subject lock and a count that sees every insert
 * committed before the lock was granted. Across separate statements that is
 * five round trips (BEGIN, lock, count, insert, COMMIT). Inside a PL/pgSQL
 * function each statement takes a fresh snapshot under READ COMMITTED, so
 * the count after the lock is exact, and the whole issue is one call.
 */
import { sql } from "kysely";
import type { Kysely } from "kysely";

/** The SQLSTATE the function raises when the cap is reached; its message is the count held. */
export const CAP_REACHED_SQLSTATE = "TK001";

const UP = [
  sql`
    CREATE FUNCTION insert_token_capped(
      p_id uuid, p_digest bytea, p_display_hint text, p_name text, p_subject text, p_full_name text,
      p_teams text[], p_scopes text[], p_namespaces text[], p_is_admin boolean, p_metadata jsonb,
      p_environment text, p_created_at timestamptz, p_created_by text, p_expires_at timestamptz,
      p_max_active bigint, p_now timestamptz
    ) RETURNS SETOF tokens LANGUAGE plpgsql VOLATILE AS $fn$
    DECLARE
      held bigint;
    BEGIN
      -- Two-key form in its own lock space ("tok1"), held until commit.
      PERFORM pg_advisory_xact_lock(1953458993, hashtext(p_subject));
      SELECT count(*) INTO held FROM tokens
        WHERE subject = p_subject AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > p_now);
      IF held >= p_max_active THEN
        RAISE EXCEPTION USING ERRCODE = 'TK001', MESSAGE = held::text;
      END IF;
      RETURN QUERY
        INSERT INTO tokens (id, digest, display_hint, name, subject, full_name, teams, scopes, namespaces,
                            is_admin, metadata, environment, created_at, created_by, expires_at)
        VALUES (p_id, p_digest, p_display_hint, p_name, p_subject, p_full_name, p_teams, p_scopes, p_namespaces,
                p_is_admin, p_metadata, p_environment, p_created_at, p_created_by, p_expires_at)
        RETURNING *;
    END
    $fn$`,
];

/** Applies this migration. */
export async function up(db: Kysely<unknown>): Promise<void> {
  for (const statement of UP) await statement.execute(db);
}

/** Reverts this migration. */
export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`DROP FUNCTION insert_token_capped`.execute(db);
}
