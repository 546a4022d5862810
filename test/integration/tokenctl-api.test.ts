import { execFile, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { toJson } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  InactiveReason,
  IntrospectTokenResponseSchema,
  TokenService,
  type IntrospectTokenResponse,
  type IssueTokenRequestSchema,
} from "../../gen/tokens/v1/token_service_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { startTestService, type ServiceUnderTest } from "../support/service.js";

const CLI = "dist/src/cli/tokenctl.js";
const TOKEN = /^cf-[0-9A-Za-z]{22}$/;

/** What one run of the CLI left behind. */
interface Run {
  readonly args: readonly string[];
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * tokenctl's API commands as operators run them: the built CLI in a child
 * process, talking Connect to the whole service started in-process on
 * 127.0.0.1 over a fresh PostgreSQL database.
 */
describe("tokenctl API commands", () => {
  let db: TestDatabase;
  let sut: ServiceUnderTest;
  let admin: string;
  let api: Client<typeof TokenService>;
  let addr: string;
  let scratch: string;
  /** Every run, for the final check that no stderr holds a secret. */
  const runs: Run[] = [];
  /** Every token the tests saw: the caller's, issued ones, bogus ones. */
  const secrets = new Set<string>();

  beforeAll(async () => {
    // The CLI runs from the build, as `npm run tokenctl` does.
    await promisify(execFile)("npm", ["run", "build", "--silent"]);
    db = await createTestDatabase();
    sut = await startTestService({ DATABASE_URL: db.url, TOKEN_ENVIRONMENT: "development" });
    admin = sut.bootstrapToken!;
    secrets.add(admin);
    addr = `http://127.0.0.1:${sut.service.httpPort}`;
    api = createClient(TokenService, createConnectTransport({ baseUrl: addr, httpVersion: "1.1" }));
    scratch = await mkdtemp(join(tmpdir(), "tokenctl-api-"));
  }, 120_000);

  afterAll(async () => {
    await sut?.service.stop();
    await db?.drop();
    if (scratch) await rm(scratch, { recursive: true, force: true });
  });

  /**
   * Runs the built CLI. By default as the admin (TOKENCTL_TOKEN) against the
   * service (TOKENCTL_ADDR); `env` entries override, `undefined` removes.
   */
  async function tokenctl(args: readonly string[], options: { env?: Record<string, string | undefined>; stdin?: string } = {}): Promise<Run> {
    const env: Record<string, string | undefined> = { ...process.env, TOKENCTL_ADDR: addr, TOKENCTL_TOKEN: admin, ...options.env };
    for (const key of Object.keys(env)) if (env[key] === undefined) delete env[key];
    const child = spawn("node", [CLI, ...args], { env, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    child.stdin.end(options.stdin ?? "");
    const code = await new Promise<number | null>((resolve, reject) => {
      child.on("error", reject);
      child.on("close", resolve);
    });
    const run = { args, code, stdout, stderr };
    runs.push(run);
    for (const secret of secrets) expect(stderr, `stderr of tokenctl ${args.join(" ")}`).not.toContain(secret);
    return run;
  }

  const as = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });

  /** Issues through the API as the admin, remembering the token as a secret. */
  async function apiIssue(request: MessageInitShape<typeof IssueTokenRequestSchema>) {
    const answer = await api.issueToken(request, as(admin));
    secrets.add(answer.token);
    return answer;
  }

  /** Issues through the CLI; expects success and returns the token. */
  async function cliIssue(args: readonly string[]): Promise<{ token: string; run: Run }> {
    const run = await tokenctl(["issue", ...args]);
    expect(run).toMatchObject({ code: 0, stdout: expect.stringMatching(/^cf-[0-9A-Za-z]{22}\n$/) });
    const token = run.stdout.trim();
    secrets.add(token);
    return { token, run };
  }

  const introspect = (token: string) => api.introspectToken({ token }, as(admin));

  describe("issue", () => {
    it("prints only the token on stdout, and no warning for a read-only token", async () => {
      const { token, run } = await cliIssue(["--name", "reader", "--subject", "reader@example.com", "--scopes", "orders.read,billing:read"]);
      expect(run.stderr).toBe("");
      expect(await introspect(token)).toMatchObject({ active: true, sub: "reader@example.com", tokenName: "reader", scopes: ["orders.read", "billing:read"] });
    });

    it("with --json prints the whole answer, token included", async () => {
      const run = await tokenctl(["issue", "--name", "as-json", "--subject", "json@example.com", "--teams", "payments", "--json"]);
      expect(run).toMatchObject({ code: 0, stderr: "" });
      const answer = JSON.parse(run.stdout) as { token: string; info: Record<string, unknown> };
      secrets.add(answer.token);
      expect(answer.token).toMatch(TOKEN);
      expect(answer.info).toMatchObject({ name: "as-json", subject: "json@example.com", teams: ["payments"], state: "TOKEN_STATE_ACTIVE", displayHint: `cf-…${answer.token.slice(-4)}` });
      expect(await introspect(answer.token)).toMatchObject({ active: true, jti: answer.info["id"] });
    });

    it.each([
      [["--admin"], ["tokenctl: warning: this token is an admin token"]],
      [["--scopes", "orders.read,orders.write,tokens.introspect"], ["tokenctl: warning: this token has scopes beyond read: orders.write, tokens.introspect"]],
      [
        ["--admin", "--scopes", "tokens.create", "--json"],
        ["tokenctl: warning: this token is an admin token", "tokenctl: warning: this token has scopes beyond read: tokens.create"],
      ],
    ])("warns on stderr about elevated claims: %j", async (flags, warnings) => {
      const run = await tokenctl(["issue", "--name", "elevated", "--subject", "elevated@example.com", ...flags]);
      expect(run.code).toBe(0);
      expect(run.stderr.trimEnd().split("\n")).toEqual(warnings);
      const token = flags.includes("--json") ? (JSON.parse(run.stdout) as { token: string }).token : run.stdout.trim();
      secrets.add(token);
      expect(token).toMatch(TOKEN);
    });

    it("refuses a bad --ttl, a bad --metadata and a missing --name with exit 64, before calling", async () => {
      for (const args of [
        ["--name", "x", "--ttl", "12 hours"],
        ["--name", "x", "--metadata", "novalue"],
        ["--name", "x", "--metadata", "k=1", "--metadata", "k=2"],
        ["--subject", "x@example.com"],
      ]) {
        const run = await tokenctl(["issue", ...args]);
        expect(run, args.join(" ")).toMatchObject({ code: 64, stdout: "" });
      }
    });
  });

  /**
   * The claims a token gets depend only on the request, not on whether it
   * came through tokenctl or straight through the API.
   */
  describe("a token issued by the CLI carries the same claims as one issued through the API with the same parameters", () => {
    interface Params {
      readonly name: string;
      readonly subject?: string;
      readonly fullName?: string;
      readonly isAdmin?: boolean;
      readonly teams?: string[];
      readonly scopes?: string[];
      readonly namespaces?: string[];
      readonly ttl?: [flag: string, ms: number];
      readonly metadata?: Record<string, string>;
    }

    const cases: [string, Params][] = [
      ["only a name (caller's subject, default lifetime)", { name: "minimal" }],
      [
        "every parameter, in unsorted mixed case",
        {
          name: "Deploy Bot",
          subject: "Deploy@Example.com",
          fullName: "Deploy Bot Ünïcode",
          teams: ["payments", "Edge", "a.b:c/d-e"],
          scopes: ["orders.write", "orders.read", "Billing.Read", "tokens.introspect"],
          namespaces: ["prod", "eu-1"],
          ttl: ["12h", 12 * 3_600_000],
          metadata: { owner: "ops", note: "a=b, c", "z.z": "" },
        },
      ],
      ["an admin token with a lifetime in minutes", { name: "second admin", subject: "ops2@example.com", isAdmin: true, ttl: ["90m", 90 * 60_000] }],
      ["a lifetime in seconds", { name: "short", subject: "short@example.com", scopes: ["a.read"], ttl: ["3600s", 3_600_000] }],
    ];

    function cliArgs(p: Params): string[] {
      return [
        "--name", p.name,
        ...(p.subject !== undefined ? ["--subject", p.subject] : []),
        ...(p.fullName !== undefined ? ["--full-name", p.fullName] : []),
        ...(p.isAdmin ? ["--admin"] : []),
        ...(p.teams ? ["--teams", p.teams.join(",")] : []),
        ...(p.scopes ? ["--scopes", p.scopes.join(",")] : []),
        ...(p.namespaces ? ["--namespaces", p.namespaces.join(",")] : []),
        ...(p.ttl ? ["--ttl", p.ttl[0]] : []),
        ...Object.entries(p.metadata ?? {}).flatMap(([k, v]) => ["--metadata", `${k}=${v}`]),
      ];
    }

    /** Every claim but the per-token ones: the ids, and times (their difference, the lifetime, is kept). */
    function comparable(answer: IntrospectTokenResponse) {
      expect(answer.active).toBe(true);
      const { clientId, jti, iat, nbf, exp, ...claims } = toJson(IntrospectTokenResponseSchema, answer, { alwaysEmitImplicit: true }) as Record<string, unknown>;
      for (const perToken of [clientId, jti, iat, nbf]) expect(perToken).toBeTruthy();
      return { ...claims, lifetimeSeconds: Number(answer.exp - answer.iat), expires: exp !== "0" };
    }

    it.each(cases)("%s", async (_label, p) => {
      const viaCli = await cliIssue(cliArgs(p));
      const viaApi = await apiIssue({
        name: p.name,
        subject: p.subject ?? "",
        fullName: p.fullName ?? "",
        isAdmin: p.isAdmin ?? false,
        teams: p.teams ?? [],
        scopes: p.scopes ?? [],
        namespaces: p.namespaces ?? [],
        metadata: p.metadata ?? {},
        ...(p.ttl ? { expiry: { case: "ttl" as const, value: durationFromMs(p.ttl[1]) } } : {}),
      });
      const [cli, direct] = await Promise.all([introspect(viaCli.token), introspect(viaApi.token)]);
      expect(comparable(cli)).toEqual(comparable(direct));
      // And the claims are what was asked, untouched (no default scopes, no reordering, no case folding).
      expect(cli).toMatchObject({ tokenName: p.name, scopes: p.scopes ?? [], teams: p.teams ?? [], namespaces: p.namespaces ?? [], metadata: p.metadata ?? {}, isAdmin: p.isAdmin ?? false });
      if (p.subject) expect(cli.sub).toBe(p.subject);
      if (p.ttl) expect(Number(cli.exp - cli.iat)).toBe(p.ttl[1] / 1000);
    });
  });

  describe("list", () => {
    const subject = "list@example.com";
    let ids: string[]; // newest first, as the service lists them
    let hints: string[];

    beforeAll(async () => {
      const issued = [];
      for (const n of [1, 2, 3, 4, 5]) issued.push(await apiIssue({ name: `list-${n}`, subject, teams: n % 2 === 0 ? ["even"] : [] }));
      ids = issued.map((t) => t.info!.id).reverse();
      hints = issued.map((t) => t.info!.displayHint).reverse();
    });

    const jsonLines = (stdout: string) => stdout.trimEnd().split("\n").map((line) => JSON.parse(line) as Record<string, unknown>);

    it("prints a table: id, name, subject, state, hint, expiry", async () => {
      const run = await tokenctl(["list", "--subject", subject]);
      expect(run).toMatchObject({ code: 0, stderr: "" });
      const [header, ...rows] = run.stdout.trimEnd().split("\n");
      expect(header!.split(/\s+/)).toEqual(["ID", "NAME", "SUBJECT", "STATE", "HINT", "EXPIRES"]);
      expect(rows.map((row) => row.split(/\s+/).slice(0, 5))).toEqual(ids.map((id, i) => [id, `list-${5 - i}`, subject, "active", hints[i]]));
      for (const row of rows) expect(row).toMatch(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    });

    it("prints JSON lines with --json, filtered by --team", async () => {
      const all = await tokenctl(["list", "--subject", subject, "--json"]);
      expect(all).toMatchObject({ code: 0, stderr: "" });
      expect(jsonLines(all.stdout).map((t) => t["id"])).toEqual(ids);
      expect(jsonLines(all.stdout)[0]).toMatchObject({ name: "list-5", subject, state: "TOKEN_STATE_ACTIVE", revokedBy: "" });
      const even = await tokenctl(["list", "--subject", subject, "--team", "even", "--json"]);
      expect(jsonLines(even.stdout).map((t) => t["name"])).toEqual(["list-4", "list-2"]);
    });

    it("pages: one page and a hint on stderr, --page-token for the next, --all for everything", async () => {
      const first = await tokenctl(["list", "--subject", subject, "--page-size", "2", "--json"]);
      expect(first.code).toBe(0);
      expect(jsonLines(first.stdout).map((t) => t["id"])).toEqual(ids.slice(0, 2));
      const next = /^tokenctl: more tokens: pass --all, or --page-token (\S+)\n$/.exec(first.stderr)?.[1];
      expect(next).toBeDefined();
      const second = await tokenctl(["list", "--subject", subject, "--page-size", "2", "--page-token", next!, "--json"]);
      expect(jsonLines(second.stdout).map((t) => t["id"])).toEqual(ids.slice(2, 4));

      const everything = await tokenctl(["list", "--subject", subject, "--page-size", "2", "--all", "--json"]);
      expect(everything).toMatchObject({ code: 0, stderr: "" });
      expect(jsonLines(everything.stdout).map((t) => t["id"])).toEqual(ids);
      const table = await tokenctl(["list", "--subject", subject, "--page-size", "2", "--all"]);
      expect(table.stdout.trimEnd().split("\n")).toHaveLength(1 + ids.length);
    });

    it("hides revoked tokens unless --include-revoked", async () => {
      await api.revokeToken({ target: { case: "tokenId", value: ids[1]! } }, as(admin));
      const active = await tokenctl(["list", "--subject", subject, "--json"]);
      expect(jsonLines(active.stdout).map((t) => t["id"])).toEqual(ids.filter((_, i) => i !== 1));
      const withRevoked = await tokenctl(["list", "--subject", subject, "--include-revoked"]);
      const revokedRow = withRevoked.stdout.split("\n").find((row) => row.startsWith(ids[1]!));
      expect(revokedRow?.split(/\s+/)[3]).toBe("revoked");
    });

    it("says so on stderr when nothing matches", async () => {
      expect(await tokenctl(["list", "--subject", "nobody@example.com"])).toMatchObject({ code: 0, stdout: "", stderr: "tokenctl: no tokens match\n" });
    });
  });

  describe("revoke", () => {
    it("by the token as an argument", async () => {
      const issued = await apiIssue({ name: "revoke-arg", subject: "revoke@example.com" });
      const run = await tokenctl(["revoke", issued.token, "--reason", "leaked"]);
      expect(run).toMatchObject({ code: 0, stderr: "", stdout: `revoked ${issued.info!.id} (revoke-arg, ${issued.info!.displayHint})\n` });
      expect(await introspect(issued.token)).toMatchObject({ active: false, reason: InactiveReason.REVOKED });
    });

    it("by the token on stdin, given as -", async () => {
      const issued = await apiIssue({ name: "revoke-stdin", subject: "revoke@example.com" });
      const run = await tokenctl(["revoke", "-", "--json"], { stdin: `${issued.token}\n` });
      expect(run).toMatchObject({ code: 0, stderr: "" });
      expect(JSON.parse(run.stdout)).toMatchObject({ alreadyRevoked: false, info: { id: issued.info!.id, state: "TOKEN_STATE_REVOKED", revokeReason: "" } });
      expect(await introspect(issued.token)).toMatchObject({ active: false, reason: InactiveReason.REVOKED });
    });

    it("by --id, idempotently", async () => {
      const issued = await apiIssue({ name: "revoke-id", subject: "revoke@example.com" });
      const id = issued.info!.id;
      expect(await tokenctl(["revoke", "--id", id])).toMatchObject({ code: 0, stderr: "", stdout: `revoked ${id} (revoke-id, ${issued.info!.displayHint})\n` });
      expect(await tokenctl(["revoke", "--id", id])).toMatchObject({ code: 0, stderr: "", stdout: `already revoked ${id} (revoke-id, ${issued.info!.displayHint})\n` });
      expect(await introspect(issued.token)).toMatchObject({ active: false, reason: InactiveReason.REVOKED });
    });

    it("an unknown id: exit 1 with not_found", async () => {
      const id = randomUUID();
      expect(await tokenctl(["revoke", "--id", id])).toMatchObject({ code: 1, stdout: "", stderr: "tokenctl: not_found: token_id: no such token\n" });
    });

    it("an unknown token value succeeds (RFC 7009 §2.2)", async () => {
      expect(await tokenctl(["revoke", "-"], { stdin: "cf-AAAAAAAAAAAAAAAAAAAAAA" })).toMatchObject({ code: 0, stdout: "revoked\n", stderr: "" });
    });

    it.each([[[]], [["--id", randomUUID(), "--legacy-jti", "j"]], [["-", "--id", randomUUID()]], [["a", "b"]]])("needs exactly one target: %j → exit 64", async (args) => {
      expect(await tokenctl(["revoke", ...args])).toMatchObject({ code: 64, stdout: "" });
    });
  });

  describe("introspect", () => {
    it("an active token: the verdict, then its claims", async () => {
      const issued = await apiIssue({ name: "look", subject: "look@example.com", scopes: ["orders.read", "orders.write"], teams: ["edge"], metadata: { env: "ci" } });
      const run = await tokenctl(["introspect", issued.token]);
      expect(run).toMatchObject({ code: 0, stderr: "" });
      const lines = run.stdout.trimEnd().split("\n");
      expect(lines[0]).toBe("active");
      expect(lines).toEqual(
        expect.arrayContaining([
          "token_name:  look",
          "sub:         look@example.com",
          `jti:         ${issued.info!.id}`,
          "token_kind:  opaque",
          "environment: development",
          "is_admin:    false",
          "scope:       orders.read orders.write",
          "teams:       edge",
          "metadata:    env=ci",
          "iss:         cf-token-service",
        ]),
      );
      expect(lines.some((l) => /^exp: {9}\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/.test(l))).toBe(true);
    });

    it("reads the token from stdin with -, and prints the answer as JSON with --json", async () => {
      const issued = await apiIssue({ name: "look-stdin", subject: "look@example.com" });
      const run = await tokenctl(["introspect", "-", "--json"], { stdin: issued.token });
      expect(run).toMatchObject({ code: 0, stderr: "" });
      expect(JSON.parse(run.stdout)).toMatchObject({ active: true, sub: "look@example.com", jti: issued.info!.id, tokenName: "look-stdin", tokenKind: "TOKEN_KIND_OPAQUE" });
    });

    it("a revoked token: inactive, with the reason and message, exit 0", async () => {
      const issued = await apiIssue({ name: "look-revoked", subject: "look@example.com" });
      await api.revokeToken({ target: { case: "token", value: issued.token } }, as(admin));
      expect(await tokenctl(["introspect", "-"], { stdin: issued.token })).toMatchObject({
        code: 0,
        stderr: "",
        stdout: "inactive\nreason:      revoked\nmessage:     The token has been revoked.\n",
      });
      expect(JSON.parse((await tokenctl(["introspect", issued.token, "--json"])).stdout)).toMatchObject({ active: false, reason: "INACTIVE_REASON_REVOKED", scopes: [] });
    });

    it("a malformed value: inactive", async () => {
      expect(await tokenctl(["introspect", "nonsense"])).toMatchObject({ code: 0, stdout: "inactive\nreason:      malformed\nmessage:     The token is malformed.\n" });
    });
  });

  describe("the caller's token", () => {
    it.each([[["issue", "--name", "x"]], [["list"]], [["revoke", "--id", randomUUID()]], [["introspect", "-"]]])("missing: %j exits 64 and says how to give one", async (args) => {
      const run = await tokenctl(args, { env: { TOKENCTL_TOKEN: undefined } });
      expect(run).toMatchObject({ code: 64, stdout: "" });
      expect(run.stderr).toMatch(/^tokenctl: no caller token: set TOKENCTL_TOKEN or pass --token-file <path>/);
    });

    it("is read from --token-file, which wins over TOKENCTL_TOKEN", async () => {
      const file = join(scratch, "admin-token");
      await writeFile(file, `${admin}\n`, { mode: 0o600 });
      const run = await tokenctl(["list", "--token-file", file, "--page-size", "1"], { env: { TOKENCTL_TOKEN: "cf-BBBBBBBBBBBBBBBBBBBBBB" } });
      expect(run.code).toBe(0);
      expect(run.stdout).toMatch(/^ID/);
    });

    it("warns when the token file is readable by others", async () => {
      const file = join(scratch, "open-token");
      await writeFile(file, admin, { mode: 0o644 });
      const run = await tokenctl(["list", "--token-file", file, "--page-size", "1"], { env: { TOKENCTL_TOKEN: undefined } });
      expect(run.code).toBe(0);
      expect(run.stderr).toContain(`tokenctl: warning: ${file} is readable by other users; chmod 600 it`);
    });

    it("is never taken from a --token flag, and the refusal does not repeat it", async () => {
      const bogus = "cf-CCCCCCCCCCCCCCCCCCCCCC";
      secrets.add(bogus);
      for (const args of [["list", "--token", bogus], ["list", `--token=${bogus}`]]) {
        const run = await tokenctl(args);
        expect(run).toMatchObject({ code: 64, stdout: "" });
        expect(run.stderr).toContain("there is no --token option");
      }
    });

    it("unknown: exit 1 with unauthenticated, the token not repeated", async () => {
      const bogus = "cf-DDDDDDDDDDDDDDDDDDDDDD";
      secrets.add(bogus);
      const run = await tokenctl(["list"], { env: { TOKENCTL_TOKEN: bogus } });
      expect(run).toMatchObject({ code: 1, stdout: "" });
      expect(run.stderr).toMatch(/^tokenctl: unauthenticated: \S.*\n$/);
    });

    it("without the scope a command needs: exit 1 with permission_denied and the service's message", async () => {
      const reader = await apiIssue({ name: "only-reads", subject: "reader2@example.com", scopes: ["tokens.read"] });
      const env = { TOKENCTL_TOKEN: reader.token };
      expect(await tokenctl(["issue", "--name", "x"], { env })).toMatchObject({
        code: 1,
        stdout: "",
        stderr: "tokenctl: permission_denied: this call needs the `tokens.create` scope, which your token does not have\n",
      });
      expect(await tokenctl(["introspect", "-"], { env, stdin: admin })).toMatchObject({
        code: 1,
        stdout: "",
        stderr: "tokenctl: permission_denied: this call needs the `tokens.introspect` scope, which your token does not have\n",
      });
      // What it may do, it does: its own subject's tokens.
      expect(await tokenctl(["list", "--json"], { env })).toMatchObject({ code: 0, stdout: expect.stringContaining('"name":"only-reads"') });
    });
  });

  describe("the service address", () => {
    it("speaks cleartext HTTP/2 when the URL says h2c://", async () => {
      const run = await tokenctl(["introspect", "-"], { env: { TOKENCTL_ADDR: `h2c://127.0.0.1:${sut.service.httpPort}` }, stdin: admin });
      expect(run).toMatchObject({ code: 0, stderr: "" });
      expect(run.stdout).toMatch(/^active\n/);
    });

    it("--addr wins over TOKENCTL_ADDR", async () => {
      const run = await tokenctl(["list", "--addr", addr, "--page-size", "1"], { env: { TOKENCTL_ADDR: "http://127.0.0.1:9" } });
      expect(run.code).toBe(0);
    });

    it("unreachable: exit 1 with unavailable", async () => {
      const run = await tokenctl(["list"], { env: { TOKENCTL_ADDR: "http://127.0.0.1:9" } });
      expect(run).toMatchObject({ code: 1, stdout: "" });
      expect(run.stderr).toMatch(/^tokenctl: unavailable: /);
    });

    it("not a URL tokenctl knows: exit 64", async () => {
      for (const bad of ["127.0.0.1:8080", "ftp://127.0.0.1:8080"]) {
        expect(await tokenctl(["list"], { env: { TOKENCTL_ADDR: bad } })).toMatchObject({ code: 64, stdout: "" });
      }
    });
  });

  describe("usage mistakes: exit 64, nothing on stdout, no call made", () => {
    it.each([
      [["list", "--bogus"], "Unknown option '--bogus'"],
      [["introspect", "--json"], "introspect needs one token argument, or - to read it from stdin"],
      [["list", "--page-size", "ten"], "--page-size must be a whole number"],
    ])("%j", async (args, message) => {
      const run = await tokenctl(args);
      expect(run).toMatchObject({ code: 64, stdout: "" });
      expect(run.stderr).toContain(message);
    });

    it("a token pasted where no argument belongs is not repeated", async () => {
      const pasted = "cf-EEEEEEEEEEEEEEEEEEEEEE";
      secrets.add(pasted);
      for (const args of [["list", pasted], ["issue", "--name", "x", pasted], ["introspect", "a", pasted]]) {
        expect(await tokenctl(args), args.join(" ")).toMatchObject({ code: 64, stdout: "" });
      }
    });
  });

  it("help lists every command", async () => {
    const run = await tokenctl(["help"]);
    expect(run.code).toBe(0);
    for (const command of ["issue", "list", "revoke", "introspect", "migrate", "bootstrap", "TOKENCTL_ADDR", "TOKENCTL_TOKEN", "--token-file"]) expect(run.stderr).toContain(command);
  });

  // Last, after every other test has run (vitest runs a file's tests in order).
  it("never printed the caller's token or any issued token on stderr", () => {
    expect(runs.length).toBeGreaterThan(40);
    expect(secrets.size).toBeGreaterThan(20);
    for (const run of runs) for (const secret of secrets) expect(run.stderr, `stderr of tokenctl ${run.args.join(" ")}`).not.toContain(secret);
  });
});
