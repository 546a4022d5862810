/**
 * The revocation log (migration 0009) on Kysely: read everything after a
 * position, and prune by age. Written only by the revoking statements
 * themselves (`log_revocations`, called from the token and legacy stores),
 * so an entry exists exactly when its revocation committed.
 */
import { sql } from "kysely";
import type { Kysely } from "kysely";
import type { RevocationLog, RevocationLogEntry, RevocationLogPage } from "../domain/revocation-hub.js";
import { translatingErrors } from "./errors.js";
import type { Database } from "./schema.js";

interface Row {
  head: string | number;
  pruned_through: string | number;
  position: string | number | null;
  kind: string | null;
  subject_id: string | null;
  digest: Uint8Array | null;
}

/** `RevocationLog` on the `revocation_log` table. Every failure surfaces as a `TokenError`. */
export class KyselyRevocationLog implements RevocationLog {
  /** @param db the handle from `openDatabase`, already migrated */
  constructor(private readonly db: Kysely<Database>) {}

  /**
   * One statement, so one snapshot: the head and pruning mark describe
   * exactly the entries returned. Positions commit in order (see migration
   * 0009), so no entry at or below the head can appear later.
   */
  readAfter(position: number, limit: number): Promise<RevocationLogPage> {
    return translatingErrors(async () => {
      const { rows } = await sql<Row>`
        SELECT c.position AS head, c.pruned_through, l.position, l.kind, l.subject_id, l.digest
        FROM revocation_log_counter c
        LEFT JOIN LATERAL (
          SELECT position, kind, subject_id, digest FROM revocation_log
          WHERE position > ${position} ORDER BY position LIMIT ${limit}
        ) l ON true
        WHERE c.singleton
        ORDER BY l.position`.execute(this.db);
      const first = rows[0];
      if (first === undefined) return { entries: [], head: 0, prunedThrough: 0 };
      const entries: RevocationLogEntry[] = [];
      for (const row of rows) {
        if (row.position === null || row.subject_id === null) continue;
        entries.push({
          position: Number(row.position),
          kind: row.kind === "legacy_jti" ? "legacy_jti" : "token",
          id: row.subject_id,
          key: row.digest === null ? undefined : Buffer.from(row.digest).toString("base64"),
        });
      }
      return { entries, head: Number(first.head), prunedThrough: Number(first.pruned_through) };
    });
  }

  /** One bounded DELETE (and the pruning mark) per call; safe with several replicas pruning at once. */
  prune(cutoff: Date, limit: number): Promise<number> {
    return translatingErrors(async () => {
      const { rows } = await sql<{ removed: number | string }>`SELECT prune_revocation_log(${cutoff}, ${limit}::integer) AS removed`.execute(this.db);
      return Number(rows[0]?.removed ?? 0);
    });
  }
}
