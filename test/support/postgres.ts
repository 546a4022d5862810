/**
 * A throwaway PostgreSQL database per test file. Tests that need PostgreSQL
 * fail (they do not skip) when the server is missing, so a green run always
 * means both stores were exercised.
 */
import { randomBytes } from "node:crypto";
import { Client, escapeIdentifier } from "pg";

/** Admin URL used when `TEST_DATABASE_URL` is not set: local server, trust auth. */
const DEFAULT_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/test";

/** A freshly created, empty database and how to get rid of it. */
export interface TestDatabase {
  /** URL of the new database, for `openDatabase({ url })`. */
  readonly url: string;
  /** Ends every connection to the database and drops it. */
  drop(): Promise<void>;
}

async function withAdmin<T>(adminUrl: string, work: (client: Client) => Promise<T>): Promise<T> {
  const client = new Client({ connectionString: adminUrl, connectionTimeoutMillis: 5_000 });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

/**
 * Creates a database named `tis_test_<pid>_<random>` on the server of
 * `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
 *
 * @throws when the server cannot be reached: tests must fail, not skip
 */
export async function createTestDatabase(): Promise<TestDatabase> {
  const adminUrl = process.env["TEST_DATABASE_URL"] ?? DEFAULT_ADMIN_URL;
  const name = `tis_test_${process.pid}_${randomBytes(4).toString("hex")}`;
  try {
    await withAdmin(adminUrl, (client) => client.query(`CREATE DATABASE ${escapeIdentifier(name)}`));
  } catch (err) {
    throw new Error(`cannot create a test database on ${redact(adminUrl)}; is PostgreSQL running? (set TEST_DATABASE_URL)`, {
      cause: err,
    });
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  let dropped: Promise<void> | undefined;
  return {
    url: url.toString(),
    drop: () =>
      (dropped ??= withAdmin(adminUrl, async (client) => {
        // Terminating first keeps this working on servers older than 13 (no DROP … WITH (FORCE)).
        await client.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", [
          name,
        ]);
        await client.query(`DROP DATABASE IF EXISTS ${escapeIdentifier(name)}`);
      })),
  };
}

/** The URL without its password, for error messages. */
function redact(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password !== "") parsed.password = "***";
    return parsed.toString();
  } catch {
    return "(unparseable TEST_DATABASE_URL)";
  }
}
