/**
 * `npm run soak`: several replicas of the built service on one PostgreSQL
 * database, under a steady mixed load for a long while, checked for what a
 * short benchmark cannot see: errors that come with time, revocations that
 * stop reaching a replica, memory that keeps growing.
 *
 * 1. Creates a fresh database on the PostgreSQL of the benchmark (see
 *    bench/postgres.ts), migrates it and seeds a working set of tokens and a
 *    few caller credentials (gateways with `tokens.introspect`, admins),
 *    with the benchmark's own seeding code (bench/seed.ts).
 * 2. Starts SOAK_REPLICAS replicas as `npm start` runs them (`node
 *    dist/src/main.js`, unpinned), each on its own free ports on 127.0.0.1,
 *    with `DATABASE_URL` pointing at that database, `TOKEN_ENVIRONMENT=
 *    development`, and every service configuration key set in this
 *    environment passed through (CACHE_STALENESS, rate limits, …); the only
 *    addition is bench/gc-signal.js (a SIGUSR2 hook that runs a full GC).
 * 3. Measures capacity: the same mix in a closed loop over all replicas
 *    (SOAK_CAPACITY_SECONDS), after every replica has cached the working set.
 * 4. Soaks: open loop at SOAK_LOAD_FRACTION of that capacity for SOAK_SECONDS,
 *    a mix of introspections (cache hits, unknown tokens, freshly issued and
 *    recently revoked tokens), issues, revocations and lists, spread over the
 *    replicas and credentials (bench/soak-load.ts, a child process). Meanwhile
 *    the runner samples every replica's RSS each second, reads its memory
 *    after a full GC at the end of warm-up (the load pauses meanwhile) and,
 *    every SOAK_CHECK_EVERY seconds, issues a token, caches it on every
 *    replica, revokes it on one and checks that every replica answers it
 *    inactive within CACHE_STALENESS of the revocation's acknowledgement.
 * 5. Prints a table per interval and a summary, writes
 *    bench/results/soak-latest.json, drops the database, and exits 1 on any
 *    error, any revoked token accepted past the bound, or growth of RSS after
 *    a full GC, from the end of warm-up to the end, beyond
 *    SOAK_RSS_GROWTH_LIMIT_MIB on any replica. The replicas' cache is capped
 *    (SOAK_CACHE_MAX_ENTRIES) so that it is full before warm-up ends.
 *
 * Settings (environment): see SETTINGS below and the README's "Soak test".
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { createInterface } from "node:readline";
import { sql } from "kysely";
import { Client } from "pg";
import { CONFIG_KEYS, parseDuration } from "../src/config.js";
import type { Environment } from "../src/domain/environment.js";
import { migrateToLatest, openDatabase } from "../src/storage/database.js";
import { DIST_BENCH, RESULTS_DIR, ROOT, TMP_DIR, cpuMicros, quantile, rssKiB, sleep, sortedCopy } from "./common.js";
import { tokenClient, type TokenClient } from "./grpc-client.js";
import { adminDatabaseUrl, databaseUrl, dropDatabase, ensurePostgres } from "./postgres.js";
import { memoryOf, startTokenService, type ServerProcess } from "./processes.js";
import { fmt, table } from "./report.js";
import { insertRows, mintCaller, mintTokens } from "./seed.js";
import { OPERATIONS, type CapacityReport, type DoneReport, type IntervalReport, type Operation, type SoakLoadInput } from "./soak-load.js";

// ---------------------------------------------------------------- settings

function numberSetting(key: string, fallback: number, min: number, max: number): number {
  const raw = process.env[key];
  if (raw === undefined || raw.trim() === "") return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < min || value > max) throw new Error(`${key} must be a number from ${min} to ${max}`);
  return value;
}

/** SOAK_MIX: `op=weight,…` over OPERATIONS; unnamed operations keep their default weight. */
function mixSetting(fallback: Readonly<Record<Operation, number>>): Record<Operation, number> {
  const mix = { ...fallback };
  const raw = process.env["SOAK_MIX"];
  if (raw === undefined || raw.trim() === "") return mix;
  for (const part of raw.split(",")) {
    const [name, weight] = part.split("=").map((s) => s.trim());
    if (!OPERATIONS.includes(name as Operation) || weight === undefined || !(Number(weight) >= 0)) {
      throw new Error(`SOAK_MIX: "${part.slice(0, 40)}" is not op=weight with op one of ${OPERATIONS.join(", ")}`);
    }
    mix[name as Operation] = Number(weight);
  }
  return mix;
}

const SOAK_SECONDS = numberSetting("SOAK_SECONDS", 600, 30, 86_400);
const SETTINGS = {
  /** Length of the open-loop soak (warm-up included), not counting set-up and the capacity measurement. */
  seconds: SOAK_SECONDS,
  replicas: numberSetting("SOAK_REPLICAS", 2, 1, 8),
  /** Open-loop rate as a fraction of the measured closed-loop capacity (of the same mix). */
  loadFraction: numberSetting("SOAK_LOAD_FRACTION", 0.5, 0.01, 1),
  /** A fixed rate (calls/s) instead: skips the capacity measurement. */
  fixedRate: numberSetting("SOAK_RATE", 0, 0, 1_000_000),
  capacitySeconds: numberSetting("SOAK_CAPACITY_SECONDS", 15, 3, 300),
  /** Calls in flight while measuring capacity; 0: 32 per replica. */
  capacityConcurrency: numberSetting("SOAK_CAPACITY_CONCURRENCY", 0, 0, 4096),
  /** RSS at the end of warm-up is the baseline of the growth check: a fifth of the run, from 60 s to 120 s (less than the run). */
  warmupSeconds: numberSetting("SOAK_WARMUP_SECONDS", Math.round(Math.min(120, Math.max(60, SOAK_SECONDS / 5), SOAK_SECONDS * 0.8)), 5, 86_400),
  /** See the README's "Soak test" for why 32 MiB. */
  rssGrowthLimitMiB: numberSetting("SOAK_RSS_GROWTH_LIMIT_MIB", 32, 0, 1_000_000),
  intervalSeconds: numberSetting("SOAK_INTERVAL_SECONDS", Math.max(10, Math.round(SOAK_SECONDS / 20)), 1, 3_600),
  /** Seconds between revocation checks across every replica. */
  checkEverySeconds: numberSetting("SOAK_CHECK_EVERY", 5, 0.5, 3_600),
  gateways: numberSetting("SOAK_GATEWAYS", 3, 1, 100),
  admins: numberSetting("SOAK_ADMINS", 2, 1, 100),
  hotTokens: numberSetting("SOAK_HOT_TOKENS", 1_000, 1, 1_000_000),
  /**
   * CACHE_MAX_ENTRIES of the replicas (unless set in the environment). The mix
   * issues tokens all along and introspects them, and the cache keeps each
   * (about 1 KiB) until it is full: at the default 100,000 entries a 10-minute
   * run grows RSS by tens of MiB that are not a leak. Capped just above the
   * hot set, the cache is full well before warm-up ends, so growth after it
   * measures leaks only.
   */
  cacheMaxEntries: numberSetting("SOAK_CACHE_MAX_ENTRIES", 2_000, 1, 10_000_000),
  mix: mixSetting({ introspect_hit: 88, introspect_miss: 4, introspect_fresh: 4, issue: 1.5, revoke: 1.5, list: 1 }),
};
const ENVIRONMENT: Environment = "development";
/** Keys the soak sets itself; every other service configuration key in this environment reaches the replicas. */
const CONTROLLED_KEYS = new Set(["DATABASE_URL", "DATA_DIR", "TOKEN_ENVIRONMENT", "LISTEN_HOST", "GRPC_PORT", "HTTP_PORT"]);
/** The bound a revocation must meet on every replica: the service's CACHE_STALENESS (its default is 2s). */
const STALENESS_MS = parseDuration(process.env["CACHE_STALENESS"] ?? (CONFIG_KEYS.CACHE_STALENESS.default as string));
/** RSS is compared as the median of the samples (one a second) in this many seconds before each point, to look past GC's sawtooth. */
const RSS_WINDOW_S = 10;
/** Open loop: calls in flight beyond this are not started but counted (a failure: the replicas fell behind). */
const MAX_IN_FLIGHT = 2_000;

const startedAt = Date.now();
const log = (line: string) => process.stdout.write(`[soak ${((Date.now() - startedAt) / 1000).toFixed(0).padStart(4)}s] ${line}\n`);
const servers: ServerProcess[] = [];
let loadChild: ChildProcess | undefined;
let interrupted = false;
/** Ends the run (through main's clean-up) once SIGINT has arrived. */
function checkInterrupted(): void {
  if (interrupted) throw new Error("interrupted");
}

// ---------------------------------------------------------------- the load child

interface LoadLines {
  capacity?: CapacityReport;
  started?: true;
  paused?: true;
  interval?: IntervalReport;
  done?: DoneReport;
}

/** Runs bench/soak-load.js with `input`, calling `onLine` for every JSON line it prints; resolves when it exits (rejects on failure). */
function runLoad(input: SoakLoadInput, onLine: (line: LoadLines) => void): Promise<void> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, ["--enable-source-maps", resolve(DIST_BENCH, "soak-load.js"), JSON.stringify(input)], { stdio: ["pipe", "pipe", "pipe"] });
    loadChild = child;
    // The child may be gone when the runner writes to it; that is seen on "close".
    child.stdin.on("error", () => undefined);
    const err: string[] = [];
    child.stderr.on("data", (chunk: Buffer) => err.push(chunk.toString("utf8")));
    createInterface({ input: child.stdout }).on("line", (line) => {
      if (line.startsWith("{")) onLine(JSON.parse(line) as LoadLines);
    });
    // Bounded like every load of the benchmark: its own length plus time for set-up and the last calls.
    const timer = setTimeout(() => child.kill("SIGKILL"), (input.seconds + 120) * 1000);
    child.on("error", fail);
    child.on("close", (code) => {
      clearTimeout(timer);
      if (code === 0) done();
      else fail(new Error(`soak-load exited ${code}:\n${err.join("").slice(-2000)}`));
    });
  });
}

// ---------------------------------------------------------------- revocation checks

/** One revocation followed on every replica. */
interface RevocationCheck {
  readonly at: number;
  readonly issuedOn: number;
  readonly revokedOn: number;
  /** RevokeToken's own latency. */
  readonly revokeMs: number;
  /** Per replica: ms from RevokeToken answered until that replica first answered inactive (NaN if it never did within the bound). */
  readonly inactiveAfterMs: number[];
  readonly pass: boolean;
  readonly failure?: string;
}

function describe(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).slice(0, 300);
}

/**
 * Issue on one replica, introspect on every replica (so each has it cached
 * as active), revoke on the next replica, then poll every replica until it
 * answers inactive. A poll sent more than STALENESS_MS after the
 * revocation was acknowledged that still answers active is a violation.
 */
async function revocationCheck(index: number, at: number, admins: TokenClient[], gateways: TokenClient[]): Promise<RevocationCheck> {
  const n = gateways.length;
  const issuedOn = index % n;
  const revokedOn = (index + 1) % n;
  const base = { at, issuedOn, revokedOn };
  const issued = await admins[issuedOn]!.issue({ name: `soak-check-${index}`, subject: `soak-check-${index}@soak.example.com`, scopes: ["orders.read"] });
  for (const [replica, gateway] of gateways.entries()) {
    const answer = await gateway.introspect(issued.token);
    if (!answer.active) return { ...base, revokeMs: Number.NaN, inactiveAfterMs: [], pass: false, failure: `fresh token inactive on replica ${replica + 1} before revocation` };
  }
  const sent = performance.now();
  await admins[revokedOn]!.revoke({ target: { case: "token", value: issued.token }, reason: "soak check" });
  const acked = performance.now();
  const failures: string[] = [];
  const inactiveAfterMs = await Promise.all(
    gateways.map(async (gateway, replica) => {
      for (;;) {
        const pollSent = performance.now();
        const answer = await gateway.introspect(issued.token);
        if (!answer.active) return Math.max(0, performance.now() - acked);
        if (pollSent - acked > STALENESS_MS) {
          failures.push(`replica ${replica + 1} answered active ${Math.round(pollSent - acked)} ms after the revocation was acknowledged (bound ${STALENESS_MS} ms)`);
          return Number.NaN;
        }
        // One call at a time per replica; a short pause keeps the checker from becoming load itself.
        await sleep(2);
      }
    }),
  );
  return { ...base, revokeMs: acked - sent, inactiveAfterMs, pass: failures.length === 0, ...(failures.length > 0 ? { failure: failures.join("; ") } : {}) };
}

// ---------------------------------------------------------------- helpers

function git(args: string[]): string {
  const out = spawnSync("git", args, { cwd: ROOT, encoding: "utf8" });
  return out.status === 0 ? out.stdout.trim() : "unknown";
}

/** Service configuration keys set in this environment, for the replicas. */
function passThroughEnv(warnings: string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const key of Object.keys(CONFIG_KEYS)) {
    const value = process.env[key];
    if (value === undefined || CONTROLLED_KEYS.has(key)) continue;
    // The runner finds each replica's ports in its "listening" line, logged at info.
    if (key === "LOG_LEVEL" && !["info", "debug", "trace"].includes(value.trim())) {
      warnings.push(`LOG_LEVEL=${value.slice(0, 10)} not passed on: the replicas must log at info or finer for the soak to find their ports`);
      continue;
    }
    env[key] = value;
  }
  return env;
}

/** Lines a replica logged at pino level error (50) or fatal (60). */
function errorLogLines(server: ServerProcess): string[] {
  try {
    return readFileSync(server.logFile, "utf8")
      .split("\n")
      .filter((line) => /"level":(50|60)\b/.test(line));
  } catch {
    return [];
  }
}

const mib = (kib: number) => kib / 1024;

/** One RSS sample of every replica. */
interface RssSample {
  /** Seconds since the soak started. */
  readonly t: number;
  /** KiB per replica (NaN once it has exited). */
  readonly kib: number[];
}

function medianRss(samples: readonly RssSample[], replica: number, from: number, to: number): number {
  const values = samples.filter((s) => s.t >= from && s.t <= to).map((s) => s.kib[replica]!).filter(Number.isFinite);
  return quantile(sortedCopy(values), 0.5);
}

/** Least-squares slope of RSS over time after warm-up, in MiB per minute. */
function rssSlope(samples: readonly RssSample[], replica: number, from: number): number {
  const points = samples.filter((s) => s.t >= from && Number.isFinite(s.kib[replica]!)).map((s) => [s.t, mib(s.kib[replica]!)] as const);
  if (points.length < 3) return Number.NaN;
  const mx = points.reduce((a, [x]) => a + x, 0) / points.length;
  const my = points.reduce((a, [, y]) => a + y, 0) / points.length;
  const sxy = points.reduce((a, [x, y]) => a + (x - mx) * (y - my), 0);
  const sxx = points.reduce((a, [x]) => a + (x - mx) ** 2, 0);
  return (sxy / sxx) * 60;
}

// ---------------------------------------------------------------- main

async function main(): Promise<void> {
  mkdirSync(TMP_DIR, { recursive: true });
  const adminUrl = adminDatabaseUrl();
  const pgVersion = await ensurePostgres(adminUrl);
  const database = `tis_soak_${process.pid}_${randomBytes(3).toString("hex")}`;
  const admin = new Client({ connectionString: adminUrl, application_name: "tis-soak/runner" });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${database}`);
  const dbUrl = databaseUrl(adminUrl, database);
  const failures: string[] = [];
  const warnings: string[] = [];
  const passThrough = passThroughEnv(warnings);
  /** Each interval of the load, with every replica's RSS at its end and CPU (% of one core) over it. */
  const intervals: (IntervalReport & { rssMiB: number[]; cpuPercent: number[] })[] = [];
  const rssSamples: RssSample[] = [];
  const checks: RevocationCheck[] = [];
  let checkErrors = 0;
  let capacity: CapacityReport | undefined;
  let capacityCpuPercent: number[] = [];
  type Memory = Awaited<ReturnType<typeof memoryOf>>;
  /** Memory after a full GC, per replica: at the end of warm-up, and after the load. */
  let gcWarm: (Memory | undefined)[] = [];
  let gcEnd: (Memory | undefined)[] = [];
  /** Seconds into the soak when the load paused for the warm-up GCs (that interval has fewer calls). */
  let warmGcAt = Number.NaN;
  const warm = Math.min(SETTINGS.warmupSeconds, SETTINGS.seconds - RSS_WINDOW_S);
  const gcAll = async (when: string) =>
    Promise.all(
      servers.map((server, i) =>
        memoryOf(server).catch((error: unknown) => {
          failures.push(`replica ${i + 1}: no memory report after a full GC ${when} (${describe(error)})`);
          return undefined;
        }),
      ),
    );
  let done: DoneReport | undefined;
  let rate = 0;
  const commit = `${git(["rev-parse", "--short", "HEAD"])}${git(["status", "--porcelain", "--", "src", "gen", "bench"]) === "" ? "" : " (+ uncommitted changes)"}`;
  log(`PostgreSQL ${pgVersion}, database ${database}; ${SETTINGS.replicas} replicas, ${SETTINGS.seconds} s, commit ${commit}`);
  if (Object.keys(passThrough).length > 0) log(`passed to the replicas: ${Object.keys(passThrough).join(", ")}`);
  if ((passThrough["WORKERS"] ?? "1") !== "1") warnings.push("WORKERS is not 1: RSS is read from each replica's primary process only");
  const load = loadavg()[0] ?? 0;
  if (load > 1.5) warnings.push(`load average ${load.toFixed(2)} at the start: other work shares this machine`);

  try {
    // ------------------------------------------------------------ seed
    const opened = await openDatabase({ url: dbUrl, poolMax: 4, connectTimeoutMs: 5_000, statementTimeoutMs: 0 });
    const gatewaySets = Array.from({ length: SETTINGS.gateways }, (_, i) => mintCaller(ENVIRONMENT, `gateway-${i + 1}@soak.example.com`, false));
    const adminSets = Array.from({ length: SETTINGS.admins + 1 }, (_, i) => mintCaller(ENVIRONMENT, `admin-${i + 1}@soak.example.com`, true));
    const hot = mintTokens(ENVIRONMENT, SETTINGS.hotTokens, "soak-hot");
    try {
      await migrateToLatest(opened.db);
      await insertRows(opened.db, [...gatewaySets.flatMap((s) => s.rows), ...adminSets.flatMap((s) => s.rows), ...hot.rows]);
      await sql`ANALYZE tokens`.execute(opened.db);
    } finally {
      await opened.close();
    }
    const gatewayTokens = gatewaySets.map((s) => s.tokens[0]!);
    // The last admin is the revocation checker's own; the others drive the load.
    const adminTokens = adminSets.map((s) => s.tokens[0]!);
    const checkerToken = adminTokens.pop()!;
    const hotTokensFile = resolve(TMP_DIR, "soak-hot-tokens.json");
    writeFileSync(hotTokensFile, JSON.stringify(hot.tokens));
    log(`seeded ${SETTINGS.hotTokens} tokens, ${SETTINGS.gateways} gateway and ${SETTINGS.admins + 1} admin credentials`);

    // ------------------------------------------------------------ replicas
    checkInterrupted();
    const serviceEnv = { CACHE_MAX_ENTRIES: String(SETTINGS.cacheMaxEntries), ...passThrough, TOKEN_ENVIRONMENT: ENVIRONMENT, DATABASE_URL: dbUrl };
    for (let i = 0; i < SETTINGS.replicas; i++) {
      checkInterrupted();
      // --expose-gc and bench/gc-signal.js add only a SIGUSR2 hook that runs a full GC and reports memory:
      // RSS after a full GC at the end of warm-up and at the end is what the growth check compares.
      const gcHook = ["--expose-gc", `--import=${pathToFileURL(resolve(DIST_BENCH, "gc-signal.js")).href}`];
      servers.push(await startTokenService(`soak-replica-${i + 1}`, serviceEnv, gcHook, false));
    }
    checkInterrupted();
    const grpcPorts = servers.map((s) => s.grpcPort);
    const checkerAdmins = servers.map((s) => tokenClient(`127.0.0.1:${s.grpcPort}`, checkerToken));
    const checkerGateways = servers.map((s) => tokenClient(`127.0.0.1:${s.grpcPort}`, gatewayTokens[0]!));
    for (const [i, gateway] of checkerGateways.entries()) {
      const answer = await gateway.introspect(hot.tokens[0]!);
      if (!answer.active) throw new Error(`replica ${i + 1}: a seeded token answers inactive (${answer.reason}) before any load`);
    }
    log(`replicas up: ${servers.map((s, i) => `${i + 1}: pid ${s.pid}, gRPC ${s.grpcPort}, HTTP ${s.httpPort}`).join("; ")}; CACHE_STALENESS ${STALENESS_MS} ms`);

    const baseInput: SoakLoadInput = {
      mode: "capacity",
      grpcPorts,
      gateways: gatewayTokens,
      admins: adminTokens,
      hotTokensFile,
      seconds: SETTINGS.capacitySeconds,
      concurrency: SETTINGS.capacityConcurrency || 32 * SETTINGS.replicas,
      rate: 0,
      mix: SETTINGS.mix,
      intervalSeconds: SETTINGS.intervalSeconds,
      stalenessMs: STALENESS_MS,
      liveMax: 500,
      connectionsPerReplica: 2,
      maxInFlight: MAX_IN_FLIGHT,
      deadlineMs: 10_000,
    };

    // ------------------------------------------------------------ capacity
    if (SETTINGS.fixedRate > 0) {
      rate = SETTINGS.fixedRate;
      log(`fixed rate ${rate}/s (SOAK_RATE); no capacity measurement`);
    } else {
      log(`measuring capacity: the mix in a closed loop, ${baseInput.concurrency} in flight, ${SETTINGS.capacitySeconds} s`);
      const cpuBefore = servers.map((s) => cpuMicros(s.pid));
      const before = performance.now();
      await runLoad(baseInput, (line) => {
        if (line.capacity) capacity = line.capacity;
      });
      // Includes the loader's warm-up pass over the working set: a little low, never high.
      capacityCpuPercent = servers.map((s, i) => Math.round((cpuMicros(s.pid) - cpuBefore[i]!) / 10 / (performance.now() - before)));
      if (!capacity) throw new Error("the capacity run reported nothing");
      if (capacity.errors > 0) failures.push(`capacity run: ${capacity.errors} errors (${capacity.samples.join(" | ")})`);
      if (capacity.staleAccepted > 0) failures.push(`capacity run: ${capacity.staleAccepted} revoked tokens answered active past the bound`);
      if (capacity.exhausted > 0) warnings.push(`capacity run: ${capacity.exhausted} RESOURCE_EXHAUSTED answers`);
      rate = Math.max(1, Math.round(capacity.rate * SETTINGS.loadFraction));
      log(
        `capacity ${Math.round(capacity.rate)} calls/s (introspect_hit p99 ${fmt(capacity.ops.introspect_hit.p99Ms)} ms, loader ${capacity.loaderCpuPercent} % of a core); ` +
          `replicas busy ${capacityCpuPercent.join(" %, ")} % of a core; soaking at ${Math.round(SETTINGS.loadFraction * 100)} %: ${rate} calls/s`,
      );
    }

    // ------------------------------------------------------------ soak
    checkInterrupted();
    let soakStart: number | undefined;
    let stop = false;
    const elapsed = () => (soakStart === undefined ? 0 : (performance.now() - soakStart) / 1000);
    const sampleRss = () => {
      const kib = servers.map((s) => {
        if (s.exited()) return Number.NaN;
        try {
          return rssKiB(s.pid);
        } catch {
          return Number.NaN;
        }
      });
      rssSamples.push({ t: Math.round(elapsed() * 10) / 10, kib });
    };
    let sampler: NodeJS.Timeout | undefined;
    let checker: Promise<void> | undefined;
    let warmGc: Promise<void> | undefined;
    let warmTimer: NodeJS.Timeout | undefined;
    let onPaused: (() => void) | undefined;
    const startBackground = () => {
      soakStart = performance.now();
      sampleRss();
      sampler = setInterval(sampleRss, 1000);
      warmTimer = setTimeout(() => {
        warmGcAt = elapsed();
        // The load pauses while the replicas are collected, so the GC's pause is not in any call's latency.
        warmGc = (async () => {
          const pausedAt = performance.now();
          const paused = new Promise<void>((done) => (onPaused = done));
          loadChild?.stdin?.write("pause\n");
          await Promise.race([paused, sleep(15_000)]);
          gcWarm = await gcAll("at the end of warm-up");
          loadChild?.stdin?.write("resume\n");
          log(`end of warm-up: load paused ${fmt((performance.now() - pausedAt) / 1000)} s for a full GC; RSS after it ${gcWarm.map((x) => (x ? fmt(mib(x.gc.rssKiB)) : "?")).join(", ")} MiB`);
        })();
      }, warm * 1000);
      checker = (async () => {
        for (let i = 0; !stop; i++) {
          const at = Math.round(elapsed() * 10) / 10;
          try {
            const check = await revocationCheck(i, at, checkerAdmins, checkerGateways);
            checks.push(check);
            if (!check.pass) log(`revocation check ${i + 1} FAILED: ${check.failure}`);
          } catch (error) {
            checkErrors++;
            log(`revocation check ${i + 1}: error ${describe(error)}`);
          }
          const next = performance.now() + SETTINGS.checkEverySeconds * 1000;
          while (!stop && performance.now() < next) await sleep(Math.min(200, next - performance.now()));
        }
      })();
    };

    const header = ["t s", "calls/s", "err", "exh", ...OPERATIONS.map((op) => `${op} p99`), ...servers.map((_, i) => `RSS${i + 1} MiB`), ...servers.map((_, i) => `CPU${i + 1} %`)];
    const cpuOf = () => servers.map((s) => (s.exited() ? Number.NaN : cpuMicros(s.pid)));
    let lastCpu = cpuOf();
    let lastCpuAt = performance.now();
    log(`soak: ${rate} calls/s for ${SETTINGS.seconds} s (warm-up ${SETTINGS.warmupSeconds} s), mix ${JSON.stringify(SETTINGS.mix)}`);
    log(`columns: ${header.join(" | ")}`);
    await runLoad({ ...baseInput, mode: "soak", seconds: SETTINGS.seconds, rate }, (line) => {
      if (line.started) startBackground();
      if (line.paused) onPaused?.();
      if (line.done) done = line.done;
      if (line.interval) {
        const interval = line.interval;
        const rssMiB = servers.map((_, i) => Math.round(mib(rssSamples[rssSamples.length - 1]?.kib[i] ?? Number.NaN)));
        const cpuNow = cpuOf();
        const now = performance.now();
        const cpuPercent = cpuNow.map((c, i) => Math.round((c - lastCpu[i]!) / 10 / (now - lastCpuAt)));
        lastCpu = cpuNow;
        lastCpuAt = now;
        intervals.push({ ...interval, rssMiB, cpuPercent });
        const calls = OPERATIONS.reduce((a, op) => a + interval.ops[op].n, 0);
        const errors = OPERATIONS.reduce((a, op) => a + interval.ops[op].errors, 0);
        const exhausted = OPERATIONS.reduce((a, op) => a + interval.ops[op].exhausted, 0);
        log(
          [fmt(interval.t), fmt(calls / interval.seconds), String(errors + interval.shed), String(exhausted), ...OPERATIONS.map((op) => fmt(interval.ops[op].p99Ms)), ...rssMiB.map(String), ...cpuPercent.map(String)].join(" | ") +
            (interval.staleAccepted > 0 ? ` | ${interval.staleAccepted} STALE` : "") +
            (interval.samples.length > 0 ? `\n      ${interval.samples.join("\n      ")}` : ""),
        );
      }
      for (const [i, server] of servers.entries()) {
        if (server.exited() && !failures.some((f) => f.startsWith(`replica ${i + 1} exited`))) failures.push(`replica ${i + 1} exited during the soak`);
      }
    });
    stop = true;
    clearTimeout(warmTimer);
    await checker;
    await warmGc;
    gcEnd = await gcAll("at the end");
    if (sampler) clearInterval(sampler);
    for (const gateway of [...checkerAdmins, ...checkerGateways]) gateway.close();
    for (const [i, server] of servers.entries()) {
      const lines = errorLogLines(server);
      if (lines.length > 0) failures.push(`replica ${i + 1} logged ${lines.length} error lines (${server.logFile}); first: ${lines[0]!.slice(0, 300)}`);
    }
  } finally {
    for (const server of servers) await server.stop(5_000).catch(() => undefined);
    await dropDatabase(admin, database);
    await admin.end();
  }

  // ---------------------------------------------------------------- verdict
  if (!done) throw new Error("the soak reported no totals");
  const totals = done.ops;
  const errors = OPERATIONS.reduce((a, op) => a + totals[op].errors, 0);
  const exhausted = OPERATIONS.reduce((a, op) => a + totals[op].exhausted, 0);
  const shed = intervals.reduce((a, i) => a + i.shed, 0);
  const staleAccepted = intervals.reduce((a, i) => a + i.staleAccepted, 0);
  const calls = OPERATIONS.reduce((a, op) => a + totals[op].n, 0);
  if (errors > 0) failures.push(`${errors} failed calls`);
  if (shed > 0) failures.push(`${shed} calls not started: ${MAX_IN_FLIGHT} already in flight (the replicas fell behind the schedule)`);
  if (staleAccepted > 0) failures.push(`${staleAccepted} introspections answered a revoked token active more than ${STALENESS_MS} ms after its revocation`);
  const failedChecks = checks.filter((c) => !c.pass);
  if (failedChecks.length > 0) failures.push(`${failedChecks.length} of ${checks.length} revocation checks failed: ${failedChecks[0]!.failure}`);
  if (checkErrors > 0) failures.push(`${checkErrors} revocation checks ended in an error`);
  if (checks.length === 0) failures.push("no revocation check completed");
  if (exhausted > 0) warnings.push(`${exhausted} RESOURCE_EXHAUSTED answers (rate limits; not counted as errors)`);
  if (calls < 0.95 * done.scheduled) warnings.push(`only ${calls} of ${done.scheduled} scheduled calls were answered`);

  const end = SETTINGS.seconds;
  const memory = servers.map((server, i) => {
    const gcWarmMiB = mib(gcWarm[i]?.gc.rssKiB ?? Number.NaN);
    const gcEndMiB = mib(gcEnd[i]?.gc.rssKiB ?? Number.NaN);
    const heapWarmMiB = mib(gcWarm[i]?.gc.heapUsedKiB ?? Number.NaN);
    const heapEndMiB = mib(gcEnd[i]?.gc.heapUsedKiB ?? Number.NaN);
    const warmMiB = mib(medianRss(rssSamples, i, warm - RSS_WINDOW_S, warm));
    const endMiB = mib(medianRss(rssSamples, i, end - RSS_WINDOW_S, end + 60));
    const maxMiB = mib(Math.max(...rssSamples.filter((s) => s.t >= warm).map((s) => s.kib[i]!).filter(Number.isFinite)));
    return {
      replica: i + 1,
      pid: server.pid,
      gcWarmMiB,
      gcEndMiB,
      gcGrowthMiB: gcEndMiB - gcWarmMiB,
      heapWarmMiB,
      heapEndMiB,
      warmMiB,
      endMiB,
      growthMiB: endMiB - warmMiB,
      maxMiB,
      slopeMiBPerMin: rssSlope(rssSamples, i, warm),
    };
  });
  for (const m of memory) {
    if (!Number.isFinite(m.gcGrowthMiB)) failures.push(`replica ${m.replica}: no RSS figures after a full GC`);
    else if (m.gcGrowthMiB > SETTINGS.rssGrowthLimitMiB) {
      failures.push(`replica ${m.replica}: RSS after a full GC grew ${fmt(m.gcGrowthMiB)} MiB after warm-up (${fmt(m.gcWarmMiB)} → ${fmt(m.gcEndMiB)} MiB), limit ${SETTINGS.rssGrowthLimitMiB} MiB`);
    }
  }
  const inactiveAfter = sortedCopy(checks.flatMap((c) => c.inactiveAfterMs).filter(Number.isFinite));

  // ---------------------------------------------------------------- report
  const opRows = OPERATIONS.map((op) => {
    const o = totals[op];
    return [op, o.n.toLocaleString("en-US"), String(o.errors), String(o.exhausted), fmt(o.p50Ms), fmt(o.p99Ms), fmt(o.maxMs)];
  });
  opRows.push(["all", calls.toLocaleString("en-US"), String(errors), String(exhausted), "", "", ""]);
  const intervalRows = intervals.map((iv) => {
    const n = OPERATIONS.reduce((a, op) => a + iv.ops[op].n, 0);
    const e = OPERATIONS.reduce((a, op) => a + iv.ops[op].errors, 0) + iv.shed;
    const gcHere = warmGcAt > iv.t - iv.seconds && warmGcAt <= iv.t;
    return [`${fmt(iv.t)}${gcHere ? " (GC)" : ""}`, fmt(n / iv.seconds), String(e), ...OPERATIONS.map((op) => fmt(iv.ops[op].p99Ms)), ...iv.rssMiB.map(String), ...iv.cpuPercent.map(String)];
  });
  const memoryRows = memory.map((m) => [
    String(m.replica),
    fmt(m.gcWarmMiB),
    fmt(m.gcEndMiB),
    fmt(m.gcGrowthMiB),
    `${fmt(m.heapWarmMiB)} → ${fmt(m.heapEndMiB)}`,
    `${fmt(m.warmMiB)} → ${fmt(m.endMiB)}`,
    fmt(m.maxMiB),
    fmt(m.slopeMiBPerMin),
  ]);
  const text = [
    `Soak: ${SETTINGS.replicas} replicas, ${SETTINGS.seconds} s at ${rate} calls/s` +
      (capacity ? ` (${Math.round(SETTINGS.loadFraction * 100)} % of a measured ${Math.round(capacity.rate)} calls/s closed-loop capacity of the same mix)` : " (SOAK_RATE)") +
      `, commit ${commit}, ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC`,
    "",
    "Per interval (p99 in ms; RSS at the interval's end; replica CPU over it, % of one core; (GC): the load paused in it for the full GCs at the end of warm-up):",
    "",
    table(["t s", "calls/s", "errors", ...OPERATIONS.map((op) => `${op} p99`), ...servers.map((_, i) => `RSS ${i + 1} MiB`), ...servers.map((_, i) => `CPU ${i + 1} %`)], intervalRows),
    "",
    "Whole run (latency in ms, from when each call was due):",
    "",
    table(["operation", "calls", "errors", "RESOURCE_EXHAUSTED", "p50", "p99", "max"], opRows),
    "",
    `Memory per replica: RSS after a full GC at the end of warm-up (${warm} s) and after the load, growth limit +${SETTINGS.rssGrowthLimitMiB} MiB; ` +
      `JS heap used after those GCs; RSS as sampled (median of ${RSS_WINDOW_S} s), its maximum and slope after warm-up:`,
    "",
    table(["replica", "RSS warm-up MiB", "RSS end MiB", "growth MiB", "heap used MiB", "RSS sampled MiB", "max MiB", "slope MiB/min"], memoryRows),
    "",
    `Revocation checks: ${checks.length - failedChecks.length} of ${checks.length} passed (every replica inactive within ${STALENESS_MS} ms of RevokeToken's answer; ` +
      `p50 ${fmt(quantile(inactiveAfter, 0.5))} ms, p99 ${fmt(quantile(inactiveAfter, 0.99))} ms, max ${fmt(inactiveAfter.length > 0 ? inactiveAfter[inactiveAfter.length - 1]! : Number.NaN)} ms); ` +
      `${staleAccepted} revoked tokens accepted past the bound in the load; ${checkErrors} check errors.`,
    ...warnings.map((w) => `Warning: ${w}`),
    failures.length === 0 ? "PASS" : `FAIL:\n- ${failures.join("\n- ")}`,
  ].join("\n");

  const result = {
    meta: {
      date: new Date().toISOString(),
      commit,
      node: process.version,
      postgres: pgVersion,
      cpu: `${cpus()[0]?.model.trim() ?? "unknown CPU"} (${cpus().length} cores)`,
      loadAverageAtStart: load,
      loadAverageAtEnd: loadavg()[0] ?? Number.NaN,
      elapsedS: Math.round((Date.now() - startedAt) / 1000),
      passedThrough: Object.keys(passThrough),
      stalenessMs: STALENESS_MS,
    },
    settings: SETTINGS,
    capacity: capacity ? { ...capacity, replicaCpuPercent: capacityCpuPercent } : null,
    rate,
    totals: { calls, errors, exhausted, shed, staleAccepted, ops: totals, scheduled: done.scheduled, loaderCpuPercent: done.loaderCpuPercent },
    warmUp: { seconds: warm, fullGcAtS: warmGcAt },
    memory,
    revocation: {
      checks: checks.length,
      passed: checks.length - failedChecks.length,
      errors: checkErrors,
      inactiveAfterMs: { p50: quantile(inactiveAfter, 0.5), p99: quantile(inactiveAfter, 0.99), max: inactiveAfter.length > 0 ? inactiveAfter[inactiveAfter.length - 1]! : null },
      list: checks,
    },
    intervals,
    rssSamples,
    warnings,
    failures,
    pass: failures.length === 0,
  };
  const jsonFile = resolve(RESULTS_DIR, "soak-latest.json");
  writeFileSync(jsonFile, `${JSON.stringify(result, null, 1)}\n`);
  writeFileSync(resolve(TMP_DIR, "soak-table.md"), `${text}\n`);
  process.stdout.write(`\n${text}\n\n`);
  log(`done in ${result.meta.elapsedS} s; wrote ${jsonFile}`);
  if (failures.length > 0) process.exitCode = 1;
}

process.on("SIGINT", () => {
  if (interrupted) process.exit(130);
  interrupted = true;
  log("interrupted: stopping the load; the replicas and the database go next");
  loadChild?.kill("SIGTERM");
  process.exitCode = 130;
});

main().catch(async (error: unknown) => {
  process.stderr.write(`soak failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  for (const server of servers) await server.stop(2_000).catch(() => undefined);
  process.exit(interrupted ? 130 : 1);
});
