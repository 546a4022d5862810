/**
 * The revocation log: every revocation (an opaque token, a legacy `jti`, each
 * token of a cascade) gets a row with a strictly increasing `position`,
 * written in the same statement as the revocation itself, and the NOTIFY
 * to every replica carries that position. A replica knows the position it
 * has applied and, after a channel blip (or on every poll, with
 * `REVOCATION_TRANSPORT=poll`), reads what came after it instead of
 * forgetting its whole cache.
 *
 * Why not a sequence or an identity column: `nextval` hands out numbers at
 * call time, but transactions commit in any order, so a reader that has seen
 * position 12 committed cannot know that 11 (allocated earlier, committed
 * later) will not appear afterwards; "everything after 12" would skip it for
 * good. Positions here come from one counter row, `UPDATE … SET position =
 * position + n`, whose row lock is held until commit: the next revocation
 * waits for the previous one to commit or roll back before it gets its
 * number. So positions commit in order, a rollback leaves no gap (its
 * increment rolls back too), and any snapshot that sees position P sees
 * every position below it. Revocations are rare and short, so serialising
 * them on one row costs nothing measurable; everything else (issue,
 * introspection) never touches the row.
 *
 * Entries are written by triggers, not by the revoking statements: an
 * AFTER UPDATE row trigger on `tokens` for each row whose `revoked_at` goes
 * from NULL to a time, and an AFTER INSERT row trigger on
 * `legacy_jwt_revocations`. Row triggers run inside the revoking statement,
 * so the entry commits with the revocation or not at all, and every path is
 * covered the same way: `RevokeToken`, each row of a cascade, a legacy jti,
 * a replica of the previous release during a rolling upgrade (whose own
 * position-less NOTIFY is merely redundant), an operator's manual UPDATE.
 * The trigger also sends the NOTIFY with the position, in position order.
 *
 * `pruned_through` on the counter row is the highest position the pruning
 * has removed: a replica whose applied position is below it cannot catch up
 * from the log and resets its cache instead. It moves in the same
 * transaction as the DELETE, so a reader never sees rows gone without it.
 *
 * Functions in PL/pgSQL as in migrations 0004 and 0006: one call, one
 * statement, on PostgreSQL and PGlite alike.
 */
import { sql } from "kysely";
import type { Kysely } from "kysely";

const UP = [
  sql`
    CREATE TABLE revocation_log_counter (
      singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
      position bigint NOT NULL,
      pruned_through bigint NOT NULL
    )`,
  sql`INSERT INTO revocation_log_counter (singleton, position, pruned_through) VALUES (true, 0, 0)`,
  sql`
    CREATE TABLE revocation_log (
      position bigint PRIMARY KEY,
      -- 'token' (an opaque token: digest set) or 'legacy_jti' (no digest; never cached).
      kind text NOT NULL,
      -- The token's id, or the legacy jti.
      subject_id text NOT NULL,
      digest bytea NULL,
      logged_at timestamptz NOT NULL
    )`,
  // Pruning walks by time, oldest first.
  sql`CREATE INDEX revocation_log_logged_at_idx ON revocation_log (logged_at)`,
  sql`
    CREATE FUNCTION log_revocations(p_kind text, p_ids text[], p_digests bytea[], p_channel text)
    RETURNS bigint LANGUAGE plpgsql VOLATILE AS $fn$
    DECLARE
      n integer := coalesce(array_length(p_ids, 1), 0);
      last bigint;
      ms text := floor(extract(epoch from clock_timestamp()) * 1000)::bigint::text;
    BEGIN
      IF n = 0 THEN
        RETURN NULL;
      END IF;
      -- The row lock taken here is held until commit: see the file comment.
      UPDATE revocation_log_counter SET position = position + n WHERE singleton RETURNING position INTO last;
      INSERT INTO revocation_log (position, kind, subject_id, digest, logged_at)
        SELECT last - n + i, p_kind, p_ids[i], p_digests[i], clock_timestamp()
        FROM generate_subscripts(p_ids, 1) AS i;
      -- One notice per entry, in position order (PostgreSQL delivers a
      -- transaction's notices in the order sent, and transactions in commit
      -- order). A token: r:<digest>:<id>:<ms>:<position>, readable by older
      -- replicas, which ignore the fourth field. A legacy jti: l:<position>
      -- (nothing cached to evict, but the position keeps the sequence gapless).
      FOR i IN 1 .. n LOOP
        PERFORM pg_notify(p_channel,
          CASE WHEN p_digests[i] IS NULL THEN 'l:' || (last - n + i)::text
               ELSE 'r:' || encode(p_digests[i], 'base64') || ':' || p_ids[i] || ':' || ms || ':' || (last - n + i)::text END);
      END LOOP;
      RETURN last;
    END
    $fn$`,
  sql`
    CREATE FUNCTION log_token_revocation() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
      -- 'token_revocations' is REVOCATION_CHANNEL (storage/revocation-channel.ts).
      PERFORM log_revocations('token', ARRAY[NEW.id::text], ARRAY[NEW.digest], 'token_revocations');
      RETURN NULL;
    END
    $fn$`,
  // Only the NULL → time transition: revocation is never undone, and other
  // updates (last-used times, the hot bookkeeping write) never fire it.
  sql`
    CREATE TRIGGER tokens_revocation_logged AFTER UPDATE OF revoked_at ON tokens
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION log_token_revocation()`,
  sql`
    CREATE FUNCTION log_legacy_revocation() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
      PERFORM log_revocations('legacy_jti', ARRAY[NEW.jti], ARRAY[]::bytea[], 'token_revocations');
      RETURN NULL;
    END
    $fn$`,
  // ON CONFLICT DO NOTHING inserts nothing for a repeat, and fires nothing.
  sql`
    CREATE TRIGGER legacy_revocation_logged AFTER INSERT ON legacy_jwt_revocations
    FOR EACH ROW EXECUTE FUNCTION log_legacy_revocation()`,
  sql`
    CREATE FUNCTION prune_revocation_log(p_cutoff timestamptz, p_limit integer)
    RETURNS integer LANGUAGE plpgsql VOLATILE AS $fn$
    DECLARE
      removed integer;
      highest bigint;
    BEGIN
      WITH doomed AS (
        SELECT position FROM revocation_log WHERE logged_at < p_cutoff ORDER BY position LIMIT p_limit
      ), gone AS (
        DELETE FROM revocation_log USING doomed WHERE revocation_log.position = doomed.position RETURNING revocation_log.position
      )
      SELECT count(*), max(position) INTO removed, highest FROM gone;
      IF removed > 0 THEN
        -- GREATEST: several replicas may prune at once; the mark never moves back.
        UPDATE revocation_log_counter SET pruned_through = GREATEST(pruned_through, highest) WHERE singleton;
      END IF;
      RETURN removed;
    END
    $fn$`,
];

const DOWN = [
  sql`DROP TRIGGER legacy_revocation_logged ON legacy_jwt_revocations`,
  sql`DROP TRIGGER tokens_revocation_logged ON tokens`,
  sql`DROP FUNCTION log_legacy_revocation`,
  sql`DROP FUNCTION log_token_revocation`,
  sql`DROP FUNCTION prune_revocation_log`,
  sql`DROP FUNCTION log_revocations`,
  sql`DROP TABLE revocation_log`,
  sql`DROP TABLE revocation_log_counter`,
];

/** Applies this migration. `Kysely<any>` as every migration: it must not depend on today's schema types. */
export async function up(db: Kysely<any>): Promise<void> {
  for (const statement of UP) await statement.execute(db);
}

/** Reverts this migration. */
export async function down(db: Kysely<any>): Promise<void> {
  for (const statement of DOWN) await statement.execute(db);
}
