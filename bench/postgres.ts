/**
 * The PostgreSQL that the benchmark and the soak test run against: which
 * server (an admin URL from the environment), making sure it is up, and a
 * scratch database per run that is dropped afterwards.
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { Client } from "pg";
import { sleep } from "./common.js";

/** `BENCH_DATABASE_URL`, else `TEST_DATABASE_URL`, else the local test cluster. */
export function adminDatabaseUrl(env: NodeJS.ProcessEnv = process.env): string {
  return env["BENCH_DATABASE_URL"] ?? env["TEST_DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/test";
}

/** The URL with its password hidden, for messages. */
export function redactedUrl(url: string): string {
  return url.replace(/:[^:@/]*@/, ":***@");
}

/**
 * Connects to `adminUrl` and returns the server version; if it is not
 * reachable and a local Debian cluster exists, starts it (as .ci/run does)
 * and waits up to 30 s.
 */
export async function ensurePostgres(adminUrl: string): Promise<string> {
  const tryConnect = async () => {
    const client = new Client({ connectionString: adminUrl, connectionTimeoutMillis: 3_000 });
    await client.connect();
    const { rows } = await client.query<{ server_version: string }>("SHOW server_version");
    await client.end();
    return rows[0]!.server_version;
  };
  try {
    return await tryConnect();
  } catch {
    if (existsSync("/etc/postgresql")) {
      const version = spawnSync("sh", ["-c", "ls /etc/postgresql | head -n1"], { encoding: "utf8" }).stdout.trim();
      spawnSync("pg_ctlcluster", ["--skip-systemctl-redirect", version, "main", "start"], { stdio: "inherit", timeout: 60_000 });
      for (let i = 0; i < 30; i++) {
        try {
          return await tryConnect();
        } catch {
          await sleep(1_000);
        }
      }
    }
    throw new Error(`PostgreSQL is not reachable at ${redactedUrl(adminUrl)}; set BENCH_DATABASE_URL`);
  }
}

/** `adminUrl` with its database replaced by `database`. */
export function databaseUrl(adminUrl: string, database: string): string {
  const url = new URL(adminUrl);
  url.pathname = `/${database}`;
  return url.toString();
}

/** Drops a scratch database, ending its sessions first (replicas killed hard may leave some behind). */
export async function dropDatabase(admin: Client, database: string): Promise<void> {
  await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`).catch(async () => {
    await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", [database]);
    await admin.query(`DROP DATABASE IF EXISTS ${database}`);
  });
}
