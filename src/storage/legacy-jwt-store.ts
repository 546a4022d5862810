/**
 * `LegacyJwtStore` on Kysely: revoked legacy `jti`s and who still uses legacy JWTs.
 */
import { sql } from "kysely";
import type { Kysely } from "kysely";
import type { LegacyJwtStore, LegacyUsage } from "../domain/ports.js";
import { translatingErrors } from "./errors.js";
import type { Database } from "./schema.js";

/** Legacy JWT persistence. Every failure surfaces as a `TokenError`. */
export class KyselyLegacyJwtStore implements LegacyJwtStore {
  /** @param db the handle from `openDatabase`, already migrated */
  constructor(private readonly db: Kysely<Database>) {}

  /** Whether this `jti` was revoked. */
  isRevoked(jti: string): Promise<boolean> {
    return translatingErrors(async () => {
      const row = await this.db.selectFrom("legacy_jwt_revocations").select("jti").where("jti", "=", jti).executeTakeFirst();
      return row !== undefined;
    });
  }

  /** Records a revoked `jti`; a second revocation keeps the first record. */
  revoke(jti: string, r: { by: string; reason: string; at: Date; expiresAt: Date | null }): Promise<{ alreadyRevoked: boolean }> {
    return translatingErrors(async () => {
      // The row trigger of migration 0009 logs (and notifies) it in the same
      // statement; a repeat inserts nothing and logs nothing.
      const inserted = await this.db
        .insertInto("legacy_jwt_revocations")
        .values({ jti, revoked_at: r.at, revoked_by: r.by, revoke_reason: r.reason, expires_at: r.expiresAt })
        .onConflict((oc) => oc.column("jti").doNothing())
        .returning("jti")
        .executeTakeFirst();
      return { alreadyRevoked: inserted === undefined };
    });
  }

  /** Adds folded usage counts: one statement for the batch. */
  recordUsage(batch: readonly LegacyUsage[]): Promise<void> {
    if (batch.length === 0) return Promise.resolve();
    return translatingErrors(async () => {
      // Sorted so concurrent replicas lock rows in the same order (no deadlock).
      const rows = [...batch].sort((a, b) => (a.subject < b.subject ? -1 : a.subject > b.subject ? 1 : 0));
      await sql`
        INSERT INTO legacy_jwt_usage (subject, introspections, first_seen, last_seen)
        SELECT * FROM unnest(${rows.map((r) => r.subject)}::text[], ${rows.map((r) => r.count)}::bigint[],
                             ${rows.map((r) => r.firstSeen)}::timestamptz[], ${rows.map((r) => r.lastSeen)}::timestamptz[])
        ON CONFLICT (subject) DO UPDATE SET
          introspections = legacy_jwt_usage.introspections + EXCLUDED.introspections,
          first_seen = LEAST(legacy_jwt_usage.first_seen, EXCLUDED.first_seen),
          last_seen = GREATEST(legacy_jwt_usage.last_seen, EXCLUDED.last_seen)`.execute(this.db);
    });
  }

  /** Usage per subject, most recently seen first, keyset on (last_seen, subject). */
  listUsage(query: { limit: number; after?: { lastSeen: Date; subject: string } }): Promise<LegacyUsage[]> {
    return translatingErrors(async () => {
      let q = this.db.selectFrom("legacy_jwt_usage").selectAll();
      const after = query.after;
      if (after) {
        q = q.where((eb) => eb.or([eb("last_seen", "<", after.lastSeen), eb.and([eb("last_seen", "=", after.lastSeen), eb("subject", "<", after.subject)])]));
      }
      const rows = await q.orderBy("last_seen", "desc").orderBy("subject", "desc").limit(query.limit).execute();
      return rows.map((row) => ({ subject: row.subject, count: Number(row.introspections), firstSeen: row.first_seen, lastSeen: row.last_seen }));
    });
  }
}
