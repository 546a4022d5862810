/**
 * `TokenStore` on Kysely: the only code that knows how tokens are laid out in
 * SQL. Runs unchanged on PostgreSQL and PGlite.
 */
import { sql } from "kysely";
import type { Kysely, Selectable } from "kysely";
import { TokenError } from "../domain/errors.js";
import type { Environment } from "../domain/environment.js";
import type { TokenRecord } from "../domain/model.js";
import type {
  BulkRevocation,
  CascadeOutcome,
  LifecycleStore,
  NewToken,
  Revocation,
  RevokeOneOutcome,
  RevokeOutcome,
  RevokeTarget,
  TokenListQuery,
  TokenSelector,
  TokenStore,
} from "../domain/ports.js";
import { translateStoreError, translatingErrors } from "./errors.js";
import { CAP_REACHED_SQLSTATE } from "./migrations/0004_capped_insert.js";
import { ISSUER_REVOKED_SQLSTATE } from "./migrations/0006_issued_by.js";
import type { BulkRevocationsTable, Database, TokensTable } from "./schema.js";
import type { OpenedDatabase } from "./database.js";

/** Most digests looked up in one query. */
const MAX_LOOKUP_BATCH = 128;

/**
 * Most digest lookup queries out at once (of the pool's connections; writes
 * keep their own share, see domain/write-gate.ts). More misses wait for a
 * query to finish and then go together in the next one.
 */
const MAX_LOOKUP_QUERIES = 4;

/** A timestamp as epoch milliseconds, truncated as `pg`'s own Date parsing truncates microseconds. */
const epochMs = (column: string) => `floor(extract(epoch FROM ${column}) * 1000)::float8`;

/**
 * A token record as one JSON array, for the digest lookups (the miss path):
 * every field of the record in a fixed order (`recordFromJson`), times as
 * epoch milliseconds, without the digest (the lookup has it) and with last
 * use from its own table (migration 0012), the later of it and the old
 * column. One `json` column instead of 27 typed ones: `pg` then makes one
 * `JSON.parse` per row instead of a parser call per column, and no
 * timestamptz text goes through `pg-types`' date parsing. Measured on the
 * service's table, 32 lookups in flight batched per turn: client CPU per
 * lookup about a third lower, PostgreSQL's about the same.
 */
const RECORD_JSON = `json_build_array(t.id, t.display_hint, t.name, t.subject, t.full_name, t.teams, t.scopes, t.namespaces, t.is_admin,
  t.metadata, t.environment, ${epochMs("t.created_at")}, t.created_by, t.issued_by_token_id, ${epochMs("t.expires_at")},
  ${epochMs("GREATEST(t.last_used_at, u.last_used_at)")}, ${epochMs("t.revoked_at")}, t.revoked_by, t.revoke_reason,
  t.allowed_networks, t.rate_limit_requests, t.rate_limit_window_ms,
  t.predecessor_id, t.successor_id, ${epochMs("t.scheduled_revoke_at")}, t.revoke_on_successor_use, ${epochMs("t.successor_used_at")})`;

/** One digest. */
const BY_DIGEST = `SELECT ${RECORD_JSON} AS r FROM tokens t LEFT JOIN token_last_used u ON u.token_id = t.id WHERE t.digest = $1`;

/** Several digests; each row says which (1-based position in the array). */
const BY_DIGESTS = `SELECT d.i, ${RECORD_JSON} AS r
  FROM unnest($1::bytea[]) WITH ORDINALITY AS d(digest, i)
  JOIN tokens t ON t.digest = d.digest
  LEFT JOIN token_last_used u ON u.token_id = t.id`;

/** Revokes one token and returns the outcome with the token's row (migration 0014). */
const REVOKE_ONE = `SELECT r.outcome, (r.token).* FROM revoke_token_v1($1::uuid, $2::bytea, $3::text, $4::text, $5::timestamptz, $6::text, $7::text) r`;

/** A row of `revoke_token_v1`: the token's columns (all NULL with `other_subject`) and the outcome. */
type RevokedRow = Selectable<TokensTable> & { readonly outcome: "revoked" | "already_revoked" | "other_subject" };

/** A row of `RECORD_JSON` as `pg` parses it (JSON.parse of a `json` column). */
type RecordJson = [
  id: string, displayHint: string, name: string, subject: string, fullName: string, teams: string[], scopes: string[], namespaces: string[], isAdmin: boolean,
  metadata: Record<string, string>, environment: Environment, createdAt: number, createdBy: string, issuedByTokenId: string | null, expiresAt: number | null,
  lastUsedAt: number | null, revokedAt: number | null, revokedBy: string | null, revokeReason: string | null,
  allowedNetworks: string[], rateLimitRequests: number | null, rateLimitWindowMs: number | null,
  predecessorId: string | null, successorId: string | null, scheduledRevokeAt: number | null, revokeOnSuccessorUse: boolean, successorUsedAt: number | null,
];

/** A row read column by column without its digest (the read replica's lookups). */
type LookedUpRow = Omit<Selectable<TokensTable>, "digest">;

/** A digest lookup waiting for its batch. */
interface PendingLookup {
  readonly digest: Buffer;
  resolve(record: TokenRecord | undefined): void;
  reject(error: unknown): void;
}

/** The canonical textual UUID form. Anything else is not an id we issued. */
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Whether `id` is a UUID PostgreSQL will accept, so a bad id is "not found", not a cast error. */
export function isUuid(id: string): boolean {
  return UUID.test(id);
}

/** Token persistence in the `tokens` table. Every failure surfaces as a {@link TokenError}. */
export class KyselyTokenStore implements TokenStore, LifecycleStore {
  /** @param db the handle from `openDatabase`, already migrated */
  /**
   * @param prepared when given (from `openDatabase`), the digest lookup, the
   *   hottest read, runs as a named prepared statement instead of through the
   *   query builder
   */
  constructor(
    private readonly db: Kysely<Database>,
    private readonly prepared?: OpenedDatabase["prepared"],
  ) {}

  /**
   * Inserts under a per-subject advisory lock held until commit, so two
   * concurrent issues for one subject cannot both pass the count; lock,
   * count and insert run in one call (see migrations 0004 and 0006). The
   * count covers the token's own environment only, and the issuing token is
   * re-checked (not revoked) under a row lock in the same call.
   */
  async insert(token: NewToken, limits: { readonly maxActivePerSubject: number; readonly now: Date }): Promise<TokenRecord> {
    try {
      const values = [
        token.id, token.digest, token.displayHint, token.name, token.subject, token.fullName,
        [...token.teams], [...token.scopes], [...token.namespaces], token.isAdmin,
        JSON.stringify(token.metadata), token.environment, token.createdAt, token.createdBy, token.expiresAt,
        token.issuedByTokenId, Math.min(limits.maxActivePerSubject, Number.MAX_SAFE_INTEGER), limits.now,
        [...(token.allowedNetworks ?? [])], token.rateLimit?.requests ?? null, token.rateLimit?.windowMs ?? null,
      ];
      const text = `SELECT * FROM insert_token_capped_v3($1, $2, $3, $4, $5, $6, $7::text[], $8::text[], $9::text[], $10, $11::jsonb, $12, $13, $14, $15, $16::uuid, $17, $18, $19::text[], $20::integer, $21::integer)`;
      const rows = this.prepared
        ? await this.prepared<Selectable<TokensTable>>("insert_token_capped_v3", text, values)
        : (await sql<Selectable<TokensTable>>`SELECT * FROM insert_token_capped_v3(${values[0]}, ${values[1]}, ${values[2]}, ${values[3]}, ${values[4]}, ${values[5]}, ${values[6]}::text[], ${values[7]}::text[], ${values[8]}::text[], ${values[9]}, ${values[10]}::jsonb, ${values[11]}, ${values[12]}, ${values[13]}, ${values[14]}, ${values[15]}::uuid, ${values[16]}, ${values[17]}, ${values[18]}::text[], ${values[19]}::integer, ${values[20]}::integer)`.execute(this.db)).rows;
      const row = rows[0];
      if (row === undefined) throw new TokenError("internal", "internal error", { cause: new Error("insert_token_capped returned no row") });
      return toRecord(row);
    } catch (error) {
      if ((error as { code?: unknown }).code === CAP_REACHED_SQLSTATE) {
        const held = Number((error as Error).message);
        throw new TokenError("resource_exhausted", `subject already holds ${held} active tokens, the most allowed; revoke some first`);
      }
      if ((error as { code?: unknown }).code === ISSUER_REVOKED_SQLSTATE) {
        // The caller authenticated (perhaps from a replica's cache) just before its token was revoked.
        throw new TokenError("unauthenticated", "caller credential refused: the token was revoked");
      }
      throw translateStoreError(error);
    }
  }


  /** Looks a token up by its digest: the introspection hot path, one index probe. */
  findByDigest(digest: Uint8Array): Promise<TokenRecord | undefined> {
    if (this.prepared === undefined) {
      return translatingErrors(async () => {
        const row = await this.db.selectFrom("tokens").selectAll().where("digest", "=", digest).executeTakeFirst();
        return row === undefined ? undefined : (await recordsOf(this.db, [row]))[0];
      });
    }
    // Lookups share queries: those arriving in the same turn of the event
    // loop, and all that arrive while `MAX_LOOKUP_QUERIES` queries are out.
    // Each query costs a socket write (a loopback writev that runs the
    // receiving side's TCP path too: 12 % of the service's busy time under
    // misses when every turn's few misses went out as their own query and
    // waited in the pool's queue), a round trip and PostgreSQL's per-statement
    // work; under load the batches grow instead of the queries.
    return new Promise((resolve, reject) => {
      this.waiting.push({ digest: Buffer.from(digest.buffer, digest.byteOffset, digest.byteLength), resolve, reject });
      this.scheduleLookups();
    });
  }

  /** Lookups not yet sent. */
  private waiting: PendingLookup[] = [];
  /** Whether a send of `waiting` is scheduled for the next turn. */
  private lookupScheduled = false;
  /** Lookup queries out now. */
  private lookupQueries = 0;

  /** Sends the waiting lookups at the end of this turn, if a query slot is free; else a finishing query will. */
  private scheduleLookups(): void {
    if (this.lookupScheduled || this.lookupQueries >= MAX_LOOKUP_QUERIES || this.waiting.length === 0) return;
    this.lookupScheduled = true;
    setImmediate(() => {
      this.lookupScheduled = false;
      while (this.lookupQueries < MAX_LOOKUP_QUERIES && this.waiting.length > 0) {
        const batch = this.waiting.length <= MAX_LOOKUP_BATCH ? this.waiting : this.waiting.slice(0, MAX_LOOKUP_BATCH);
        this.waiting = batch === this.waiting ? [] : this.waiting.slice(MAX_LOOKUP_BATCH);
        this.lookupQueries++;
        void this.lookUp(batch).finally(() => {
          this.lookupQueries--;
          this.scheduleLookups();
        });
      }
    });
  }

  private async lookUp(batch: PendingLookup[]): Promise<void> {
    try {
      if (batch.length === 1) {
        const lookup = batch[0]!;
        const rows = await this.prepared!<{ readonly r: RecordJson }>("token_by_digest_v3", BY_DIGEST, [lookup.digest]);
        const row = rows[0];
        lookup.resolve(row === undefined ? undefined : recordFromJson(row.r, lookup.digest));
        return;
      }
      // Rows come back tagged with their digest's position in the array, so
      // they are matched without reading (and re-encoding) the digest column.
      const rows = await this.prepared!<{ readonly i: string | number; readonly r: RecordJson }>("tokens_by_digests_v3", BY_DIGESTS, [batch.map((b) => b.digest)]);
      const found: (RecordJson | undefined)[] = new Array<RecordJson | undefined>(batch.length);
      for (const row of rows) found[Number(row.i) - 1] = row.r;
      for (let i = 0; i < batch.length; i++) {
        const lookup = batch[i]!;
        const row = found[i];
        lookup.resolve(row === undefined ? undefined : recordFromJson(row, lookup.digest));
      }
    } catch (error) {
      const translated = translateStoreError(error);
      for (const lookup of batch) lookup.reject(translated);
    }
  }

  /** Looks a token up by id; undefined, not an error, for a string that is not a UUID. */
  findById(id: string): Promise<TokenRecord | undefined> {
    return translatingErrors(() => this.selectById(id));
  }

  /** `revokeOne` by id in any environment, for every subject. */
  async revoke(id: string, revocation: { readonly by: string; readonly reason: string; readonly at: Date }): Promise<RevokeOutcome | undefined> {
    const outcome = await this.revokeOne({ id, environment: null }, revocation);
    // Without a subject to match, every existing token is revoked or already revoked.
    return outcome === "other_subject" ? undefined : outcome;
  }

  /**
   * One call of `revoke_token_v1` (migration 0014): the lookup, the
   * conditional UPDATE (so the first revocation wins and later ones see it)
   * and the read of what the answer shows, in one round trip. One statement,
   * so one transaction: the revocation, its entry in the revocation log and
   * its notice to every replica (LISTEN/NOTIFY), both written by the row
   * trigger of migration 0009, commit together or not at all, and the
   * notice is delivered only once the revocation is durable. It has
   * committed when this resolves.
   */
  revokeOne(
    target: RevokeTarget | { readonly id: string; readonly environment: null },
    revocation: { readonly by: string; readonly reason: string; readonly at: Date },
  ): Promise<RevokeOneOutcome> {
    return translatingErrors(async () => {
      if ("id" in target && !isUuid(target.id)) return undefined;
      const values = [
        "id" in target ? target.id : null,
        "digest" in target ? Buffer.from(target.digest.buffer, target.digest.byteOffset, target.digest.byteLength) : null,
        target.environment,
        ("subject" in target ? target.subject : undefined) ?? null,
        revocation.at,
        revocation.by,
        revocation.reason,
      ];
      const rows = this.prepared
        ? await this.prepared<RevokedRow>("revoke_token_v1", REVOKE_ONE, values)
        : (await sql<RevokedRow>`SELECT r.outcome, (r.token).* FROM revoke_token_v1(${values[0]}::uuid, ${values[1]}::bytea, ${values[2]}::text, ${values[3]}::text, ${values[4]}::timestamptz, ${values[5]}::text, ${values[6]}::text) r`.execute(this.db)).rows;
      const row = rows[0];
      if (row === undefined) return undefined;
      if (row.outcome === "other_subject") return "other_subject";
      return { record: toRecord(row), alreadyRevoked: row.outcome !== "revoked" };
    });
  }

  /**
   * Revokes a token and its descendants in one transaction. Each pass is one
   * statement: a recursive walk down `issued_by_token_id` from the root
   * (through tokens revoked before too: what they issued came from the same
   * authority), row locks on the unrevoked ones taken in id order (so two
   * overlapping cascades cannot deadlock) and the UPDATE. Passes repeat until
   * one revokes nothing: a child whose insert committed after a pass's
   * snapshot but before its locks is caught by the next pass, and a later
   * insert under a locked (or revoked) issuer is refused by the insert
   * itself (migration 0006). Each revoked row gets its revocation log
   * position and its `pg_notify` from the row trigger, exactly as a single
   * revocation does (migration 0009); notices are delivered at commit, once
   * durable. (The trigger takes the log's counter lock in the first pass; a
   * later pass that must wait for a row a concurrent single revocation holds
   * while that one waits for the counter is a deadlock PostgreSQL detects and
   * breaks. It needs a child inserted in the instant between a pass's
   * snapshot and its locks, revoked alone at that same instant.)
   */
  revokeCascade(id: string, revocation: { readonly by: string; readonly reason: string; readonly at: Date }): Promise<CascadeOutcome | undefined> {
    return translatingErrors(async () => {
      if (!isUuid(id)) return undefined;
      return this.db.transaction().execute(async (trx) => {
        const revoked = new Map<string, Selectable<TokensTable>>();
        for (;;) {
          const { rows } = await sql<Selectable<TokensTable>>`
            WITH RECURSIVE tree (id, environment) AS (
              SELECT id, environment FROM tokens WHERE id = ${id}
              UNION
              SELECT child.id, child.environment FROM tokens child
              JOIN tree ON child.issued_by_token_id = tree.id AND child.environment = tree.environment
            ),
            locked AS (
              SELECT tokens.id FROM tokens JOIN tree ON tokens.id = tree.id
              WHERE tokens.revoked_at IS NULL
              ORDER BY tokens.id
              FOR UPDATE OF tokens
            ),
            revoked AS (
              UPDATE tokens SET revoked_at = ${revocation.at}, revoked_by = ${revocation.by}, revoke_reason = ${revocation.reason}
              FROM locked
              WHERE tokens.id = locked.id AND tokens.revoked_at IS NULL
              RETURNING tokens.*
            )
            SELECT revoked.* FROM revoked`.execute(trx);
          for (const row of rows) revoked.set(row.id, row);
          if (rows.length === 0) break;
        }
        const rootRevoked = revoked.get(id);
        const rootRow = rootRevoked ?? (await trx.selectFrom("tokens").selectAll().where("id", "=", id).executeTakeFirst());
        if (rootRow === undefined) return undefined;
        revoked.delete(id);
        const [root, ...descendants] = await recordsOf(trx, [rootRow, ...revoked.values()]);
        return { root: { record: root!, alreadyRevoked: rootRevoked === undefined }, descendants };
      });
    });
  }

  /**
   * Keyset pagination on (created_at, id), which the indexes serve in order.
   * Always within one environment: environments may share a store.
   */
  list(query: TokenListQuery): Promise<TokenRecord[]> {
    return translatingErrors(async () => {
      if (query.limit <= 0) return [];
      let select = this.db.selectFrom("tokens").selectAll().where("environment", "=", query.environment);
      if (query.subject !== undefined) select = select.where("subject", "=", query.subject);
      if (query.issuedByTokenId !== undefined) {
        // Not a UUID: no token can have been issued by it (and the cast would fail).
        if (!isUuid(query.issuedByTokenId)) return [];
        select = select.where("issued_by_token_id", "=", query.issuedByTokenId);
      }
      if (query.team !== undefined) {
        // `@>` rather than `= ANY(teams)` so the GIN index on teams can serve it.
        select = select.where("teams", "@>", sql<string[]>`ARRAY[${query.team}]::text[]`);
      }
      if (!query.includeRevoked) select = select.where("revoked_at", "is", null);
      if (!query.includeExpired) {
        select = select.where((eb) => eb.or([eb("expires_at", "is", null), eb("expires_at", ">", query.now)]));
      }
      const after = query.after;
      if (after !== undefined) {
        select = select.where((eb) => eb(eb.refTuple("created_at", "id"), "<", eb.tuple(after.createdAt, after.id)));
      }
      const rows = await select.orderBy("created_at", "desc").orderBy("id", "desc").limit(query.limit).execute();
      return recordsOf(this.db, rows);
    });
  }

  /**
   * One upsert for the whole batch into `token_last_used` (migration 0012),
   * never into `tokens`: bookkeeping must not rewrite a token's row and its
   * indexes. A time only moves forward, and rows whose stored time is
   * already as late are not rewritten (no dead tuple for nothing). Ids of no
   * stored token are skipped.
   */
  touchLastUsed(entries: ReadonlyMap<string, Date>): Promise<void> {
    return translatingErrors(async () => {
      // Ids not shaped like UUIDs cannot match a row, and one would fail the whole cast.
      // Sorting gives concurrent batches (several instances) the same lock order.
      const batch = [...entries].filter(([id]) => isUuid(id)).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
      if (batch.length === 0) return;
      const ids = batch.map(([id]) => id);
      const ats = batch.map(([, at]) => at);
      await sql`
        INSERT INTO token_last_used (token_id, last_used_at)
        SELECT v.id, v.at FROM unnest(${ids}::uuid[], ${ats}::timestamptz[]) AS v(id, at)
        WHERE EXISTS (SELECT 1 FROM tokens WHERE tokens.id = v.id)
        ORDER BY v.id
        ON CONFLICT (token_id) DO UPDATE SET last_used_at = EXCLUDED.last_used_at
        WHERE token_last_used.last_used_at < EXCLUDED.last_used_at`.execute(this.db);
    });
  }

  // ---- Rotation and bulk revocation (issue 13, migration 0010) ----

  /**
   * Both updates in one transaction: the old token gains its successor and
   * schedule only while unrevoked and not yet rotated (the condition makes
   * two concurrent rotations of one token leave exactly one successor
   * linked), and the successor names its predecessor.
   */
  linkRotation(
    oldId: string,
    successorId: string,
    link: { readonly scheduledRevokeAt: Date | null; readonly revokeOnSuccessorUse: boolean },
  ): Promise<{ readonly predecessor: TokenRecord; readonly successor: TokenRecord } | undefined> {
    return translatingErrors(async () => {
      if (!isUuid(oldId) || !isUuid(successorId)) return undefined;
      return this.db.transaction().execute(async (trx) => {
        const old = await trx
          .updateTable("tokens")
          .set({ successor_id: successorId, scheduled_revoke_at: link.scheduledRevokeAt, revoke_on_successor_use: link.revokeOnSuccessorUse })
          .where("id", "=", oldId)
          .where("revoked_at", "is", null)
          .where("successor_id", "is", null)
          .returningAll()
          .executeTakeFirst();
        if (old === undefined) return undefined;
        const successor = await trx.updateTable("tokens").set({ predecessor_id: oldId }).where("id", "=", successorId).returningAll().executeTakeFirst();
        if (successor === undefined) return undefined;
        const [predecessor, linked] = await recordsOf(trx, [old, successor]);
        return { predecessor: predecessor!, successor: linked! };
      });
    });
  }

  /** Served by the partial index of migration 0010, which holds only pending schedules. */
  dueRevocations(environment: Environment, now: Date, limit: number): Promise<string[]> {
    return translatingErrors(async () => {
      const rows = await this.db
        .selectFrom("tokens")
        .select("id")
        .where("scheduled_revoke_at", "is not", null)
        .where("scheduled_revoke_at", "<=", now)
        .where("revoked_at", "is", null)
        .where("environment", "=", environment)
        .orderBy("scheduled_revoke_at")
        .limit(limit)
        .execute();
      return rows.map((row) => row.id);
    });
  }

  /**
   * One statement, as `revokeCascade`'s passes: row locks in id order (so
   * overlapping batches cannot deadlock; a replica racing for the same rows
   * waits, then re-reads them and skips the ones revoked meanwhile, so each
   * is revoked once) and the conditional UPDATE; the row trigger of
   * migration 0009 logs and announces each revoked row exactly as a single
   * revocation, delivered at commit.
   */
  revokeMany(ids: readonly string[], revocation: Revocation, options: { readonly dueBy?: Date } = {}): Promise<TokenRecord[]> {
    return translatingErrors(async () => {
      const valid = ids.filter(isUuid);
      if (valid.length === 0) return [];
      return revokeIds(this.db, valid, revocation, options.dueBy);
    });
  }

  /** Served by the partial index of migration 0010: a rotated token in its grace period has a schedule. */
  usedRotations(environment: Environment, limit: number): Promise<TokenRecord[]> {
    return translatingErrors(async () => {
      const rows = await this.db
        .selectFrom("tokens")
        .selectAll()
        .where("scheduled_revoke_at", "is not", null)
        .where("revoked_at", "is", null)
        .where("successor_used_at", "is not", null)
        .where("environment", "=", environment)
        .limit(limit)
        .execute();
      return recordsOf(this.db, rows);
    });
  }

  /** A conditional UPDATE on the predecessor: the link must hold both ways. */
  markSuccessorUsed(predecessorId: string, successorId: string, at: Date): Promise<TokenRecord | undefined> {
    return translatingErrors(async () => {
      if (!isUuid(predecessorId) || !isUuid(successorId)) return undefined;
      const row = await this.db
        .updateTable("tokens")
        .set({ successor_used_at: sql<Date>`COALESCE(successor_used_at, ${at})` })
        .where("id", "=", predecessorId)
        .where("successor_id", "=", successorId)
        .returningAll()
        .executeTakeFirst();
      return row === undefined ? undefined : (await recordsOf(this.db, [row]))[0];
    });
  }

  /** A count and the newest page, with the same predicate the operation's batches use. */
  matching(environment: Environment, selector: TokenSelector, limit: number): Promise<{ readonly count: number; readonly first: TokenRecord[] }> {
    return translatingErrors(async () => {
      const where = selectorWhere(environment, selector, undefined);
      if (where === undefined) return { count: 0, first: [] };
      const counted = await sql<{ total: string | number }>`SELECT count(*) AS total FROM tokens WHERE ${where}`.execute(this.db);
      const first = limit <= 0 ? [] : (await sql<Selectable<TokensTable>>`SELECT * FROM tokens WHERE ${where} ORDER BY created_at DESC, id DESC LIMIT ${limit}`.execute(this.db)).rows;
      return { count: Number(counted.rows[0]?.total ?? 0), first: await recordsOf(this.db, first) };
    });
  }

  /** One row with the selector as columns, so a resuming replica rebuilds the same predicate. */
  createBulkRevocation(operation: BulkRevocation, leaseUntil: Date): Promise<void> {
    return translatingErrors(async () => {
      const s = operation.selector;
      await this.db
        .insertInto("bulk_revocations")
        .values({
          id: operation.id,
          environment: operation.environment,
          subject: s.subject ?? null,
          team: s.team ?? null,
          issued_by_token_id: s.issuedByTokenId ?? null,
          name: s.name ?? null,
          created_before: s.createdBefore ?? null,
          expire_before: s.expireBefore ?? null,
          reason: operation.reason,
          requested_by: operation.requestedBy,
          caller_token_id: operation.callerTokenId,
          started_at: operation.startedAt,
          lease_until: leaseUntil,
          finished_at: null,
        })
        .execute();
    });
  }

  /**
   * The batch's revocations and the operation's count change in one
   * transaction, so the count stays exact however often the batch is
   * interrupted and resumed. The operation's row is locked first: two
   * replicas that both believe they hold it take turns.
   */
  bulkRevokeBatch(id: string, at: Date, limit: number, leaseUntil: Date): Promise<TokenRecord[]> {
    return translatingErrors(async () => {
      if (!isUuid(id)) return [];
      return this.db.transaction().execute(async (trx) => {
        const op = await trx.selectFrom("bulk_revocations").selectAll().where("id", "=", id).forUpdate().executeTakeFirst();
        if (op === undefined || op.finished_at !== null) return [];
        const operation = toBulkRevocation(op);
        const where = selectorWhere(operation.environment, operation.selector, operation.startedAt);
        if (where === undefined) return [];
        const picked = await sql<{ id: string }>`SELECT id FROM tokens WHERE ${where} LIMIT ${limit}`.execute(trx);
        const revoked = picked.rows.length === 0 ? [] : await revokeIds(trx, picked.rows.map((row) => row.id), { by: operation.requestedBy, reason: operation.reason, at });
        await trx
          .updateTable("bulk_revocations")
          .set({ revoked_count: sql<number>`revoked_count + ${revoked.length}`, lease_until: leaseUntil })
          .where("id", "=", id)
          .execute();
        return revoked;
      });
    });
  }

  /** A conditional UPDATE: only the first caller gets the row back, so one event is raised. */
  finishBulkRevocation(id: string, at: Date): Promise<BulkRevocation | undefined> {
    return translatingErrors(async () => {
      if (!isUuid(id)) return undefined;
      const row = await this.db.updateTable("bulk_revocations").set({ finished_at: at }).where("id", "=", id).where("finished_at", "is", null).returningAll().executeTakeFirst();
      return row === undefined ? undefined : toBulkRevocation(row);
    });
  }

  /** `FOR UPDATE SKIP LOCKED`, then a conditional lease: two replicas never take the same operation. */
  claimBulkRevocation(environment: Environment, now: Date, leaseUntil: Date): Promise<BulkRevocation | undefined> {
    return translatingErrors(async () => {
      const { rows } = await sql<Selectable<BulkRevocationsTable>>`
        UPDATE bulk_revocations SET lease_until = ${leaseUntil}
        WHERE id = (
          SELECT id FROM bulk_revocations
          WHERE finished_at IS NULL AND environment = ${environment} AND lease_until < ${now}
          ORDER BY started_at LIMIT 1
          FOR UPDATE SKIP LOCKED
        ) AND lease_until < ${now}
        RETURNING *`.execute(this.db);
      const row = rows[0];
      return row === undefined ? undefined : toBulkRevocation(row);
    });
  }

  /** Counts every token ever stored, revoked and expired included. */
  count(): Promise<number> {
    return translatingErrors(async () => {
      const { total } = await this.db
        .selectFrom("tokens")
        .select((eb) => eb.fn.countAll<string | number>().as("total"))
        .executeTakeFirstOrThrow();
      return Number(total);
    });
  }

  /** Resolves when the database answers `SELECT 1`. */
  ping(): Promise<void> {
    return translatingErrors(async () => {
      await sql`SELECT 1`.execute(this.db);
    });
  }

  private async selectById(id: string): Promise<TokenRecord | undefined> {
    if (!isUuid(id)) return undefined;
    const row = await this.db.selectFrom("tokens").selectAll().where("id", "=", id).executeTakeFirst();
    return row === undefined ? undefined : (await recordsOf(this.db, [row]))[0];
  }
}

/**
 * Records for rows read from `tokens`, with their last use from
 * `token_last_used` (migration 0012) in one more query, the later of it and
 * the old column (still written by replicas of the previous release).
 */
async function recordsOf(db: Kysely<Database>, rows: readonly Selectable<TokensTable>[]): Promise<TokenRecord[]> {
  if (rows.length === 0) return [];
  const used = await db.selectFrom("token_last_used").select(["token_id", "last_used_at"]).where("token_id", "in", rows.map((row) => row.id)).execute();
  const at = new Map(used.map((u) => [u.token_id, u.last_used_at]));
  return rows.map((row) => {
    const known = at.get(row.id);
    return toRecord(known !== undefined && (row.last_used_at === null || row.last_used_at < known) ? { ...row, last_used_at: known } : row);
  });
}

/** A time read as epoch milliseconds (`RECORD_JSON`). */
function dateOrNull(ms: number | null): Date | null {
  return ms === null ? null : new Date(ms);
}

/** Maps a `RECORD_JSON` row to the domain record, exactly as `toRecord` maps the same row read column by column. */
function recordFromJson(r: RecordJson, digest: Buffer): TokenRecord {
  const allowedNetworks = r[19];
  const rateLimitRequests = r[20];
  const rateLimitWindowMs = r[21];
  const predecessorId = r[22];
  const successorId = r[23];
  return {
    id: r[0],
    // The batch's Buffer views one pooled allocation; the domain gets a plain, own copy.
    digest: new Uint8Array(digest),
    displayHint: r[1],
    name: r[2],
    subject: r[3],
    fullName: r[4],
    teams: r[5],
    scopes: r[6],
    namespaces: r[7],
    isAdmin: r[8],
    metadata: r[9],
    environment: r[10],
    createdAt: new Date(r[11]),
    createdBy: r[12],
    issuedByTokenId: r[13],
    expiresAt: dateOrNull(r[14]),
    lastUsedAt: dateOrNull(r[15]),
    revokedAt: dateOrNull(r[16]),
    revokedBy: r[17],
    revokeReason: r[18],
    ...(allowedNetworks.length > 0 ? { allowedNetworks } : {}),
    ...(rateLimitRequests !== null && rateLimitWindowMs !== null ? { rateLimit: { requests: rateLimitRequests, windowMs: rateLimitWindowMs } } : {}),
    ...(predecessorId !== null || successorId !== null
      ? { rotation: { predecessorId, successorId, scheduledRevokeAt: dateOrNull(r[24]), revokeOnSuccessorUse: r[25], successorUsedAt: dateOrNull(r[26]) } }
      : {}),
  };
}

/** Maps a row to the domain record; `digest` when the row was read without its own (the digest lookups). */
export function toRecord(row: LookedUpRow & { readonly digest?: Uint8Array }, digest: Uint8Array | undefined = row.digest): TokenRecord {
  if (digest === undefined) throw new Error("toRecord: a row without its digest");
  return {
    id: row.id,
    // `pg` returns a Buffer (often a view into a larger pooled one); the domain gets a plain, own copy.
    digest: digest instanceof Buffer ? new Uint8Array(digest) : digest,
    displayHint: row.display_hint,
    name: row.name,
    subject: row.subject,
    fullName: row.full_name,
    teams: row.teams,
    scopes: row.scopes,
    namespaces: row.namespaces,
    isAdmin: row.is_admin,
    metadata: row.metadata,
    environment: row.environment,
    createdAt: row.created_at,
    createdBy: row.created_by,
    issuedByTokenId: row.issued_by_token_id ?? null,
    expiresAt: row.expires_at,
    lastUsedAt: row.last_used_at,
    revokedAt: row.revoked_at,
    revokedBy: row.revoked_by,
    revokeReason: row.revoke_reason,
    // Only when set: an unbound token's record is what it was before migration 0011.
    ...(row.allowed_networks != null && row.allowed_networks.length > 0 ? { allowedNetworks: row.allowed_networks } : {}),
    ...(row.rate_limit_requests != null && row.rate_limit_window_ms != null ? { rateLimit: { requests: row.rate_limit_requests, windowMs: row.rate_limit_window_ms } } : {}),
    // Only rotated tokens and successors carry links, so every other record is as it was.
    ...(row.predecessor_id != null || row.successor_id != null
      ? {
          rotation: {
            predecessorId: row.predecessor_id ?? null,
            successorId: row.successor_id ?? null,
            scheduledRevokeAt: row.scheduled_revoke_at ?? null,
            revokeOnSuccessorUse: row.revoke_on_successor_use === true,
            successorUsedAt: row.successor_used_at ?? null,
          },
        }
      : {}),
  };
}

/**
 * Revokes the unrevoked tokens among `ids` in one statement (see
 * `KyselyTokenStore.revokeMany`). Each revoked row gets its revocation log
 * position and its notice from the row trigger of migration 0009, exactly as
 * `revoke` and `revokeCascade` do.
 */
async function revokeIds(db: Kysely<Database>, ids: readonly string[], revocation: Revocation, dueBy?: Date): Promise<TokenRecord[]> {
  const due = dueBy === undefined ? sql`` : sql`AND scheduled_revoke_at IS NOT NULL AND scheduled_revoke_at <= ${dueBy}`;
  const { rows } = await sql<Selectable<TokensTable>>`
    WITH locked AS (
      SELECT id FROM tokens
      WHERE id = ANY(${[...ids]}::uuid[]) AND revoked_at IS NULL ${due}
      ORDER BY id
      FOR UPDATE
    ),
    revoked AS (
      UPDATE tokens SET revoked_at = ${revocation.at}, revoked_by = ${revocation.by}, revoke_reason = ${revocation.reason}
      FROM locked
      WHERE tokens.id = locked.id AND tokens.revoked_at IS NULL
      RETURNING tokens.*
    )
    SELECT revoked.* FROM revoked`.execute(db);
  return recordsOf(db, rows);
}

/**
 * The selector as SQL over unrevoked tokens of one environment (and, for a
 * running operation, issued at or before its start). Undefined for an empty
 * selector or an issuer id that is not a UUID (nothing can match). Values
 * are bound parameters, never spliced.
 */
function selectorWhere(environment: Environment, selector: TokenSelector, startedAt: Date | undefined) {
  const parts = [sql`environment = ${environment}`, sql`revoked_at IS NULL`];
  let narrowed = false;
  if (selector.subject !== undefined) (parts.push(sql`subject = ${selector.subject}`), (narrowed = true));
  // `@>` rather than `= ANY(teams)` so the GIN index on teams can serve it.
  if (selector.team !== undefined) (parts.push(sql`teams @> ARRAY[${selector.team}]::text[]`), (narrowed = true));
  if (selector.issuedByTokenId !== undefined) {
    if (!isUuid(selector.issuedByTokenId)) return undefined;
    parts.push(sql`issued_by_token_id = ${selector.issuedByTokenId}::uuid`);
    narrowed = true;
  }
  if (selector.name !== undefined) (parts.push(sql`name = ${selector.name}`), (narrowed = true));
  if (selector.createdBefore !== undefined) (parts.push(sql`created_at < ${selector.createdBefore}`), (narrowed = true));
  if (selector.expireBefore !== undefined) (parts.push(sql`expires_at < ${selector.expireBefore}`), (narrowed = true));
  if (!narrowed) return undefined;
  if (startedAt !== undefined) parts.push(sql`created_at <= ${startedAt}`);
  return sql.join(parts, sql` AND `);
}

/** Maps an operation row to the domain's shape. */
function toBulkRevocation(row: Selectable<BulkRevocationsTable>): BulkRevocation {
  return {
    id: row.id,
    environment: row.environment,
    selector: {
      ...(row.subject !== null ? { subject: row.subject } : {}),
      ...(row.team !== null ? { team: row.team } : {}),
      ...(row.issued_by_token_id !== null ? { issuedByTokenId: row.issued_by_token_id } : {}),
      ...(row.name !== null ? { name: row.name } : {}),
      ...(row.created_before !== null ? { createdBefore: row.created_before } : {}),
      ...(row.expire_before !== null ? { expireBefore: row.expire_before } : {}),
    },
    reason: row.reason,
    requestedBy: row.requested_by,
    callerTokenId: row.caller_token_id,
    startedAt: row.started_at,
    revokedCount: Number(row.revoked_count),
    finishedAt: row.finished_at,
  };
}
