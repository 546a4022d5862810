/**
 * A private PostgreSQL primary with a streaming hot standby, for tests (and
 * the benchmark) of read replicas: `initdb` into a temporary directory, its
 * own free port, `pg_basebackup -R` into a second directory started on its
 * own port. Both run as the `postgres` user when this process is root
 * (initdb and postgres refuse to run as root; CI runs as root), else as the
 * current user. Binaries from `PG_BIN` (default /usr/lib/postgresql/15/bin).
 *
 * Imports nothing from src/ or vitest, so bench/ can use it too.
 */
import { execFile } from "node:child_process";
import { chown, mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Client } from "pg";

const run = promisify(execFile);

/** Where the PostgreSQL server binaries are. */
const PG_BIN = process.env["PG_BIN"] ?? "/usr/lib/postgresql/15/bin";

/** A running primary and standby, and the controls a test needs. */
export interface PgCluster {
  /** URL of `database` on the primary. */
  readonly primaryUrl: string;
  /** URL of `database` on the standby (read-only). */
  readonly standbyUrl: string;
  readonly primaryPort: number;
  readonly standbyPort: number;
  /** Stops replay on the standby (`pg_wal_replay_pause()`): it keeps receiving WAL but shows nothing new. */
  pauseReplay(): Promise<void>;
  /** Resumes replay (`pg_wal_replay_resume()`). */
  resumeReplay(): Promise<void>;
  /** Resolves once the standby has replayed everything the primary had written when called. */
  waitForReplay(timeoutMs?: number): Promise<void>;
  /** Stops the standby at once (`pg_ctl stop -m immediate`), as a crash would. */
  stopStandby(): Promise<void>;
  /** Starts it again on the same port. */
  startStandby(): Promise<void>;
  /** Stops both clusters and removes their directories. Safe to call more than once. */
  stop(): Promise<void>;
}

/** Runs a PostgreSQL binary as the postgres user when root. */
async function pg(binary: string, args: readonly string[]): Promise<string> {
  const path = join(PG_BIN, binary);
  const asRoot = process.getuid?.() === 0;
  const [file, argv] = asRoot ? ["runuser", ["-u", "postgres", "--", path, ...args]] : [path, [...args]];
  try {
    const { stdout } = await run(file, argv, { env: { ...process.env, LC_ALL: "C" }, timeout: 120_000 });
    return stdout;
  } catch (error) {
    const e = error as { stderr?: string; message: string };
    throw new Error(`${binary} failed: ${e.stderr?.trim() || e.message}`, { cause: error });
  }
}

/** A free TCP port on 127.0.0.1 (released before use: a tiny race, retried by the caller). */
async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Settings of both servers: private (TCP on 127.0.0.1 only, no Unix socket), fast, replicating. */
function serverOptions(port: number): string {
  return [
    `-p ${port}`,
    "-c listen_addresses=127.0.0.1",
    "-c unix_socket_directories=''",
    "-c wal_level=replica",
    "-c max_wal_senders=4",
    "-c hot_standby=on",
    "-c fsync=off",
    "-c full_page_writes=off",
    "-c shared_buffers=32MB",
    "-c max_connections=60",
  ].join(" ");
}

async function startServer(dataDir: string, port: number): Promise<void> {
  await pg("pg_ctl", ["-D", dataDir, "-l", join(dataDir, "server.log"), "-w", "-t", "60", "-o", serverOptions(port), "start"]);
}

async function query<T>(url: string, text: string): Promise<T[]> {
  const client = new Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
  await client.connect();
  try {
    return (await client.query(text)).rows as T[];
  } finally {
    await client.end();
  }
}

/**
 * Creates and starts a primary and a streaming standby, each on its own free
 * port, with `database` created on the primary (and so on the standby).
 * Trust authentication on 127.0.0.1, replication included (initdb -A trust).
 */
export async function startPgCluster(database = "tokens"): Promise<PgCluster> {
  const base = await mkdtemp(join(tmpdir(), "tis-pg-cluster-"));
  const asRoot = process.getuid?.() === 0;
  if (asRoot) {
    // The data directories must belong to the user the servers run as (mode 0700: initdb's and pg_basebackup's own).
    const { stdout } = await run("id", ["-u", "postgres"]);
    const { stdout: gid } = await run("id", ["-g", "postgres"]);
    await chown(base, Number(stdout.trim()), Number(gid.trim()));
  }
  const primaryDir = join(base, "primary");
  const standbyDir = join(base, "standby");
  let primaryPort = 0;
  let standbyPort = 0;
  let primaryUp = false;
  let standbyUp = false;
  const stopServer = async (dir: string) => {
    await pg("pg_ctl", ["-D", dir, "-m", "immediate", "-w", "stop"]).catch(() => undefined);
  };
  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      if (standbyUp) await stopServer(standbyDir);
      if (primaryUp) await stopServer(primaryDir);
      standbyUp = primaryUp = false;
      await rm(base, { recursive: true, force: true });
    })());
  try {
    await pg("initdb", ["-D", primaryDir, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
    // Another process may take the port between its probe and our bind: try a few.
    for (let attempt = 0; ; attempt++) {
      primaryPort = await freePort();
      try {
        await startServer(primaryDir, primaryPort);
        break;
      } catch (error) {
        if (attempt >= 3) throw error;
      }
    }
    primaryUp = true;
    const admin = `postgres://postgres@127.0.0.1:${primaryPort}/postgres`;
    await query(admin, `CREATE DATABASE ${database}`);
    await pg("pg_basebackup", ["-h", "127.0.0.1", "-p", String(primaryPort), "-U", "postgres", "-D", standbyDir, "-R", "-X", "stream", "-c", "fast", "--no-sync"]);
    for (let attempt = 0; ; attempt++) {
      standbyPort = await freePort();
      try {
        await startServer(standbyDir, standbyPort);
        break;
      } catch (error) {
        if (attempt >= 3) throw error;
      }
    }
    standbyUp = true;
  } catch (error) {
    await stop();
    throw error;
  }
  const primaryUrl = `postgres://postgres@127.0.0.1:${primaryPort}/${database}`;
  const standbyUrl = `postgres://postgres@127.0.0.1:${standbyPort}/${database}`;
  return {
    primaryUrl,
    standbyUrl,
    primaryPort,
    standbyPort,
    pauseReplay: async () => {
      await query(standbyUrl, "SELECT pg_wal_replay_pause()");
    },
    resumeReplay: async () => {
      await query(standbyUrl, "SELECT pg_wal_replay_resume()");
    },
    waitForReplay: async (timeoutMs = 30_000) => {
      const [{ lsn }] = (await query<{ lsn: string }>(primaryUrl, "SELECT pg_current_wal_insert_lsn()::text AS lsn")) as [{ lsn: string }];
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const [row] = await query<{ done: boolean }>(standbyUrl, `SELECT pg_last_wal_replay_lsn() >= '${lsn}'::pg_lsn AS done`);
        if (row?.done) return;
        if (Date.now() > deadline) throw new Error(`the standby did not replay up to ${lsn} within ${timeoutMs} ms`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    },
    stopStandby: async () => {
      await stopServer(standbyDir);
      standbyUp = false;
    },
    startStandby: async () => {
      await startServer(standbyDir, standbyPort);
      standbyUp = true;
    },
    stop,
  };
}
