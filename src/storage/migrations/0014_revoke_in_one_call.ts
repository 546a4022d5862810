/**
 * `RevokeToken` in one round trip (issue 11): `revoke_token_v1` finds the
 * token (by id or by digest), revokes it with the conditional UPDATE and
 * returns what the answer needs, in one call. Before it, a revocation by
 * value took three round trips (the digest lookup, the UPDATE, a read of the
 * last use) and a repeat a fourth; each was a turn through the pool and the
 * network while the revocation was already decided.
 *
 * What it keeps, exactly as the statements it replaces:
 * - First revocation wins: the UPDATE is conditional on `revoked_at IS
 *   NULL`; a concurrent revocation of the same row waits for its row lock
 *   and then finds it revoked.
 * - Durable and announced: one call is one statement of one transaction, so
 *   the row trigger of migration 0009 writes the log entry and sends the
 *   NOTIFY inside it; both commit with the revocation (synchronous commit as
 *   configured: nothing here relaxes durability), and the notice is
 *   delivered only then.
 * - The scope: `p_environment` (when not NULL) and `p_subject` (when not
 *   NULL: a non-admin revoking by id) are conditions of the UPDATE itself, so
 *   a token outside them is never touched. Which of "unknown" and "another
 *   subject's" it was comes back as the outcome, for the security event
 *   only; the caller's answer is the same for both (domain/revoke.ts).
 *
 * When the UPDATE revokes nothing, the row is read again: a volatile
 * function's statements each take a new snapshot (READ COMMITTED), so a
 * revocation that committed while the UPDATE waited is seen, and the record
 * shows the first revocation. A row unrevoked in that read was committed
 * after the UPDATE's snapshot (an insert racing its own revocation): the
 * UPDATE runs again. Last use is the later of the old column and
 * `token_last_used` (migration 0012), as every other read of a record.
 *
 * Outcomes: `revoked` (by this call), `already_revoked`, `other_subject`
 * (with no token); no row when there is no such token in the environment.
 * PL/pgSQL as migrations 0004 and 0006: one call on PostgreSQL and PGlite.
 */
import { sql } from "kysely";
import type { Kysely } from "kysely";

const UP = [
  sql`
    CREATE FUNCTION revoke_token_v1(
      p_id uuid, p_digest bytea, p_environment text, p_subject text,
      p_at timestamptz, p_by text, p_reason text
    ) RETURNS TABLE (outcome text, token tokens)
    LANGUAGE plpgsql VOLATILE AS $fn$
    DECLARE
      r tokens;
      used timestamptz;
    BEGIN
      IF (p_id IS NULL) = (p_digest IS NULL) THEN
        RAISE EXCEPTION 'revoke_token_v1: give exactly one of p_id and p_digest';
      END IF;
      LOOP
        IF p_id IS NOT NULL THEN
          UPDATE tokens t SET revoked_at = p_at, revoked_by = p_by, revoke_reason = p_reason
          WHERE t.id = p_id AND t.revoked_at IS NULL
            AND (p_environment IS NULL OR t.environment = p_environment)
            AND (p_subject IS NULL OR t.subject = p_subject)
          RETURNING t.* INTO r;
        ELSE
          UPDATE tokens t SET revoked_at = p_at, revoked_by = p_by, revoke_reason = p_reason
          WHERE t.digest = p_digest AND t.revoked_at IS NULL
            AND (p_environment IS NULL OR t.environment = p_environment)
            AND (p_subject IS NULL OR t.subject = p_subject)
          RETURNING t.* INTO r;
        END IF;
        IF FOUND THEN
          outcome := 'revoked';
          EXIT;
        END IF;
        IF p_id IS NOT NULL THEN
          SELECT * INTO r FROM tokens t WHERE t.id = p_id;
        ELSE
          SELECT * INTO r FROM tokens t WHERE t.digest = p_digest;
        END IF;
        IF NOT FOUND OR (p_environment IS NOT NULL AND r.environment <> p_environment) THEN
          RETURN;
        END IF;
        IF p_subject IS NOT NULL AND r.subject <> p_subject THEN
          outcome := 'other_subject';
          token := NULL;
          RETURN NEXT;
          RETURN;
        END IF;
        IF r.revoked_at IS NOT NULL THEN
          outcome := 'already_revoked';
          EXIT;
        END IF;
      END LOOP;
      SELECT u.last_used_at INTO used FROM token_last_used u WHERE u.token_id = r.id;
      r.last_used_at := GREATEST(r.last_used_at, used);
      token := r;
      RETURN NEXT;
    END
    $fn$`,
];

const DOWN = [sql`DROP FUNCTION revoke_token_v1`];

/** Applies this migration. `Kysely<any>` as every migration: it must not depend on today's schema types. */
export async function up(db: Kysely<any>): Promise<void> {
  for (const statement of UP) await statement.execute(db);
}

/** Reverts this migration. */
export async function down(db: Kysely<any>): Promise<void> {
  for (const statement of DOWN) await statement.execute(db);
}
