/**
 * `SecurityEventStore` on Kysely: folded security events in the
 * `security_events` table, written in chunks and pruned in batches. Runs unchanged on PostgreSQL and PGlite.
 */
import type { Insertable, Kysely, Selectable } from "kysely";
import type { SecurityEventType, SecurityEventRow, Severity } from "../domain/model.js";
import type { SecurityEventQuery, SecurityEventStore } from "../domain/ports.js";
import { translatingErrors } from "./errors.js";
import type { Database, SecurityEventsTable } from "./schema.js";

/**
 * Rows per INSERT. PostgreSQL takes at most 65,535 bind parameters per
 * statement (the Bind message counts them in 16 bits); a larger multi-row
 * INSERT fails with SQLSTATE 08P01. 1,000 rows × 21 columns stays far below.
 */
export const ROWS_PER_STATEMENT = 1_000;

/** Severity order, matching the generated `severity_rank` column of migration 0001. */
const SEVERITY_RANK: Readonly<Record<Severity, number>> = Object.freeze({ info: 1, warning: 2, critical: 3 });

/** Security event persistence. Every failure surfaces as a `TokenError`. */
export class KyselySecurityEventStore implements SecurityEventStore {
  /** @param db the handle from `openDatabase`, already migrated */
  constructor(private readonly db: Kysely<Database>) {}

  /**
   * One multi-row INSERT per {@link ROWS_PER_STATEMENT} rows; nothing is
   * sent for an empty batch. Each statement commits on its own and skips ids
   * already stored, so a batch retried after an outage cut it half-way
   * stores every row exactly once.
   */
  insertMany(rows: readonly SecurityEventRow[]): Promise<void> {
    return translatingErrors(async () => {
      for (let start = 0; start < rows.length; start += ROWS_PER_STATEMENT) {
        const chunk = rows.slice(start, start + ROWS_PER_STATEMENT).map(toRow);
        await this.db
          .insertInto("security_events")
          .values(chunk)
          .onConflict((oc) => oc.column("id").doNothing())
          .execute();
      }
    });
  }

  /**
   * Deletes up to `limit` rows last seen before `cutoff`, found through the
   * `last_seen` index. `FOR UPDATE SKIP LOCKED` lets replicas prune at the
   * same time without waiting on or failing over each other's rows; a row
   * deleted by another replica is simply not found.
   */
  pruneBefore(cutoff: Date, limit: number): Promise<number> {
    return translatingErrors(async () => {
      if (limit <= 0) return 0;
      const result = await this.db
        .deleteFrom("security_events")
        .where("id", "in", (eb) =>
          eb.selectFrom("security_events").select("id").where("last_seen", "<", cutoff).limit(limit).forUpdate().skipLocked(),
        )
        .executeTakeFirst();
      return Number(result.numDeletedRows);
    });
  }

  /** Keyset pagination on (first_seen, id), newest first. */
  list(query: SecurityEventQuery): Promise<SecurityEventRow[]> {
    return translatingErrors(async () => {
      if (query.limit <= 0) return [];
      let select = this.db.selectFrom("security_events").selectAll();
      if (query.type !== undefined) select = select.where("type", "=", query.type);
      if (query.minSeverity !== undefined) select = select.where("severity_rank", ">=", SEVERITY_RANK[query.minSeverity]);
      if (query.since !== undefined) select = select.where("last_seen", ">=", query.since);
      const after = query.after;
      if (after !== undefined) {
        select = select.where((eb) => eb(eb.refTuple("first_seen", "id"), "<", eb.tuple(after.firstSeen, after.id)));
      }
      const rows = await select.orderBy("first_seen", "desc").orderBy("id", "desc").limit(query.limit).execute();
      return rows.map(toEvent);
    });
  }
}

function toRow(event: SecurityEventRow): Insertable<SecurityEventsTable> {
  return {
    id: event.id,
    type: event.type,
    severity: event.severity,
    first_seen: event.firstSeen,
    last_seen: event.lastSeen,
    count: event.count,
    service_environment: event.serviceEnvironment,
    token_environment: event.tokenEnvironment ?? null,
    caller_token_id: event.callerTokenId ?? null,
    caller_subject: event.callerSubject ?? null,
    peer: event.peer ?? null,
    user_agent: event.userAgent ?? null,
    token_hint: event.tokenHint ?? null,
    token_id: event.tokenId ?? null,
    method: event.method ?? null,
    message: event.message,
    token_hint_sample: event.tokenHintSample ? [...event.tokenHintSample] : null,
    distinct_token_hints: event.distinctTokenHints ?? null,
    user_agent_sample: event.userAgentSample ? [...event.userAgentSample] : null,
    distinct_user_agents: event.distinctUserAgents ?? null,
    folded_sources: event.foldedSources ?? null,
  };
}

/** Maps a row back; absent optional fields are left out rather than set to undefined. */
function toEvent(row: Selectable<SecurityEventsTable>): SecurityEventRow {
  return {
    id: row.id,
    // The column is free text so new event types need no migration; only this service writes it.
    type: row.type as SecurityEventType,
    severity: row.severity,
    message: row.message,
    serviceEnvironment: row.service_environment,
    firstSeen: row.first_seen,
    lastSeen: row.last_seen,
    // bigint: a string from pg, a number from PGlite. Counts stay far below 2^53.
    count: Number(row.count),
    ...(row.token_environment !== null && { tokenEnvironment: row.token_environment }),
    ...(row.caller_token_id !== null && { callerTokenId: row.caller_token_id }),
    ...(row.caller_subject !== null && { callerSubject: row.caller_subject }),
    ...(row.peer !== null && { peer: row.peer }),
    ...(row.user_agent !== null && { userAgent: row.user_agent }),
    ...(row.token_hint !== null && { tokenHint: row.token_hint }),
    ...(row.token_id !== null && { tokenId: row.token_id }),
    ...(row.method !== null && { method: row.method }),
    ...(row.token_hint_sample !== null && { tokenHintSample: row.token_hint_sample }),
    ...(row.distinct_token_hints !== null && { distinctTokenHints: row.distinct_token_hints }),
    ...(row.user_agent_sample !== null && { userAgentSample: row.user_agent_sample }),
    ...(row.distinct_user_agents !== null && { distinctUserAgents: row.distinct_user_agents }),
    ...(row.folded_sources !== null && { foldedSources: row.folded_sources }),
  };
}
