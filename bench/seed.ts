/**
 * Setup of the benchmark's stores: tokens minted with the domain's own code
 * (`mintToken`, `buildClaims`, `newTokenRecord`, so they are exactly what
 * `IssueToken` would store) and written in bulk, a thousand rows a statement,
 * because issuing 120,000 tokens one transaction at a time would eat the
 * time budget. The column mapping below is type-checked against the schema
 * (`storage/schema.ts`), so a schema change breaks the benchmark's build
 * rather than its figures.
 *
 * Run directly, it seeds an embedded PGlite directory (which only one
 * process may open at a time):
 *   node dist/bench/seed.js '{"pgliteDir": "...", "count": 20000, "tokensFile": "...", "environment": "production"}'
 */
import { writeFileSync } from "node:fs";
import type { Kysely } from "kysely";
import { buildClaims, newTokenRecord } from "../src/domain/claims.js";
import type { Environment } from "../src/domain/environment.js";
import { SCOPES } from "../src/domain/model.js";
import type { NewToken } from "../src/domain/ports.js";
import { mintToken } from "../src/domain/token-format.js";
import { migrateToLatest, openDatabase } from "../src/storage/database.js";
import type { Database } from "../src/storage/schema.js";

/** Tokens minted for the benchmark: the secrets and the rows to store. */
export interface MintedSet {
  readonly tokens: string[];
  readonly rows: NewToken[];
}

const DAY_MS = 86_400_000;

/**
 * Mints `count` ordinary tokens with claims of a realistic size (a few
 * scopes, teams and namespaces, a full name and one metadata label), each
 * for its own subject so no per-subject cap is near.
 */
export function mintTokens(environment: Environment, count: number, label: string): MintedSet {
  const now = new Date();
  const tokens: string[] = [];
  const rows: NewToken[] = [];
  for (let i = 0; i < count; i++) {
    const claims = buildClaims({
      subject: `${label}-${i}@example.com`,
      fullName: `Bench User ${i}`,
      name: `${label}-${i}`,
      teams: ["payments", "checkout"],
      scopes: ["orders.read", "orders.write", "invoices.read"],
      namespaces: ["eu-west-prod"],
      metadata: { purpose: "benchmark" },
      environment,
      issuedAt: now,
      expiresAt: new Date(now.getTime() + 30 * DAY_MS),
    });
    const minted = mintToken(environment);
    tokens.push(minted.token);
    rows.push(newTokenRecord(claims, minted, "bench-seed", null));
  }
  return { tokens, rows };
}

/** Mints one caller token with the given permission scopes (admin when `admin`). */
export function mintCaller(environment: Environment, subject: string, admin: boolean): MintedSet {
  const now = new Date();
  const claims = buildClaims({
    subject,
    name: admin ? "bench-admin" : "bench-gateway",
    isAdmin: admin,
    scopes: admin ? Object.values(SCOPES) : [SCOPES.introspect],
    environment,
    issuedAt: now,
    expiresAt: new Date(now.getTime() + 30 * DAY_MS),
  });
  const minted = mintToken(environment);
  return { tokens: [minted.token], rows: [newTokenRecord(claims, minted, "bench-seed", null)] };
}

/** Writes rows in multi-row INSERTs of `batch` rows. */
export async function insertRows(db: Kysely<Database>, rows: readonly NewToken[], batch = 1000): Promise<void> {
  for (let start = 0; start < rows.length; start += batch) {
    await db
      .insertInto("tokens")
      .values(
        rows.slice(start, start + batch).map((token) => ({
          id: token.id,
          digest: token.digest,
          display_hint: token.displayHint,
          name: token.name,
          subject: token.subject,
          full_name: token.fullName,
          teams: [...token.teams],
          scopes: [...token.scopes],
          namespaces: [...token.namespaces],
          is_admin: token.isAdmin,
          metadata: JSON.stringify(token.metadata),
          environment: token.environment,
          created_at: token.createdAt,
          created_by: token.createdBy,
          expires_at: token.expiresAt,
        })),
      )
      .execute();
  }
}

/** What the PGlite seeding child is told. */
export interface PgliteSeedInput {
  readonly pgliteDir: string;
  readonly count: number;
  readonly environment: Environment;
  /** Where to write `{ gateway, tokens }` as JSON. */
  readonly tokensFile: string;
}

async function seedPglite(input: PgliteSeedInput): Promise<void> {
  const database = await openDatabase({ dataDir: input.pgliteDir, poolMax: 1, connectTimeoutMs: 2000, statementTimeoutMs: 0 });
  try {
    await migrateToLatest(database.db);
    const gateway = mintCaller(input.environment, "gateway@bench.example.com", false);
    const set = mintTokens(input.environment, input.count, "pglite");
    await insertRows(database.db, [...gateway.rows, ...set.rows]);
    writeFileSync(input.tokensFile, JSON.stringify({ gateway: gateway.tokens[0], tokens: set.tokens }));
  } finally {
    await database.close();
  }
}

if (process.argv[1]?.endsWith("/seed.js") && process.argv[2] !== undefined) {
  seedPglite(JSON.parse(process.argv[2]) as PgliteSeedInput).then(
    () => process.stdout.write('{"ok":true}\n'),
    (error: unknown) => {
      process.stderr.write(`seed failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
      process.exit(1);
    },
  );
}
