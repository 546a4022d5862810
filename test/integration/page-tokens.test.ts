import { randomBytes } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TokenService, type ListTokensResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { openDatabase, migrateToLatest } from "../../src/storage/database.js";
import { KyselyServerSecretStore } from "../../src/storage/server-secret-store.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

/**
 * Page tokens are authenticated with a key every replica shares: it is made
 * once, in the database, by whichever replica starts first.
 */
describe("the page-token key", () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterAll(async () => {
    await db?.drop();
  });

  it("is the same for eight replicas creating it at the same moment on PostgreSQL", async () => {
    const opened = await Promise.all(Array.from({ length: 8 }, () => openDatabase({ url: db.url, poolMax: 2, connectTimeoutMs: 5_000, statementTimeoutMs: 0 })));
    try {
      await migrateToLatest(opened[0]!.db);
      const candidates = opened.map(() => randomBytes(32));
      const keys = await Promise.all(opened.map((o, i) => new KyselyServerSecretStore(o.db).getOrCreate("race", candidates[i]!)));
      const winner = Buffer.from(keys[0]!).toString("hex");
      expect(keys.map((k) => Buffer.from(k).toString("hex"))).toEqual(keys.map(() => winner));
      expect(candidates.map((c) => c.toString("hex"))).toContain(winner);
      // Read again later: still the first one written.
      expect(Buffer.from(await new KyselyServerSecretStore(opened[3]!.db).getOrCreate("race", randomBytes(32))).toString("hex")).toBe(winner);
    } finally {
      await Promise.all(opened.map((o) => o.close()));
    }
  });

  it("is created once and then kept on PGlite", async () => {
    const pglite = await openDatabase({ dataDir: "memory://", poolMax: 1, connectTimeoutMs: 5_000, statementTimeoutMs: 0 });
    try {
      await migrateToLatest(pglite.db);
      const store = new KyselyServerSecretStore(pglite.db);
      const first = randomBytes(32);
      expect(Buffer.from(await store.getOrCreate("k", first))).toEqual(first);
      expect(Buffer.from(await store.getOrCreate("k", randomBytes(32)))).toEqual(first);
    } finally {
      await pglite.close();
    }
  });
});

describe("a page from one replica continues on another", () => {
  let db: TestDatabase;
  let a: ServiceUnderTest;
  let b: ServiceUnderTest;
  let clientA: ReturnType<typeof grpcClient>;
  let clientB: ReturnType<typeof grpcClient>;
  let admin: string;
  const auth = () => ({ authorization: `Bearer ${admin}` });

  beforeAll(async () => {
    db = await createTestDatabase();
    // Started together: both race to create the key on an empty database.
    [a, b] = await Promise.all([startTestService({ DATABASE_URL: db.url }), startTestService({ DATABASE_URL: db.url })]);
    admin = (a.bootstrapToken ?? b.bootstrapToken)!;
    clientA = grpcClient(TokenService, `127.0.0.1:${a.service.grpcPort}`);
    clientB = grpcClient(TokenService, `127.0.0.1:${b.service.grpcPort}`);
  });

  afterAll(async () => {
    clientA?.close();
    clientB?.close();
    await Promise.all([a?.service.stop(), b?.service.stop()]);
    await db?.drop();
  });

  it("walks every token, alternating replicas page by page, each exactly once", async () => {
    for (let i = 0; i < 5; i++) await clientA.unary("issueToken", { name: `p${i}`, subject: "pages@example.com" }, auth());
    const seen: string[] = [];
    let pageToken = "";
    let hops = 0;
    do {
      const client = hops++ % 2 === 0 ? clientA : clientB;
      const page = await client.unary<ListTokensResponse>("listTokens", { subject: "pages@example.com", pageSize: 2, pageToken }, auth());
      seen.push(...page.tokens.map((t) => t.name));
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    expect(seen).toEqual(["p4", "p3", "p2", "p1", "p0"]);
    expect(hops).toBe(3);
  });

  it("refuses an altered token on either replica with INVALID_ARGUMENT naming page_token", async () => {
    const page = await clientA.unary<ListTokensResponse>("listTokens", { pageSize: 1 }, auth());
    const [body, mac] = page.nextPageToken.split(".");
    const flipped = `${body!.slice(0, -1)}${body!.endsWith("A") ? "B" : "A"}.${mac}`;
    for (const client of [clientA, clientB]) {
      const error = (await client.unary("listTokens", { pageSize: 1, pageToken: flipped }, auth()).catch((e: unknown) => e)) as { code: number; details: string };
      expect({ code: error.code, details: error.details }).toEqual({ code: Code.InvalidArgument, details: "page_token: is not a page token from this service" });
    }
  });
});
