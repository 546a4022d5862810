/**
 * Tokens bound to how they are used (issue 13): the networks a token may be
 * used from and a rate limit of its own, both fixed at issue.
 *
 * - `allowed_networks text[]`: canonical CIDRs; empty for any network (every
 *   existing row).
 * - `rate_limit_requests` / `rate_limit_window_ms`: both set or both null.
 *
 * Issuing gets a third version of the capped insert, `insert_token_capped_v3`,
 * identical to v2 (migration 0006: issuer re-check under `FOR SHARE`, the
 * per-subject advisory lock and count) plus the new columns. v2 stays, so
 * replicas of the previous release keep issuing during a rolling upgrade
 * (their tokens are simply unbound).
 */
import { sql } from "kysely";
import type { Kysely } from "kysely";

const UP = [
  sql`ALTER TABLE tokens ADD COLUMN allowed_networks text[] NOT NULL DEFAULT '{}'`,
  sql`ALTER TABLE tokens ADD COLUMN rate_limit_requests integer NULL`,
  sql`ALTER TABLE tokens ADD COLUMN rate_limit_window_ms integer NULL`,
  sql`ALTER TABLE tokens ADD CONSTRAINT tokens_rate_limit_both CHECK ((rate_limit_requests IS NULL) = (rate_limit_window_ms IS NULL))`,
  sql`
    CREATE FUNCTION insert_token_capped_v3(
      p_id uuid, p_digest bytea, p_display_hint text, p_name text, p_subject text, p_full_name text,
      p_teams text[], p_scopes text[], p_namespaces text[], p_is_admin boolean, p_metadata jsonb,
      p_environment text, p_created_at timestamptz, p_created_by text, p_expires_at timestamptz,
      p_issued_by_token_id uuid, p_max_active bigint, p_now timestamptz,
      p_allowed_networks text[], p_rate_limit_requests integer, p_rate_limit_window_ms integer
    ) RETURNS SETOF tokens LANGUAGE plpgsql VOLATILE AS $fn$
    DECLARE
      held bigint;
    BEGIN
      IF p_issued_by_token_id IS NOT NULL THEN
        PERFORM 1 FROM tokens WHERE id = p_issued_by_token_id AND revoked_at IS NULL FOR SHARE;
        IF NOT FOUND THEN
          RAISE EXCEPTION USING ERRCODE = 'TK002', MESSAGE = 'issuing token revoked';
        END IF;
      END IF;
      PERFORM pg_advisory_xact_lock(1953458993, hashtext(p_subject));
      SELECT count(*) INTO held FROM tokens
        WHERE subject = p_subject AND environment = p_environment
          AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > p_now);
      IF held >= p_max_active THEN
        RAISE EXCEPTION USING ERRCODE = 'TK001', MESSAGE = held::text;
      END IF;
      RETURN QUERY
        INSERT INTO tokens (id, digest, display_hint, name, subject, full_name, teams, scopes, namespaces,
                            is_admin, metadata, environment, created_at, created_by, expires_at, issued_by_token_id,
                            allowed_networks, rate_limit_requests, rate_limit_window_ms)
        VALUES (p_id, p_digest, p_display_hint, p_name, p_subject, p_full_name, p_teams, p_scopes, p_namespaces,
                p_is_admin, p_metadata, p_environment, p_created_at, p_created_by, p_expires_at, p_issued_by_token_id,
                p_allowed_networks, p_rate_limit_requests, p_rate_limit_window_ms)
        RETURNING *;
    END
    $fn$`,
];

const DOWN = [
  sql`DROP FUNCTION insert_token_capped_v3`,
  sql`ALTER TABLE tokens DROP CONSTRAINT tokens_rate_limit_both`,
  sql`ALTER TABLE tokens DROP COLUMN rate_limit_window_ms`,
  sql`ALTER TABLE tokens DROP COLUMN rate_limit_requests`,
  sql`ALTER TABLE tokens DROP COLUMN allowed_networks`,
];

/** Applies this migration. `Kysely<any>` as every migration: it must not depend on today's schema types. */
export async function up(db: Kysely<any>): Promise<void> {
  for (const statement of UP) await statement.execute(db);
}

/** Reverts this migration. */
export async function down(db: Kysely<any>): Promise<void> {
  for (const statement of DOWN) await statement.execute(db);
}
