/**
 * Digest lookups on a PostgreSQL streaming replica (hot standby), for cache
 * misses (`DATABASE_READ_URL`). Each read returns the rows together with the
 * standby's revocation log head, in one statement and so one snapshot: the
 * caller (domain/replica-reads.ts) uses a row only when that head covers
 * every revocation its replica of the service has applied.
 */
import type { Selectable } from "kysely";
import type { ReplicaLookup, ReplicaReads } from "../domain/replica-reads.js";
import type { ReadReplicaPool } from "./database.js";
import { translateStoreError } from "./errors.js";
import type { TokensTable } from "./schema.js";
import { toRecord } from "./token-store.js";

/** Most digests looked up in one query (as on the primary). */
const MAX_LOOKUP_BATCH = 128;

/** A digest lookup waiting for its batch. */
interface PendingLookup {
  readonly digest: Buffer;
  resolve(lookup: ReplicaLookup): void;
  reject(error: unknown): void;
}

/** A token row (or all NULLs) beside the replica's log head. */
type Row = { replica_position: string | number } & { [K in keyof Selectable<TokensTable>]: Selectable<TokensTable>[K] | null };

/*
 * The counter row is the log's head (migration 0009): positions commit in
 * order under its lock, so a snapshot that sees head H holds every
 * revocation up to H. LEFT JOIN: the head comes back even when no token
 * matches. Both run on the unique digest index like the primary's lookup.
 */
const ONE = `SELECT c.position AS replica_position, t.* FROM revocation_log_counter c LEFT JOIN tokens t ON t.digest = $1 WHERE c.singleton`;
const MANY = `SELECT c.position AS replica_position, t.* FROM revocation_log_counter c LEFT JOIN tokens t ON t.digest = ANY($1::bytea[]) WHERE c.singleton`;

/** `ReplicaReads` on a standby's pool, with named prepared statements and per-turn batching. */
export class PgReplicaReads implements ReplicaReads {
  /** The lookups of the current turn, not yet sent. */
  private lookups: PendingLookup[] | undefined;

  constructor(private readonly pool: ReadReplicaPool) {}

  /**
   * Lookups arriving in the same turn of the event loop share one query, as
   * on the primary (storage/token-store.ts).
   */
  findByDigest(digest: Uint8Array): Promise<ReplicaLookup> {
    return new Promise((resolve, reject) => {
      let batch = this.lookups;
      if (batch === undefined || batch.length >= MAX_LOOKUP_BATCH) {
        batch = this.lookups = [];
        const pending = batch;
        setImmediate(() => void this.lookUp(pending));
      }
      batch.push({ digest: Buffer.from(digest.buffer, digest.byteOffset, digest.byteLength), resolve, reject });
    });
  }

  /** Resolves when the replica answers `SELECT 1`. */
  async ping(): Promise<void> {
    try {
      await this.pool.ping();
    } catch (error) {
      throw translateStoreError(error);
    }
  }

  private async lookUp(batch: PendingLookup[]): Promise<void> {
    if (this.lookups === batch) this.lookups = undefined;
    try {
      const rows =
        batch.length === 1
          ? await this.pool.prepared<Row>("replica_tokens_by_digest", ONE, [batch[0]!.digest])
          : await this.pool.prepared<Row>("replica_tokens_by_digests", MANY, [batch.map((b) => b.digest)]);
      const first = rows[0];
      // The counter row exists from migration 0009 on; without it nothing here can be proven.
      if (first === undefined) throw new Error("the read replica has no revocation log counter (not migrated to 0009?)");
      const position = Number(first.replica_position);
      const byDigest = new Map<string, Row>();
      for (const row of rows) if (row.digest !== null) byDigest.set(Buffer.from(row.digest).toString("base64"), row);
      for (const lookup of batch) {
        const row = byDigest.get(lookup.digest.toString("base64"));
        lookup.resolve({ record: row === undefined ? undefined : toRecord(row as Selectable<TokensTable>), position });
      }
    } catch (error) {
      const translated = translateStoreError(error);
      for (const lookup of batch) lookup.reject(translated);
    }
  }
}
