import { execFile } from "node:child_process";
import { promisify } from "node:util";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";

const run = promisify(execFile);
/** Production refuses to run without a key-encryption key. */
const KEK = "q8Bx3oWfF2v0Zf5c1n0bJr8ZbLr9oM0sXgk2Yw7tHjE=";
const CLI = "dist/src/cli/tokenctl.js";

/** tokenctl as operators run it: the built CLI in a child process, against real PostgreSQL. */
describe("tokenctl", () => {
  let db: TestDatabase;

  beforeAll(async () => {
    // The CLI runs from the build, as `npm run tokenctl` does.
    await run("npm", ["run", "build", "--silent"]);
    db = await createTestDatabase();
  }, 120_000);

  afterAll(async () => {
    await db?.drop();
  });

  const env = () => ({ ...process.env, DATABASE_URL: db.url, TOKEN_ENVIRONMENT: "production", LOG_LEVEL: "info", KEY_ENCRYPTION_KEY: KEK });

  it("migrates", async () => {
    const { stdout, stderr } = await run("node", [CLI, "migrate"], { env: env() });
    expect(stdout).toBe("");
    expect(stderr).toContain('"msg":"migrations applied"');
  });

  it("bootstrap prints only the token on stdout, logs the event at info, and stores it", async () => {
    const { stdout, stderr } = await run("node", [CLI, "bootstrap", "--subject", "ops@example.com"], { env: env() });
    expect(stdout).toMatch(/^cfprd-[0-9A-Za-z]{22}\n$/);
    const token = stdout.trim();
    expect(stderr).not.toContain(token);
    const events = stderr.split("\n").filter((l) => l.includes('"security_event"')).map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(events).toEqual([expect.objectContaining({ security_event: "platform_admin_bootstrap", level: 30, tokenHint: `cfprd-…${token.slice(-4)}` })]);

    const client = new pg.Client({ connectionString: db.url });
    await client.connect();
    const tokens = await client.query("select subject, is_admin, environment from tokens");
    const stored = await client.query("select type, severity, count from security_events");
    await client.end();
    expect(tokens.rows).toEqual([{ subject: "ops@example.com", is_admin: true, environment: "production" }]);
    expect(stored.rows).toEqual([{ type: "platform_admin_bootstrap", severity: "info", count: "1" }]);
  });

  it.each([
    [["bootstrap"], 64, "bootstrap needs --subject <email>"],
    [["frobnicate"], 64, 'unknown command "frobnicate"'],
    [["bootstrap", "--subject", "a", "--bogus"], 64, "Unknown option '--bogus'"],
  ])("refuses %j with exit code %i", async (args, code, message) => {
    await expect(run("node", [CLI, ...args], { env: env() })).rejects.toMatchObject({ code, stderr: expect.stringContaining(message), stdout: "" });
  });

  it("names a bad configuration key and exits 78", async () => {
    await expect(run("node", [CLI, "migrate"], { env: { ...env(), TOKEN_ENVIRONMENT: "qa" } })).rejects.toMatchObject({ code: 78, stderr: expect.stringContaining('TOKEN_ENVIRONMENT="qa"') });
  });
});
