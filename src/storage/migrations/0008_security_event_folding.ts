/**
 * Security events folded by actor rather than by presented token (issue 8):
 * columns for what a folded row keeps of the values it merged, and an index
 * on `last_seen` for retention pruning (and the `since` filter).
 *
 * All new columns are nullable, so adding them rewrites no existing row.
 */
import { sql } from "kysely";
import type { Kysely } from "kysely";

const UP = [
  sql`
    ALTER TABLE security_events
      ADD COLUMN token_hint_sample    text[]  NULL,
      ADD COLUMN distinct_token_hints integer NULL,
      ADD COLUMN user_agent_sample    text[]  NULL,
      ADD COLUMN distinct_user_agents integer NULL,
      ADD COLUMN folded_sources       integer NULL`,
  sql`CREATE INDEX security_events_last_seen_idx ON security_events (last_seen)`,
];

const DOWN = [
  sql`DROP INDEX security_events_last_seen_idx`,
  sql`
    ALTER TABLE security_events
      DROP COLUMN token_hint_sample,
      DROP COLUMN distinct_token_hints,
      DROP COLUMN user_agent_sample,
      DROP COLUMN distinct_user_agents,
      DROP COLUMN folded_sources`,
];

/** Adds the columns and the index. `Kysely<any>` as every migration (see 0001). */
export async function up(db: Kysely<any>): Promise<void> {
  for (const statement of UP) await statement.execute(db);
}

/** Removes them. */
export async function down(db: Kysely<any>): Promise<void> {
  for (const statement of DOWN) await statement.execute(db);
}
