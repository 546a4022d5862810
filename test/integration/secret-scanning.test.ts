import { createHash, generateKeyPairSync, sign, type KeyObject } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { InactiveReason, TokenService, type IntrospectTokenResponse, type IssueTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

/**
 * Leaked tokens revoked within seconds: GitHub secret-scanning reports
 * signed with keys this test makes, GitLab's revocation API with a bearer
 * token. Nothing is revoked unless the report is authentic, whole and within
 * bounds; a leaked token is inactive on every replica through the revocation
 * push (staleness set far out, so only the push can explain it).
 */
const KEY_ID = "test-key-1";
const GITLAB_TOKEN = "gitlab-revocation-token-0123456789abcdef";
const dir = mkdtempSync(join(tmpdir(), "secret-scanning-"));
const github = generateKeyPairSync("ec", { namedCurve: "P-256" });
const other = generateKeyPairSync("ec", { namedCurve: "P-256" });
const keysFile = join(dir, "github-keys.json");
writeFileSync(keysFile, JSON.stringify({ public_keys: [{ key_identifier: KEY_ID, key: github.publicKey.export({ type: "spki", format: "pem" }), is_current: true }] }));

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");
const signBody = (body: string, key: KeyObject = github.privateKey) => sign("sha256", Buffer.from(body), key).toString("base64");

afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Replicas {
  a: ServiceUnderTest;
  b?: ServiceUnderTest;
}

function harness(replicas: () => Replicas) {
  const base = () => `http://127.0.0.1:${replicas().a.service.httpPort}`;
  const report = (body: string, headers: Record<string, string> = { "github-public-key-identifier": KEY_ID, "github-public-key-signature": signBody(body) }) =>
    fetch(`${base()}/secret-scanning/github`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body });
  const reportOf = (tokens: string[]) => JSON.stringify(tokens.map((token) => ({ token, type: "cf_api_token", url: "https://github.com/octo/repo/blob/abc/.env", source: "content" })));
  return { base, report, reportOf };
}

describe("secret scanning on two replicas sharing PostgreSQL", () => {
  let db: TestDatabase;
  let a: ServiceUnderTest;
  let b: ServiceUnderTest;
  let clientA: ReturnType<typeof grpcClient>;
  let clientB: ReturnType<typeof grpcClient>;
  let admin: string;
  const auth = () => ({ authorization: `Bearer ${admin}` });
  const issue = () => clientA.unary<IssueTokenResponse>("issueToken", { name: "leaky", subject: "dev@example.com" }, auth());
  const state = (client: ReturnType<typeof grpcClient>, token: string) =>
    client.unary<IntrospectTokenResponse>("introspectToken", { token }, auth()).then((r) => (r.active ? "active" : InactiveReason[r.reason]));
  const { report, reportOf, base } = harness(() => ({ a, b }));

  beforeAll(async () => {
    db = await createTestDatabase();
    const env = {
      DATABASE_URL: db.url,
      CACHE_STALENESS: "10m",
      GITHUB_SCANNING_KEYS_FILE: keysFile,
      LEAK_REPORT_MAX_TOKENS: "5",
      LEAK_REPORT_MAX_BYTES: "8192",
      GITLAB_REVOCATION_TOKEN: GITLAB_TOKEN,
    };
    a = await startTestService(env);
    b = await startTestService(env);
    admin = a.bootstrapToken!;
    clientA = grpcClient(TokenService, `127.0.0.1:${a.service.grpcPort}`);
    clientB = grpcClient(TokenService, `127.0.0.1:${b.service.grpcPort}`);
  });

  afterAll(async () => {
    clientA?.close();
    clientB?.close();
    await Promise.all([a?.service.stop(), b?.service.stop()]);
    await db?.drop();
  });

  it("revokes a leaked token on every replica at once, answers the feedback format, and raises token_leaked", async () => {
    const { token, info } = await issue();
    expect(await state(clientB, token)).toBe("active"); // cached on B for up to 10 minutes
    const unknown = "cf-" + "Z".repeat(22);
    const response = await report(reportOf([token, unknown, "not-a-token"]));
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual([
      { token_hash: sha256(token), token_type: "cf_api_token", label: "true_positive" },
      { token_hash: sha256(unknown), token_type: "cf_api_token", label: "false_positive" },
      { token_hash: sha256("not-a-token"), token_type: "cf_api_token", label: "false_positive" },
    ]);
    expect(await state(clientA, token)).toBe("REVOKED");
    await expect.poll(() => state(clientB, token), { timeout: 5_000, interval: 5 }).toBe("REVOKED");
    await expect
      .poll(async () => {
        const { events } = await clientA.unary<{ events: { type: string; tokenId: string; severity: number; message: string }[] }>("listSecurityEvents", {}, auth());
        return events.find((e) => e.type === "token_leaked" && e.tokenId === info!.id);
      }, { timeout: 15_000, interval: 200 })
      .toMatchObject({ severity: 3, message: expect.stringContaining("https://github.com/octo/repo/blob/abc/.env") });
    // The token itself is never logged.
    expect(a.logs.raw.join("\n")).not.toContain(token);
  });

  it("a replayed report is harmless: the same answer, nothing more revoked", async () => {
    const { token } = await issue();
    const body = reportOf([token]);
    const headers = { "github-public-key-identifier": KEY_ID, "github-public-key-signature": signBody(body) };
    const first = await (await report(body, headers)).json();
    const second = await report(body, headers);
    expect(second.status).toBe(200);
    expect(await second.json()).toEqual(first);
  });

  it.each([
    ["a tampered body", (body: string) => ({ body: body.replace("octo", "octa"), headers: { "github-public-key-identifier": KEY_ID, "github-public-key-signature": signBody(body) } })],
    ["a signature by another key", (body: string) => ({ body, headers: { "github-public-key-identifier": KEY_ID, "github-public-key-signature": signBody(body, other.privateKey) } })],
    ["an unknown key id", (body: string) => ({ body, headers: { "github-public-key-identifier": "nope", "github-public-key-signature": signBody(body) } })],
    ["a garbage signature", (body: string) => ({ body, headers: { "github-public-key-identifier": KEY_ID, "github-public-key-signature": "MEUCIQ==" } })],
    ["no signature headers", (body: string) => ({ body, headers: {} })],
  ])("refuses %s with 401 and revokes nothing", async (_name, tamper) => {
    const { token } = await issue();
    const { body, headers } = tamper(reportOf([token]));
    const response = await report(body, headers);
    expect(response.status).toBe(401);
    expect(await response.text()).not.toContain(token);
    expect(await state(clientA, token)).toBe("active");
  });

  it("refuses huge bodies and too many tokens whole (413), revoking none of them", async () => {
    const { token } = await issue();
    const huge = JSON.stringify([{ token, type: "cf_api_token", url: "x".repeat(10_000) }]);
    expect((await report(huge)).status).toBe(413);
    const many = reportOf([token, ...Array.from({ length: 5 }, (_, i) => `cf-${String(i).repeat(22)}`)]);
    expect((await report(many)).status).toBe(413);
    const notArray = JSON.stringify({ token });
    expect((await report(notArray)).status).toBe(400);
    expect(await state(clientA, token)).toBe("active");
  });

  it("GitLab: lists the revocable type and revokes with the bearer token; refuses without it", async () => {
    const types = await fetch(`${base()}/v1/revocable_token_types`, { headers: { authorization: `Bearer ${GITLAB_TOKEN}` } });
    expect(await types.json()).toEqual({ types: ["gitleaks_rule_id_cf_api_token"] });
    expect((await fetch(`${base()}/v1/revocable_token_types`)).status).toBe(401);

    const { token } = await issue();
    const body = JSON.stringify([{ type: "gitleaks_rule_id_cf_api_token", token, location: "https://gitlab.example.com/g/p/-/blob/main/.env" }]);
    const post = (authorization: string) => fetch(`${base()}/v1/revoke`, { method: "POST", headers: { "content-type": "application/json", authorization }, body });
    expect((await post("Bearer wrong-token-wrong-token-wrong-token")).status).toBe(401);
    expect(await state(clientA, token)).toBe("active");
    expect((await post(`Bearer ${GITLAB_TOKEN}`)).status).toBe(204);
    await expect.poll(() => state(clientB, token), { timeout: 5_000, interval: 5 }).toBe("REVOKED");
    // Idempotent.
    expect((await post(`Bearer ${GITLAB_TOKEN}`)).status).toBe(204);
  });
});

describe("secret scanning on PGlite", () => {
  let svc: ServiceUnderTest;
  let client: ReturnType<typeof grpcClient>;
  const { report, reportOf } = harness(() => ({ a: svc }));

  beforeAll(async () => {
    svc = await startTestService({ DATA_DIR: "memory://", GITHUB_SCANNING_KEYS_FILE: keysFile });
    client = grpcClient(TokenService, `127.0.0.1:${svc.service.grpcPort}`);
  });

  afterAll(async () => {
    client?.close();
    await svc?.service.stop();
  });

  it("revokes a reported token and leaves an unknown one alone", async () => {
    const auth = { authorization: `Bearer ${svc.bootstrapToken!}` };
    const { token } = await client.unary<IssueTokenResponse>("issueToken", { name: "leaky", subject: "dev@example.com" }, auth);
    const response = await report(reportOf([token]));
    expect(await response.json()).toEqual([{ token_hash: sha256(token), token_type: "cf_api_token", label: "true_positive" }]);
    const answer = await client.unary<IntrospectTokenResponse>("introspectToken", { token }, auth);
    expect(answer.reason).toBe(InactiveReason.REVOKED);
  });

  it("refuses to start with a missing, unreadable or wrong-kind key file, naming the key", async () => {
    const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const wrong = join(dir, "rsa.json");
    writeFileSync(wrong, JSON.stringify({ public_keys: [{ key_identifier: "r", key: rsa.publicKey.export({ type: "spki", format: "pem" }) }] }));
    const garbage = join(dir, "garbage.json");
    writeFileSync(garbage, "not json");
    for (const [file, why] of [[join(dir, "missing.json"), "ENOENT"], [wrong, "public_keys[0] is not an EC P-256 public key"], [garbage, "not JSON"]] as const) {
      await expect(startTestService({ DATA_DIR: "memory://", GITHUB_SCANNING_KEYS_FILE: file })).rejects.toMatchObject({
        name: "ConfigError",
        message: expect.stringMatching(new RegExp(`GITHUB_SCANNING_KEYS_FILE=.*${why.replace(/[[\]]/g, "\\$&")}`)),
      });
    }
  });

  it("is not served without keys, and GitLab's API not without its token", async () => {
    const plain = await startTestService({ DATA_DIR: "memory://" });
    try {
      const base = `http://127.0.0.1:${plain.service.httpPort}`;
      expect((await fetch(`${base}/secret-scanning/github`, { method: "POST", body: "[]", headers: { "content-type": "application/json" } })).status).toBe(404);
      expect((await fetch(`${base}/v1/revocable_token_types`)).status).toBe(404);
    } finally {
      await plain.service.stop();
    }
  });
});
