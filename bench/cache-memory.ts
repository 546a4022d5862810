/**
 * Memory per cached token, in-process: the replica's own introspection cache
 * (`createIntrospectionCache` with the service's defaults, `maxEntries` and
 * `maxBytes` raised so nothing is evicted) filled with N `CachedToken`s built
 * from `TokenRecord`s shaped like the bench's seeded tokens (bench/seed.ts
 * `mintTokens`). Each N runs in a child started with `--expose-gc`, so the
 * figures are the cache's alone: RSS, V8 heap used and committed (per space)
 * after a full GC, before and after the last nine tenths of the fill (the
 * first tenth warms up, as the service phase does), and the cache's own
 * estimate (`stats().bytes`) beside them.
 *
 *   node --expose-gc dist/bench/cache-memory.js 1000000     one child's report, as JSON
 *   node dist/bench/cache-memory.js                          100,000 and 1,000,000, each in its own child
 */
import { spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { getHeapSpaceStatistics } from "node:v8";
import { createIntrospectionCache, CachedToken } from "../src/domain/introspect.js";
import { digestKey, mintToken } from "../src/domain/token-format.js";
import type { TokenRecord } from "../src/domain/model.js";

/** What one child measured for N tokens. Per-token figures are in KiB. */
export interface CacheMemoryResult {
  readonly tokens: number;
  /** RSS after a full GC: growth while the last nine tenths went in ÷ their number (the first tenth warms, unmeasured). */
  readonly rssKiBPerToken: number;
  readonly heapUsedKiBPerToken: number;
  readonly heapCommittedKiBPerToken: number;
  /** The cache's own estimate (`stats().bytes ÷ size`). */
  readonly estimateKiBPerToken: number;
  /** Estimate ÷ measured RSS per token: the target is 0.8–1.2. */
  readonly estimateRatio: number;
  /** Per V8 heap space: used and committed KiB per token (delta ÷ N). */
  readonly spaces: Readonly<Record<string, { usedKiBPerToken: number; committedKiBPerToken: number }>>;
  readonly baselineRssMiB: number;
  readonly afterRssMiB: number;
  readonly fillSeconds: number;
}

const DAY_MS = 86_400_000;
const gc = (globalThis as { gc?: (options?: unknown) => void }).gc;

/** VmRSS of this process in KiB (what the kernel charges it), read after the GC. */
function rssNowKiB(): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync("/proc/self/status", "utf8"));
  return match ? Number(match[1]) : Number.NaN;
}

/**
 * Memory after a full GC, once it has settled: V8 sweeps and returns freed
 * pages to the OS on background threads after the GC returns, so RSS read at
 * once still counts memory already given back (tens of MiB at 100,000
 * tokens). Reads again every half second, with a GC each time, until RSS
 * stops falling (under 1 MiB) or ten seconds pass.
 */
async function snapshot() {
  gc!();
  gc!();
  let rssKiB = rssNowKiB();
  for (let waited = 0; waited < 10_000; waited += 500) {
    await new Promise((resolve) => setTimeout(resolve, 500));
    gc!();
    const now = rssNowKiB();
    const fell = rssKiB - now;
    rssKiB = now;
    if (fell < 1024) break;
  }
  const usage = process.memoryUsage();
  const spaces: Record<string, { used: number; committed: number }> = {};
  for (const space of getHeapSpaceStatistics()) spaces[space.space_name] = { used: space.space_used_size, committed: space.physical_space_size };
  return { rssKiB, heapUsed: usage.heapUsed, heapCommitted: usage.heapTotal, spaces };
}

/**
 * A record as the store hands one over: every string, array and Date fresh
 * from the driver (JSON text parsed per row stands in for pg's parser), the
 * same field shapes and lengths as `mintTokens`' rows.
 */
function storeRecord(i: number, now: number, environment: TokenRecord["environment"]): { key: string; record: TokenRecord } {
  const minted = mintToken(environment);
  const row = JSON.parse(
    JSON.stringify({
      id: randomUUID(),
      displayHint: minted.displayHint,
      name: `miss-${i}`,
      subject: `miss-${i}@example.com`,
      fullName: `Bench User ${i}`,
      teams: ["payments", "checkout"],
      scopes: ["orders.read", "orders.write", "invoices.read"],
      namespaces: ["eu-west-prod"],
      metadata: { purpose: "benchmark" },
      environment,
      createdBy: "bench-seed",
    }),
  ) as Omit<TokenRecord, "digest" | "createdAt" | "expiresAt" | "issuedByTokenId" | "lastUsedAt" | "revokedAt" | "revokedBy" | "revokeReason">;
  const record: TokenRecord = {
    ...row,
    digest: new Uint8Array(minted.digest),
    isAdmin: false,
    createdAt: new Date(now),
    expiresAt: new Date(now + 30 * DAY_MS),
    issuedByTokenId: null,
    lastUsedAt: null,
    revokedAt: null,
    revokedBy: null,
    revokeReason: null,
  };
  return { key: digestKey(minted.token), record };
}

/** The child: fills one cache with `count` tokens and prints its report as one JSON line. */
async function measureHere(count: number): Promise<CacheMemoryResult> {
  if (gc === undefined) throw new Error("cache-memory: run with --expose-gc");
  // The service's defaults (src/config.ts) but room for every token: the figure is per token held.
  const cache = createIntrospectionCache({ maxEntries: count * 2, maxBytes: Number.MAX_SAFE_INTEGER, stalenessMs: 2_000, negativeTtlMs: 2_000, negativeMaxEntries: 20_000 });
  const now = Date.now();
  // A tenth first, unmeasured, as the service phase warms before its
  // baseline: code, interned names and the young generation's growth under
  // allocation are the process's fixed costs, not the tokens'.
  const warm = Math.max(1, Math.floor(count / 10));
  for (let i = 0; i < warm; i++) {
    const { key, record } = storeRecord(i, now, "production");
    cache.put(key, new CachedToken(record), cache.fence(), now);
  }
  const before = await snapshot();
  const started = process.hrtime.bigint();
  for (let i = warm; i < count; i++) {
    const { key, record } = storeRecord(i, now, "production");
    cache.put(key, new CachedToken(record), cache.fence(), now);
  }
  const fillSeconds = Number(process.hrtime.bigint() - started) / 1e9;
  const after = await snapshot();
  const stats = cache.stats();
  if (stats.size !== count) throw new Error(`cache-memory: ${stats.size} entries cached of ${count}`);
  const measured = count - warm;
  const per = (bytes: number) => Math.round((bytes / 1024 / measured) * 1000) / 1000;
  const rssKiBPerToken = Math.round(((after.rssKiB - before.rssKiB) / measured) * 1000) / 1000;
  const estimateKiBPerToken = Math.round((stats.bytes / stats.size / 1024) * 1000) / 1000;
  const spaces: Record<string, { usedKiBPerToken: number; committedKiBPerToken: number }> = {};
  for (const [name, space] of Object.entries(after.spaces)) {
    const was = before.spaces[name] ?? { used: 0, committed: 0 };
    spaces[name] = { usedKiBPerToken: per(space.used - was.used), committedKiBPerToken: per(space.committed - was.committed) };
  }
  return {
    tokens: count,
    rssKiBPerToken,
    heapUsedKiBPerToken: per(after.heapUsed - before.heapUsed),
    heapCommittedKiBPerToken: per(after.heapCommitted - before.heapCommitted),
    estimateKiBPerToken,
    estimateRatio: Math.round((estimateKiBPerToken / rssKiBPerToken) * 100) / 100,
    spaces,
    baselineRssMiB: Math.round(before.rssKiB / 1024),
    afterRssMiB: Math.round(after.rssKiB / 1024),
    fillSeconds: Math.round(fillSeconds * 10) / 10,
  };
}

/**
 * Measures each count in its own child process (`--expose-gc`, niced, on
 * `cpu` when given), so one fill's garbage cannot weigh on the next.
 */
export function measureCacheMemory(counts: readonly number[], cpu?: number): CacheMemoryResult[] {
  const script = fileURLToPath(import.meta.url);
  return counts.map((count) => {
    const node = [process.execPath, "--expose-gc", script, String(count)];
    const [command, args] = cpu === undefined ? [node[0]!, node.slice(1)] : ["taskset", ["-c", String(cpu), ...node]];
    const child = spawnSync(command, args, { encoding: "utf8", timeout: 600_000, maxBuffer: 1 << 20 });
    if (child.status !== 0) throw new Error(`cache-memory child for ${count} tokens failed (${child.status ?? child.signal}): ${child.stderr.slice(-2000)}`);
    return JSON.parse(child.stdout.trim().split("\n").at(-1)!) as CacheMemoryResult;
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const count = process.argv[2];
  if (count !== undefined) process.stdout.write(`${JSON.stringify(await measureHere(Number(count)))}\n`);
  else for (const result of measureCacheMemory([100_000, 1_000_000])) process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
}
