/**
 * Leak to inactive (issue 13): how long after GitHub's secret scanning
 * reports one of our live tokens is it (a) answered by the replica that got
 * the report and (b) inactive on another replica that had it cached.
 *
 * Per series (one per revocation transport, `LEAK_TRANSPORTS`, default
 * `notify,poll`): a fresh database on the PostgreSQL at BENCH_DATABASE_URL
 * (default 127.0.0.1:5432), two replicas as child processes sharing it with
 * a GitHub key file made here, N tokens (`LEAK_TOKENS`, default 100) issued
 * through A's IssueToken, each introspected once on B (cached there for
 * CACHE_STALENESS = 10 min, so only the revocation push or poll can make B
 * answer it inactive). Then, one token at a time, a signed one-token report
 * goes to A's `POST /secret-scanning/github` while B's IntrospectToken is
 * polled for the token (gRPC, a gateway credential with only
 * `tokens.introspect`, one call at a time with a 1 ms pause between) until it
 * answers REVOKED. Both times are from just before the report is sent; the
 * time on B is when the first inactive answer arrived, so it overstates by
 * at most one poll round (~1-2 ms). A random gap of 10 ms plus up to one
 * poll interval separates tokens: a fixed short gap would send each report
 * just after the poll that revealed the previous one, at one phase of the
 * poll transport's interval (measured: p50 220 ms instead of ~half of 250).
 *
 * Prints p50/p90/p99/max of both, and writes bench/results/leak-latency.json.
 * Fails if any feedback label is not `true_positive` or any token stays
 * active on B for 10 s.
 *
 *   nice npm run bench:leak
 *   LEAK_TOKENS=20 LEAK_TRANSPORTS=notify nice npm run bench:leak
 */
import { generateKeyPairSync, randomBytes, sign } from "node:crypto";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { resolve } from "node:path";
import { performance } from "node:perf_hooks";
import pg from "pg";
import { InactiveReason } from "../gen/tokens/v1/token_service_pb.js";
import { SCOPES } from "../src/domain/model.js";
import { mintToken } from "../src/domain/token-format.js";
import { RESULTS_DIR, TMP_DIR, quantile, round, sleep, sortedCopy } from "./common.js";
import { tokenClient } from "./grpc-client.js";
import { adminDatabaseUrl, databaseUrl, dropDatabase, ensurePostgres } from "./postgres.js";
import { startTokenService } from "./processes.js";

const N = Number(process.env["LEAK_TOKENS"] ?? 100);
const TRANSPORTS = (process.env["LEAK_TRANSPORTS"] ?? "notify,poll").split(",").map((t) => t.trim()) as ("notify" | "poll")[];
const ADMIN_URL = adminDatabaseUrl();
const KEY_ID = "bench-leak-key";
const GIVE_UP_MS = 10_000;
/** REVOCATION_POLL_INTERVAL for the poll series (the default, stated so the gap below matches it). */
const POLL_INTERVAL_MS = 250;

interface Series {
  transport: string;
  tokens: number;
  labels: Record<string, number>;
  answerOnA: Summary;
  inactiveOnB: Summary;
  pollsOnB: number;
}

interface Summary {
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
}

function summary(values: readonly number[]): Summary {
  const sorted = sortedCopy(values);
  return { p50Ms: round(quantile(sorted, 0.5)), p90Ms: round(quantile(sorted, 0.9)), p99Ms: round(quantile(sorted, 0.99)), maxMs: round(quantile(sorted, 1)) };
}

/** Writes a caller token straight into the store (as bench/bulk-revoke.ts does). */
async function insertCaller(db: pg.Client, admin: boolean): Promise<string> {
  const caller = mintToken("development");
  const now = new Date();
  await db.query(
    `INSERT INTO tokens (id, digest, display_hint, name, subject, full_name, teams, scopes, namespaces, is_admin, metadata, environment, created_at, created_by, expires_at)
     VALUES (gen_random_uuid(), $1, $2, $3, $4, '', '{}', $5, '{}', $6, '{}', 'development', $7, 'bench', $8)`,
    [caller.digest, caller.displayHint, admin ? "bench-admin" : "bench-gateway", admin ? "admin@bench" : "gateway@bench", admin ? Object.values(SCOPES) : [SCOPES.introspect], admin, now, new Date(now.getTime() + 86_400_000)],
  );
  return caller.token;
}

async function runSeries(transport: "notify" | "poll", keysFile: string, privateKey: ReturnType<typeof generateKeyPairSync>["privateKey"]): Promise<Series> {
  const name = `tis_bench_leak_${randomBytes(4).toString("hex")}`;
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  const url = databaseUrl(ADMIN_URL, name);
  const env = {
    DATABASE_URL: url,
    REVOCATION_TRANSPORT: transport,
    REVOCATION_POLL_INTERVAL: `${POLL_INTERVAL_MS}ms`,
    CACHE_STALENESS: "10m",
    GITHUB_SCANNING_KEYS_FILE: keysFile,
    RATE_LIMIT_ISSUE: "off",
    RATE_LIMIT_INTROSPECT: "off",
    MAX_ACTIVE_TOKENS_PER_SUBJECT: "1000000",
    METRICS_ENABLED: "false",
  };
  const a = await startTokenService(`leak-a-${transport}`, env);
  const b = await startTokenService(`leak-b-${transport}`, env);
  const db = new pg.Client({ connectionString: url });
  await db.connect();
  const clients: { close(): void }[] = [];
  try {
    const adminToken = await insertCaller(db, true);
    const gatewayToken = await insertCaller(db, false);
    const onA = tokenClient(`127.0.0.1:${a.grpcPort}`, adminToken);
    const onB = tokenClient(`127.0.0.1:${b.grpcPort}`, gatewayToken);
    clients.push(onA, onB);

    const tokens: string[] = [];
    for (let i = 0; i < N; i++) tokens.push((await onA.issue({ name: `leaky-${i}`, subject: `dev-${i}@bench` })).token);
    // Cached on B for CACHE_STALENESS: only the revocation reaching B can end it.
    for (const token of tokens) if (!(await onB.introspect(token)).active) throw new Error("an issued token is not active on B");

    const reportUrl = `http://127.0.0.1:${a.httpPort}/secret-scanning/github`;
    const labels: Record<string, number> = {};
    const answerMs: number[] = [];
    const inactiveMs: number[] = [];
    let polls = 0;
    for (const token of tokens) {
      const body = JSON.stringify([{ token, type: "cf_api_token", url: "https://github.com/octo/repo/blob/abc/.env", source: "content" }]);
      const headers = { "content-type": "application/json", "github-public-key-identifier": KEY_ID, "github-public-key-signature": sign("sha256", Buffer.from(body), privateKey).toString("base64") };
      const t0 = performance.now();
      const answered = (async () => {
        const response = await fetch(reportUrl, { method: "POST", headers, body });
        const feedback = (await response.json()) as { label?: string }[];
        answerMs.push(performance.now() - t0);
        if (response.status !== 200) throw new Error(`report answered ${response.status}`);
        for (const f of feedback) labels[f.label ?? "missing"] = (labels[f.label ?? "missing"] ?? 0) + 1;
      })();
      for (;;) {
        const answer = await onB.introspect(token);
        polls++;
        if (!answer.active) {
          inactiveMs.push(performance.now() - t0);
          if (answer.reason !== InactiveReason.REVOKED) throw new Error(`B answered inactive for another reason: ${InactiveReason[answer.reason]}`);
          break;
        }
        if (performance.now() - t0 > GIVE_UP_MS) throw new Error(`a reported token was still active on B after ${GIVE_UP_MS} ms`);
        await sleep(1);
      }
      await answered;
      await sleep(10 + POLL_INTERVAL_MS * Math.random());
    }
    const wrong = Object.keys(labels).filter((label) => label !== "true_positive");
    if (wrong.length > 0 || labels["true_positive"] !== N) throw new Error(`feedback labels: ${JSON.stringify(labels)}`);
    return { transport, tokens: N, labels, answerOnA: summary(answerMs), inactiveOnB: summary(inactiveMs), pollsOnB: polls };
  } finally {
    for (const client of clients) client.close();
    await db.end();
    await Promise.all([a.stop(), b.stop()]);
    await dropDatabase(admin, name);
    await admin.end();
  }
}

async function main(): Promise<void> {
  mkdirSync(TMP_DIR, { recursive: true });
  const postgres = await ensurePostgres(ADMIN_URL);
  // GitHub's side: a key pair made here, its public half in the file the replicas read.
  const github = generateKeyPairSync("ec", { namedCurve: "P-256" });
  const keysFile = resolve(TMP_DIR, `leak-keys-${process.pid}.json`);
  writeFileSync(keysFile, JSON.stringify({ public_keys: [{ key_identifier: KEY_ID, key: github.publicKey.export({ type: "spki", format: "pem" }), is_current: true }] }));
  const loadBefore = loadavg();
  const series: Series[] = [];
  try {
    for (const transport of TRANSPORTS) {
      if (transport !== "notify" && transport !== "poll") throw new Error(`LEAK_TRANSPORTS: unknown transport ${transport}`);
      const result = await runSeries(transport, keysFile, github.privateKey);
      series.push(result);
      console.log(
        `${transport.padEnd(6)} n=${result.tokens}  answer on A  p50 ${result.answerOnA.p50Ms} p90 ${result.answerOnA.p90Ms} p99 ${result.answerOnA.p99Ms} max ${result.answerOnA.maxMs} ms` +
          `  |  inactive on B  p50 ${result.inactiveOnB.p50Ms} p90 ${result.inactiveOnB.p90Ms} p99 ${result.inactiveOnB.p99Ms} max ${result.inactiveOnB.maxMs} ms  (labels ${JSON.stringify(result.labels)})`,
      );
    }
  } finally {
    rmSync(keysFile, { force: true });
  }
  const out = {
    measuredAt: new Date().toISOString(),
    machine: { cpus: cpus().length, loadavgBefore: loadBefore.map(round), loadavgAfter: loadavg().map(round), postgres, node: process.version },
    method: "one-token signed report to A, 10-260 ms apart; B's IntrospectToken polled (1 ms pause) until REVOKED; times from just before the report is sent",
    series,
  };
  mkdirSync(RESULTS_DIR, { recursive: true });
  writeFileSync(resolve(RESULTS_DIR, "leak-latency.json"), `${JSON.stringify(out, null, 2)}\n`);
  console.log(JSON.stringify(out, null, 2));
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
