/**
 * Opening the database and bringing its schema up to date. The same Kysely
 * handle type serves real PostgreSQL (through a `pg` pool) and embedded PGlite,
 * so every store runs unchanged on both.
 */
import { mkdir } from "node:fs/promises";
import { PGlite } from "@electric-sql/pglite";
import { Kysely, Migrator, PostgresDialect } from "kysely";
import { PGliteDialect } from "kysely-pglite-dialect";
import { Client, Pool } from "pg";
import { REVOCATION_CHANNEL, type ListenSessionFactory } from "./revocation-channel.js";
import { migrationProvider } from "./migrations/index.js";
import type { Database } from "./schema.js";

/** How to reach the database. */
export interface DatabaseOptions {
  /** `postgres://` or `postgresql://` URL of a PostgreSQL server. When set, PGlite is not used. */
  readonly url?: string;
  /** PGlite data directory, used when there is no `url`; `memory://` keeps everything in memory. */
  readonly dataDir?: string;
  /** Most connections the pool opens (PostgreSQL only; PGlite is one connection). */
  readonly poolMax: number;
  /** How long to wait for a connection, in milliseconds (PostgreSQL only). */
  readonly connectTimeoutMs: number;
  /**
   * Longest a statement may run, in milliseconds; 0 disables it. PostgreSQL
   * only: PGlite does not enforce `statement_timeout`.
   */
  readonly statementTimeoutMs: number;
  /**
   * Told about errors of idle pooled connections (server restart, network
   * loss). The pool drops such a connection by itself; this is for logging.
   */
  readonly onIdleClientError?: (error: Error) => void;
}

/** An open database: the Kysely handle for the stores, and how to close it. */
export interface OpenedDatabase {
  readonly db: Kysely<Database>;
  readonly kind: "postgres" | "pglite";
  /**
   * Runs one statement by name, prepared once per connection on PostgreSQL
   * (named prepared statements measured nearly twice the point-lookup rate
   * of unnamed ones here); a plain parameterised query on PGlite. For the
   * hottest store read only.
   */
  readonly prepared: <R>(name: string, text: string, values: readonly unknown[]) => Promise<R[]>;
  /** Opens a LISTEN session for revocation notices: its own connection on PostgreSQL, in-process on PGlite. */
  readonly listen: ListenSessionFactory;
  /** Closes the pool or the PGlite instance; safe to call more than once. */
  close(): Promise<void>;
  /**
   * The connection pool's use now, for metrics (PostgreSQL only; PGlite has
   * one in-process connection and no pool): connections open, of those idle,
   * and queries waiting for one.
   */
  poolStats?(): { total: number; idle: number; waiting: number; max: number };
}

/**
 * Client-side read timeout beyond `statement_timeout`. The server cancels a
 * slow statement first (SQLSTATE 57014, connection stays usable); the client
 * timeout only fires when the server cannot answer at all (a dead network
 * path), which `statement_timeout` cannot detect.
 */
const QUERY_TIMEOUT_MARGIN_MS = 1_000;

/**
 * Opens PostgreSQL when `options.url` is set, else PGlite in `options.dataDir`
 * (created if missing). Does not connect to PostgreSQL yet: the pool connects
 * on first use, so call `migrateToLatest` or a store's `ping` to fail fast.
 *
 * @throws Error when neither `url` nor `dataDir` is given, or the URL is not a PostgreSQL one
 */
export async function openDatabase(options: DatabaseOptions): Promise<OpenedDatabase> {
  if (options.url !== undefined) return openPostgres(options.url, options);
  if (options.dataDir !== undefined) return openPglite(options.dataDir);
  throw new Error("openDatabase needs a PostgreSQL url or a PGlite dataDir");
}

function openPostgres(url: string, options: DatabaseOptions): OpenedDatabase {
  if (!/^postgres(ql)?:\/\//.test(url)) {
    throw new Error("the database URL must start with postgres:// or postgresql://");
  }
  const pool = openPool(url, options, "token-introspection-service");
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  const listen: ListenSessionFactory = async (onPayload, onLost) => {
    // A dedicated session, never a pooled one: LISTEN is session state.
    const client = new Client({ connectionString: url, connectionTimeoutMillis: options.connectTimeoutMs, keepAlive: true, application_name: "token-introspection-service/listener" });
    let closing = false;
    const lost = (error: unknown) => {
      if (closing) return;
      closing = true;
      onLost(error);
    };
    client.on("notification", (message) => {
      if (message.channel === REVOCATION_CHANNEL && message.payload !== undefined) onPayload(message.payload);
    });
    client.on("error", lost);
    client.on("end", () => lost(new Error("listener connection ended")));
    await client.connect();
    await client.query(`LISTEN ${REVOCATION_CHANNEL}`);
    return {
      // node-postgres keeps the backend pid from the connection's BackendKeyData.
      backendPid: (client as unknown as { processID?: number }).processID,
      notify: async (payload) => {
        await client.query({ text: "SELECT pg_notify($1, $2)", values: [REVOCATION_CHANNEL, payload], query_timeout: options.connectTimeoutMs } as never);
      },
      close: async () => {
        closing = true;
        await client.end().catch(() => undefined);
      },
    };
  };
  const poolStats = () => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount, max: options.poolMax });
  const prepared = async <R>(name: string, text: string, values: readonly unknown[]): Promise<R[]> =>
    (await pool.query({ name, text, values: [...values] })).rows as R[];
  return { db, kind: "postgres", listen, prepared, close: once(() => db.destroy()), poolStats };
}

/** A read replica's pool: prepared reads only, never writes, never LISTEN. */
export interface ReadReplicaPool {
  /** Runs one read by name, prepared once per connection (as `OpenedDatabase.prepared`). */
  readonly prepared: <R>(name: string, text: string, values: readonly unknown[]) => Promise<R[]>;
  /** Resolves when the replica answers `SELECT 1`. */
  ping(): Promise<void>;
  /** Closes the pool; safe to call more than once. */
  close(): Promise<void>;
  /** The pool's use now, for metrics. */
  poolStats(): { total: number; idle: number; waiting: number; max: number };
}

/**
 * Opens a pool on a PostgreSQL streaming replica (`DATABASE_READ_URL`) for
 * the cache misses' digest lookups. Its own pool, so a slow or unreachable
 * standby never holds the primary's connections, with the same timeouts
 * (a standby that stops answering costs one connect timeout, then the
 * caller falls back to the primary). Connects on first use.
 *
 * @throws Error when the URL is not a PostgreSQL one
 */
export function openReadReplica(url: string, options: Omit<DatabaseOptions, "url" | "dataDir">): ReadReplicaPool {
  if (!/^postgres(ql)?:\/\//.test(url)) {
    throw new Error("the read replica URL must start with postgres:// or postgresql://");
  }
  const pool = openPool(url, options, "token-introspection-service/replica-reads");
  const prepared = async <R>(name: string, text: string, values: readonly unknown[]): Promise<R[]> =>
    (await pool.query({ name, text, values: [...values] })).rows as R[];
  return {
    prepared,
    ping: async () => {
      await pool.query("SELECT 1");
    },
    close: once(() => pool.end()),
    poolStats: () => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount, max: options.poolMax }),
  };
}

/** A `pg` pool with the service's timeouts, keepalive and error listeners (primary and read replica alike). */
function openPool(url: string, options: Omit<DatabaseOptions, "url" | "dataDir">, applicationName: string): Pool {
  const statementTimeout = options.statementTimeoutMs > 0 ? options.statementTimeoutMs : undefined;
  const pool = new Pool({
    connectionString: url,
    max: options.poolMax,
    connectionTimeoutMillis: options.connectTimeoutMs,
    statement_timeout: statementTimeout ?? false,
    query_timeout: statementTimeout === undefined ? undefined : statementTimeout + QUERY_TIMEOUT_MARGIN_MS,
    // TCP keepalive lets the kernel notice a half-open connection (node-postgres #967, #3003).
    keepAlive: true,
    application_name: applicationName,
  });
  // Without a listener, an idle client's error (server restart, network loss)
  // is an unhandled 'error' event and kills the process. The pool already
  // discards that client; the next query opens a fresh one.
  pool.on("error", (error) => options.onIdleClientError?.(error));
  // pg-pool removes its own listener while a client is checked out, and a
  // connection that dies mid-query then emits 'error' with nobody listening,
  // which would crash the process. The query itself already fails (and is
  // answered UNAVAILABLE); this listener only keeps the process alive.
  pool.on("connect", (client) => {
    client.on("error", (error) => options.onIdleClientError?.(error));
  });
  return pool;
}

async function openPglite(dataDir: string): Promise<OpenedDatabase> {
  // A plain path or file:// is a directory on disk, which PGlite does not create itself;
  // other schemes (memory://, and browser-only ones) are PGlite's business.
  const onDisk = dataDir.startsWith("file://") ? dataDir.slice("file://".length) : /^[a-z][a-z0-9+.-]*:\/\//i.test(dataDir) ? undefined : dataDir;
  if (onDisk !== undefined) await mkdir(onDisk, { recursive: true });
  const pglite = await PGlite.create({ dataDir });
  const db = new Kysely<Database>({ dialect: new PGliteDialect(pglite) });
  const listen: ListenSessionFactory = async (onPayload) => {
    // In-process: PGlite delivers NOTIFYs of its one session to its own listeners.
    const unlisten = await pglite.listen(REVOCATION_CHANNEL, onPayload);
    return {
      notify: async (payload) => {
        await pglite.query("SELECT pg_notify($1, $2)", [REVOCATION_CHANNEL, payload]);
      },
      close: () => unlisten(),
    };
  };
  // Destroying the Kysely handle closes the PGlite instance (the dialect's driver owns it).
  const prepared = async <R>(_name: string, text: string, values: readonly unknown[]): Promise<R[]> =>
    (await pglite.query<R>(text, [...values])).rows;
  return { db, kind: "pglite", listen, prepared, close: once(() => db.destroy()) };
}

/** Wraps `fn` so that every call after the first returns the first call's promise. */
function once(fn: () => Promise<void>): () => Promise<void> {
  let result: Promise<void> | undefined;
  return () => (result ??= fn());
}

/**
 * Applies every pending migration, in order, in one transaction (PostgreSQL
 * DDL is transactional, so a failure leaves the schema as it was), under
 * Kysely's migration lock (a session advisory lock, which PGlite also
 * honours), so several instances starting together migrate once.
 *
 * @returns the names of the migrations applied now; empty when already up to date
 * @throws Error naming the failed migration, with the driver error as `cause`
 */
export async function migrateToLatest(db: Kysely<Database>): Promise<string[]> {
  const migrator = new Migrator({ db, provider: migrationProvider });
  const { error, results = [] } = await migrator.migrateToLatest();
  if (error !== undefined) {
    const failed = results.find((result) => result.status === "Error");
    const what = failed === undefined ? "preparing the migrations" : `migration ${failed.migrationName}`;
    throw new Error(`database migration failed at ${what}; no pending migration was applied`, { cause: error });
  }
  return results.filter((result) => result.status === "Success").map((result) => result.migrationName);
}
