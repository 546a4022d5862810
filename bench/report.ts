/**
 * The benchmark's output: the result shape (written as JSON), the table
 * printed to the terminal (and pasted into the README), the targets with
 * PASS/MISS, and a small hand-written SVG chart.
 */
import type { CacheMemoryResult } from "./cache-memory.js";
import type { ProfileSummary } from "./profile.js";
import { round } from "./common.js";

/** Figures of one loaded scenario at one concurrency. */
export interface LoadRow {
  readonly concurrency: number;
  readonly requests: number;
  readonly rate: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  /** Server CPU (user + system, all threads) per completed call. */
  readonly cpuUsPerCall: number;
  /** Failed requests as the load generator saw them (HTTP level). */
  readonly failures: number;
}

/** A miss run: load figures plus who was busy. */
export type MissRow = LoadRow & { calls: number; statuses: Record<string, number>; serverCpuPercent: number; loaderCpuPercent: number };

/** Latency figures of a timed sequence (revocation). */
export interface TimingStats {
  readonly n: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
}

/** A target, judged on figures of this run. */
export interface Target {
  readonly name: string;
  readonly measured: number;
  readonly bound: number;
  readonly unit: string;
  /** "max": measured must be ≤ bound; "min": ≥ bound. */
  readonly kind: "max" | "min";
  readonly pass: boolean;
  /** measured / bound. */
  readonly ratio: number;
  readonly note?: string;
}

/** Everything one run measured. */
export interface BenchResults {
  meta: {
    date: string;
    commit: string;
    node: string;
    cpu: string;
    cores: number;
    postgres: string;
    durations: { warmUpS: number; measureS: number };
    pinning: string;
    elapsedS: number;
    /** 1-minute load averages: anything above ~1 at the start means other work shares the machine. */
    loadAverageAtStart: number;
    loadAverageAtEnd: number;
    options: string[];
  };
  floor: LoadRow[];
  grpcHit: LoadRow[];
  /** Envoy ext_authz `Check` cache hits, measured in turns with IntrospectToken hits on the same token (phase `extauthz`). */
  extAuthz?: { introspect: LoadRow[]; check: LoadRow[] };
  connectProto: LoadRow[];
  connectJson: LoadRow[];
  /** A repeated legacy JWT and, in the same turns, an opaque hit (gRPC). */
  legacy: { jwtChars: number; jwtGrpc: LoadRow[]; opaqueGrpc: LoadRow[]; joseLocalUsPerVerify: number };
  /**
   * Misses: the service's and the load generator's CPU over the window, as
   * shares of one core, say which side set the pace (the h2 loader costs
   * ~250 µs per call itself, so it tops out near 4,000 calls/s on a free core).
   */
  miss: {
    postgres: MissRow;
    rawPg: { rate: number; p50Ms: number; p99Ms: number; calls: number; found: number; clientCpuPercent: number };
    ratio: number;
    pglite: MissRow;
  };
  revocation: {
    channel: TimingStats;
    channelFromAck: TimingStats;
    /** RevokeToken on A, sent to answered. */
    revokeCall: TimingStats;
    /** Sent to the revocation's notice reaching a listener in the runner (committed and delivered). */
    notice: TimingStats;
    /** That notice to B answering inactive. */
    afterNotice: TimingStats;
    cut: TimingStats;
    cutMechanism: string;
  };
  /** RSS after a full GC (the target's figure), RSS as found, and where the growth is. */
  memory: {
    tokens: number;
    baselineKiB: number;
    afterKiB: number;
    kibPerToken: number;
    raw: { baselineKiB: number; afterKiB: number; kibPerToken: number };
    heapKiBPerToken: number;
    /** Growth of the V8 heap's committed size (heapTotal) per token. */
    heapCommittedKiBPerToken: number;
    externalKiBPerToken: number;
    /** Growth per V8 heap space, used and committed, per token: where RSS above the live heap sits. */
    spaces: Record<string, { usedKiBPerToken: number; committedKiBPerToken: number }>;
    /** RSS growth per token by kind of mapping: brk (the C allocator's main arena), anonymous (V8 pages, other arenas), file. */
    mappingsKiBPerToken: Record<string, number>;
    /** The service's own cache estimate (`token_service_cache_bytes`) per added entry. */
    estimateKiBPerToken: number;
  };
  /** Phase `memory`: the replica cache alone, filled in-process (bench/cache-memory.ts). */
  cacheMemory?: CacheMemoryResult[];
  issue: { calls: number; rate: number; p50Ms: number; p99Ms: number; errors: number; cpuUsPerCall: number };
  /**
   * gRPC cache hits with OpenTelemetry tracing off (replica A) and on (a
   * replica exporting OTLP/protobuf to a sink in the runner), in turns at
   * each concurrency, every request carrying a sampled `traceparent`.
   */
  tracing?: { off: LoadRow[]; on: LoadRow[]; exportRequests: number; exportedKiB: number; spansExported: number; callsTraced: number };
  /**
   * The peer (phase `peer`): oidc-provider's RFC 7662 introspection (memory
   * adapter, its own pinned child process) and the service's
   * `POST /oauth2/introspect`, both driven by wrk with the same form and
   * client_secret_basic, and the service's gRPC hit (h2load), in turns at
   * each concurrency. Ratios are service ÷ oidc-provider requests/s, and
   * oidc-provider's CPU per call ÷ the service's.
   */
  peer?: {
    peer: string;
    /** Bytes of one active answer's JSON body from each. */
    answerBytes: { service: number; peer: number };
    serviceHttp: LoadRow[];
    peerHttp: LoadRow[];
    serviceGrpc: LoadRow[];
    /** The bare grpc-js echo floor, in the same turns. */
    floor: LoadRow[];
    /** The bare node:http floor (bench/http-floor.ts) under the service's wrk script, in the same turns. */
    floorHttp: LoadRow[];
    /** How busy core 0 was over each point, by anyone (%): the server's own share is rate × CPU per call. */
    coreBusy: { concurrency: number; serviceHttp: number; peerHttp: number; serviceGrpc: number; floor: number; floorHttp: number }[];
    /** Service (RFC 7662, gRPC) and echo floor ÷ oidc-provider, requests/s; oidc-provider's CPU per call ÷ theirs. */
    ratios: { concurrency: number; http: number; grpc: number; floor: number; peerCpuOverHttp: number; peerCpuOverGrpc: number; peerCpuOverFloor: number; floorHttp: number }[];
  };
  /**
   * `WORKERS=2` against `WORKERS=1` (phase `workers`): cache hits over gRPC,
   * h2load, the service and h2load both unpinned (the scheduler spreads all
   * of them over both cores), in turns. Per point: requests/s, CPU of the
   * service's processes (the primary apart) and of h2load, in % of one core,
   * and how busy each core was by anyone.
   */
  workers?: {
    concurrency: number;
    points: {
      workers: number;
      rate: number;
      requests: number;
      failures: number;
      serviceCpuPercent: number;
      primaryCpuPercent: number;
      loaderCpuPercent: number;
      core0Busy: number;
      core1Busy: number;
      cpuUsPerCall: number;
      /** h2load's own CPU per call. */
      loaderUsPerCall: number;
    }[];
    /** Mean requests/s of WORKERS=2 ÷ that of WORKERS=1. */
    ratio: number;
    /**
     * Requests/s per core of CPU the service got, times the cores it would
     * have without the load generator on them (2 and 1), WORKERS=2 ÷
     * WORKERS=1: the scaling left once the loader runs elsewhere.
     */
    ratioPerServiceCore: number;
    /** The best WORKERS=2 could do with h2load on the same two cores, at WORKERS=1's CPU per call (service and h2load): 2 ÷ (1 + h2load's ÷ the service's). */
    ceiling: number;
    /** CPU of everything else on the machine during the WORKERS=2 points, % of a core (both cores busy minus service, primary and h2load). */
    othersCpuPercent: number;
  };
  client: Record<string, number> | null;
  checks: string[];
  notes: string[];
  targets: Target[];
  profile?: ProfileSummary & { scenario: string };
}

/** Judges a measured figure against a bound. */
export function target(name: string, measured: number, kind: "max" | "min", bound: number, unit: string, note?: string): Target {
  const pass = Number.isFinite(measured) && (kind === "max" ? measured <= bound : measured >= bound);
  return { name, measured: round(measured), bound, unit, kind, pass, ratio: round(measured / bound), ...(note ? { note } : {}) };
}

/** Old and new space growth per token, used / committed, for the memory rows. */
function spacesText(spaces: Readonly<Record<string, { usedKiBPerToken: number; committedKiBPerToken: number }>>): string {
  const space = (name: string) => spaces[name] ?? { usedKiBPerToken: Number.NaN, committedKiBPerToken: Number.NaN };
  return `${fmt(space("old_space").usedKiBPerToken)} / ${fmt(space("old_space").committedKiBPerToken)} KiB; ${fmt(space("new_space").usedKiBPerToken)} / ${fmt(space("new_space").committedKiBPerToken)} KiB`;
}

/** A figure for a table: n/a, 3 significant digits, whole numbers from 100, thousands separated. */
export function fmt(value: number, digits = 3): string {
  if (!Number.isFinite(value)) return "n/a";
  if (Math.abs(value) < 0.005) return "0";
  if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString("en-US");
  if (Math.abs(value) >= 100) return String(Math.round(value));
  return String(Number(value.toPrecision(digits)));
}

/** A Markdown table, first column left-aligned, the others right-aligned. */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]) => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(" | ")} |`;
  const rule = `|${widths.map((w, i) => (i === 0 ? `:${"-".repeat(w + 1)}` : `${"-".repeat(w + 1)}:`)).join("|")}|`;
  return [line(header), rule, ...rows.map(line)].join("\n");
}

/** The printed report: Markdown tables, so it pastes straight into the README. */
export function renderTable(r: BenchResults): string {
  const out: string[] = [];
  const floorAt = (c: number, floor: readonly LoadRow[] = r.floor) => floor.find((row) => row.concurrency === c)?.cpuUsPerCall ?? Number.NaN;
  const loadRows: string[][] = [];
  /** `vsFloor`: compare with the floor of the hits phase (true) or with the given floor rows. */
  const add = (label: string, rows: readonly LoadRow[], vsFloor: boolean | readonly LoadRow[]) => {
    for (const row of rows) {
      loadRows.push([
        `${label} c=${row.concurrency}`,
        fmt(row.rate),
        fmt(row.p50Ms),
        fmt(row.p99Ms),
        fmt(row.cpuUsPerCall),
        vsFloor === false || !Number.isFinite(floorAt(row.concurrency, vsFloor === true ? r.floor : vsFloor)) ? "" : `${fmt(row.cpuUsPerCall / floorAt(row.concurrency, vsFloor === true ? r.floor : vsFloor))}×`,
        row.failures > 0 ? String(row.failures) : "0",
      ]);
    }
  };
  add("grpc-js echo floor (h2load)", r.floor, false);
  add("IntrospectToken hit, gRPC (h2load)", r.grpcHit, true);
  add("IntrospectToken hit, Connect proto h2c (h2load)", r.connectProto, true);
  add("IntrospectToken hit, Connect JSON HTTP/1.1 (wrk)", r.connectJson, true);
  add(`legacy HS256 JWT (${r.legacy.jwtChars} chars) repeat, gRPC (h2load)`, r.legacy.jwtGrpc, true);
  add("IntrospectToken hit beside the legacy JWT, gRPC (h2load)", r.legacy.opaqueGrpc, true);
  if (r.extAuthz) {
    add("IntrospectToken hit beside Check, gRPC (h2load)", r.extAuthz.introspect, false);
    add("ext_authz Check hit, gRPC (h2load)", r.extAuthz.check, false);
  }
  if (r.tracing) {
    add("IntrospectToken hit, gRPC, tracing off, traceparent sent (h2load)", r.tracing.off, true);
    add("IntrospectToken hit, gRPC, tracing on, OTLP/protobuf export (h2load)", r.tracing.on, true);
  }
  if (r.peer) {
    add("RFC 7662 POST /oauth2/introspect hit, service (wrk)", r.peer.serviceHttp, false);
    add(`RFC 7662 POST /introspect, peer: ${r.peer.peer} (wrk)`, r.peer.peerHttp, false);
    add("IntrospectToken hit beside the peer, gRPC (h2load)", r.peer.serviceGrpc, r.peer.floor);
    add("grpc-js echo floor beside the peer (h2load)", r.peer.floor, false);
    add("node:http floor beside the peer, same form (wrk)", r.peer.floorHttp, false);
  }
  const m = r.miss;
  loadRows.push(["IntrospectToken miss, PostgreSQL (h2 loader, 32 in flight)", fmt(m.postgres.rate), fmt(m.postgres.p50Ms), fmt(m.postgres.p99Ms), fmt(m.postgres.cpuUsPerCall), "", String(m.postgres.failures)]);
  loadRows.push(["IntrospectToken miss, PGlite in-process (h2 loader, 32 in flight)", fmt(m.pglite.rate), fmt(m.pglite.p50Ms), fmt(m.pglite.p99Ms), fmt(m.pglite.cpuUsPerCall), "", String(m.pglite.failures)]);
  loadRows.push(["raw pg lookup by digest (pool 10, 32 in flight, named stmt)", fmt(m.rawPg.rate), fmt(m.rawPg.p50Ms), fmt(m.rawPg.p99Ms), "", "", "0"]);
  loadRows.push(["IssueToken, PostgreSQL (grpc-js client, 16 in flight)", fmt(r.issue.rate), fmt(r.issue.p50Ms), fmt(r.issue.p99Ms), fmt(r.issue.cpuUsPerCall), "", String(r.issue.errors)]);
  out.push(table(["scenario", "req/s", "p50 ms", "p99 ms", "server CPU µs/call", "CPU vs floor", "errors"], loadRows));
  out.push("");

  const other: string[][] = [
    ["cache miss rate ÷ raw pg rate", `${fmt(m.ratio)}×`],
    ["CPU busy during the PostgreSQL miss window: service / h2 loader", `${fmt(m.postgres.serverCpuPercent)} % / ${fmt(m.postgres.loaderCpuPercent)} % of a core`],
    ["CPU busy during the raw pg window: the pg client process", `${fmt(m.rawPg.clientCpuPercent)} % of a core`],
    ["CPU busy during the PGlite miss window: service (with PGlite inside) / h2 loader", `${fmt(m.pglite.serverCpuPercent)} % / ${fmt(m.pglite.loaderCpuPercent)} % of a core`],
    ...r.legacy.jwtGrpc.map((row): [string, string] => {
      const opaque = r.legacy.opaqueGrpc.find((x) => x.concurrency === row.concurrency);
      return [`legacy JWT repeat ÷ opaque hit (in turns), gRPC c=${row.concurrency}: req/s / server CPU per call`, `${fmt(row.rate / (opaque?.rate ?? Number.NaN))}× / ${fmt(row.cpuUsPerCall / (opaque?.cpuUsPerCall ?? Number.NaN))}×`];
    }),
    [`jose jwtVerify HS256, ${r.legacy.jwtChars}-char JWT, key imported once (in-process)`, `${fmt(r.legacy.joseLocalUsPerVerify)} µs/verify`],
    [`revocation seen on the other replica (n=${r.revocation.channel.n}, from RevokeToken sent)`, `p50 ${fmt(r.revocation.channel.p50Ms)} ms, p99 ${fmt(r.revocation.channel.p99Ms)} ms, max ${fmt(r.revocation.channel.maxMs)} ms`],
    [`… counted from RevokeToken answered`, `p50 ${fmt(r.revocation.channelFromAck.p50Ms)} ms, p99 ${fmt(r.revocation.channelFromAck.p99Ms)} ms`],
    [`… RevokeToken itself, sent to answered`, `p50 ${fmt(r.revocation.revokeCall.p50Ms)} ms, p99 ${fmt(r.revocation.revokeCall.p99Ms)} ms, max ${fmt(r.revocation.revokeCall.maxMs)} ms`],
    [`… sent to its notice heard by a listener in the runner`, `p50 ${fmt(r.revocation.notice.p50Ms)} ms, p99 ${fmt(r.revocation.notice.p99Ms)} ms, max ${fmt(r.revocation.notice.maxMs)} ms`],
    [`… that notice to B answering inactive`, `p50 ${fmt(r.revocation.afterNotice.p50Ms)} ms, p99 ${fmt(r.revocation.afterNotice.p99Ms)} ms, max ${fmt(r.revocation.afterNotice.maxMs)} ms`],
    [`revocation with B's listener terminated (n=${r.revocation.cut.n})`, `p50 ${fmt(r.revocation.cut.p50Ms)} ms, p99 ${fmt(r.revocation.cut.p99Ms)} ms, max ${fmt(r.revocation.cut.maxMs)} ms`],
    [`RSS per cached token, after a full GC (${r.memory.tokens.toLocaleString("en-US")} tokens cached)`, `${fmt(r.memory.kibPerToken)} KiB (${fmt(r.memory.baselineKiB / 1024)} → ${fmt(r.memory.afterKiB / 1024)} MiB)`],
    ["… RSS as found, without forcing a GC", `${fmt(r.memory.raw.kibPerToken)} KiB (${fmt(r.memory.raw.baselineKiB / 1024)} → ${fmt(r.memory.raw.afterKiB / 1024)} MiB)`],
    ["… JS heap used / V8 heap committed / ArrayBuffers and external, per token", `${fmt(r.memory.heapKiBPerToken)} / ${fmt(r.memory.heapCommittedKiBPerToken)} / ${fmt(r.memory.externalKiBPerToken)} KiB`],
    ["… V8 old / new space, used / committed, per token", spacesText(r.memory.spaces)],
    ["… RSS growth by mapping, per token: [heap] (malloc) / anonymous (V8, other arenas) / file", `${fmt(r.memory.mappingsKiBPerToken["brk"] ?? Number.NaN)} / ${fmt(r.memory.mappingsKiBPerToken["anonymous"] ?? Number.NaN)} / ${fmt(r.memory.mappingsKiBPerToken["file"] ?? Number.NaN)} KiB`],
    ["… the cache's own estimate per token (token_service_cache_bytes)", `${fmt(r.memory.estimateKiBPerToken)} KiB`],
  ];
  for (const row of r.cacheMemory ?? []) {
    other.push([
      `RSS per cached token, replica cache alone in-process (${row.tokens.toLocaleString("en-US")} tokens, after a full GC)`,
      `${fmt(row.rssKiBPerToken)} KiB (${fmt(row.baselineRssMiB)} → ${fmt(row.afterRssMiB)} MiB); heap used / committed ${fmt(row.heapUsedKiBPerToken)} / ${fmt(row.heapCommittedKiBPerToken)} KiB; estimate ${fmt(row.estimateKiBPerToken)} KiB (${fmt(row.estimateRatio)}×)`,
    ]);
    other.push(["… V8 old / new space, used / committed, per token", spacesText(row.spaces)]);
  }
  if (r.tracing) {
    for (const on of r.tracing.on) {
      const off = r.tracing.off.find((x) => x.concurrency === on.concurrency);
      if (off) other.push([`tracing on ÷ off, gRPC hit c=${on.concurrency}: req/s / server CPU per call`, `${fmt(on.rate / off.rate)}× / ${fmt(on.cpuUsPerCall / off.cpuUsPerCall)}× (+${fmt(on.cpuUsPerCall - off.cpuUsPerCall)} µs)`]);
    }
    other.push(["tracing on: spans exported / calls traced (OTLP requests, KiB)", `${r.tracing.spansExported.toLocaleString("en-US")} / ${r.tracing.callsTraced.toLocaleString("en-US")} (${r.tracing.exportRequests} requests, ${fmt(r.tracing.exportedKiB)} KiB)`]);
  }
  if (r.peer) {
    for (const ratio of r.peer.ratios) {
      other.push([`service ÷ ${r.peer.peer}, c=${ratio.concurrency}: req/s RFC 7662 (node:http floor) / gRPC (grpc-js echo floor)`, `${fmt(ratio.http)}× (${fmt(ratio.floorHttp)}×) / ${fmt(ratio.grpc)}× (${fmt(ratio.floor)}×)`]);
      other.push([`… oidc-provider's server CPU per call ÷ the service's, c=${ratio.concurrency}: RFC 7662 / gRPC (echo floor)`, `${fmt(ratio.peerCpuOverHttp)}× / ${fmt(ratio.peerCpuOverGrpc)}× (${fmt(ratio.peerCpuOverFloor)}×)`]);
    }
    // Share of core 0 each server kept busy (rate × CPU per call): well under
    // 100 % means something else set the pace (the shared machine, the loader),
    // and the requests/s ratio says less than the CPU ratio above.
    const busy = (row: LoadRow | undefined) => (row ? `${fmt((row.rate * row.cpuUsPerCall) / 10_000)} %` : "n/a");
    for (const ratio of r.peer.ratios) {
      const at = (rows: readonly LoadRow[]) => rows.find((row) => row.concurrency === ratio.concurrency);
      const core = r.peer.coreBusy.find((x) => x.concurrency === ratio.concurrency);
      other.push([
        `… core 0 busy with the server / with anything, c=${ratio.concurrency}: service RFC 7662; oidc-provider; node:http floor; service gRPC; echo floor`,
        `${busy(at(r.peer.serviceHttp))} / ${fmt(core?.serviceHttp ?? Number.NaN)} %; ${busy(at(r.peer.peerHttp))} / ${fmt(core?.peerHttp ?? Number.NaN)} %; ${busy(at(r.peer.floorHttp))} / ${fmt(core?.floorHttp ?? Number.NaN)} %; ${busy(at(r.peer.serviceGrpc))} / ${fmt(core?.serviceGrpc ?? Number.NaN)} %; ${busy(at(r.peer.floor))} / ${fmt(core?.floor ?? Number.NaN)} %`,
      ]);
    }
    other.push(["… one active answer's JSON: service / oidc-provider", `${r.peer.answerBytes.service} / ${r.peer.answerBytes.peer} bytes`]);
  }
  if (r.workers) {
    other.push([`WORKERS=2 ÷ WORKERS=1, gRPC hits c=${r.workers.concurrency}, h2load and service unpinned: req/s (per core of service CPU)`, `${fmt(r.workers.ratio)}× (${fmt(r.workers.ratioPerServiceCore)}×)`]);
    other.push(["… ceiling with h2load on the same two cores: 2 ÷ (1 + h2load ÷ service CPU per call); other work on the machine meanwhile", `${fmt(r.workers.ceiling)}×; ${fmt(r.workers.othersCpuPercent)} % of a core`]);
    for (const p of r.workers.points) {
      other.push([
        `… WORKERS=${p.workers}: req/s; CPU µs/call service / h2load; service / its primary / h2load CPU; core 0 / core 1 busy by anyone`,
        `${fmt(p.rate)}; ${fmt(p.cpuUsPerCall)} / ${fmt(p.loaderUsPerCall)}; ${fmt(p.serviceCpuPercent)} / ${fmt(p.primaryCpuPercent)} / ${fmt(p.loaderCpuPercent)} % of a core; ${fmt(p.core0Busy)} / ${fmt(p.core1Busy)} %`,
      ]);
    }
  }
  if (r.client) for (const [key, value] of Object.entries(r.client)) other.push([`client library: ${key}`, fmt(value)]);
  else other.push(["client library (bench/client-bench.ts)", "not present"]);
  out.push(table(["measure", "value"], other));
  out.push("");

  out.push(
    table(
      ["target", "measured", "bound", "ratio", "verdict"],
      r.targets.map((t) => [
        t.name + (t.note ? ` (${t.note})` : ""),
        `${fmt(t.measured)} ${t.unit}`,
        `${t.kind === "max" ? "≤" : "≥"} ${fmt(t.bound)} ${t.unit}`,
        `${fmt(t.ratio)}`,
        t.pass ? "PASS" : `MISS (${t.kind === "max" ? `${fmt((t.ratio - 1) * 100)} % over` : `${fmt((1 - t.ratio) * 100)} % short`})`,
      ]),
    ),
  );
  if (r.profile) {
    out.push("");
    out.push(`Server CPU profile, ${r.profile.scenario}: busy ${fmt(r.profile.totalMs - r.profile.idleMs)} ms of ${fmt(r.profile.totalMs)} ms (GC ${fmt(r.profile.gcMs)} ms). Top self time:`);
    out.push("");
    out.push(table(["function", "where", "self ms", "% of busy"], r.profile.top.map((p) => [p.function, p.where, fmt(p.selfMs), fmt(p.percent)])));
  }
  if (r.notes.length > 0) {
    out.push("");
    out.push("Notes:");
    for (const note of r.notes) out.push(`  - ${note}`);
  }
  if (r.checks.length > 0) {
    out.push("");
    out.push("PROBLEMS (figures above are suspect):");
    for (const check of r.checks) out.push(`  - ${check}`);
  }
  return out.join("\n");
}

function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** One panel of grouped bars. */
function panel(
  title: string,
  groups: readonly string[],
  series: readonly { name: string; color: string; values: readonly number[] }[],
  x: number,
  y: number,
  width: number,
  height: number,
): string {
  const max = Math.max(1, ...series.flatMap((s) => s.values.filter(Number.isFinite)));
  const step = 10 ** Math.floor(Math.log10(max));
  const top = Math.ceil(max / step) * step;
  const plotX = x + 60;
  const plotY = y + 30;
  const plotW = width - 70;
  const plotH = height - 60;
  const parts: string[] = [`<text x="${x + 10}" y="${y + 18}" class="title">${escapeXml(title)}</text>`];
  for (let i = 0; i <= 4; i++) {
    const value = (top * i) / 4;
    const gy = plotY + plotH - (plotH * i) / 4;
    parts.push(`<line x1="${plotX}" y1="${gy}" x2="${plotX + plotW}" y2="${gy}" class="grid"/>`);
    parts.push(`<text x="${plotX - 6}" y="${gy + 4}" class="axis" text-anchor="end">${fmt(value)}</text>`);
  }
  const groupW = plotW / groups.length;
  const barW = (groupW * 0.8) / series.length;
  groups.forEach((group, g) => {
    const gx = plotX + g * groupW + groupW * 0.1;
    series.forEach((s, i) => {
      const value = s.values[g] ?? Number.NaN;
      if (!Number.isFinite(value)) return;
      const h = (plotH * value) / top;
      const bx = gx + i * barW;
      parts.push(`<rect x="${bx.toFixed(1)}" y="${(plotY + plotH - h).toFixed(1)}" width="${(barW - 2).toFixed(1)}" height="${h.toFixed(1)}" fill="${s.color}"><title>${escapeXml(`${s.name}, ${group}: ${fmt(value)}`)}</title></rect>`);
      parts.push(`<text x="${(bx + barW / 2 - 1).toFixed(1)}" y="${(plotY + plotH - h - 3).toFixed(1)}" class="value" text-anchor="middle">${fmt(value)}</text>`);
    });
    parts.push(`<text x="${(gx + groupW * 0.4).toFixed(1)}" y="${plotY + plotH + 16}" class="axis" text-anchor="middle">${escapeXml(group)}</text>`);
  });
  return parts.join("\n");
}

/** A small SVG: requests/s and server CPU per call for the floor and the cache-hit paths, by concurrency. */
export function renderSvg(r: BenchResults): string {
  const concurrencies = r.floor.map((row) => row.concurrency);
  const groups = concurrencies.map((c) => `concurrency ${c}`);
  const pick = (rows: readonly LoadRow[], key: "rate" | "cpuUsPerCall") => concurrencies.map((c) => rows.find((row) => row.concurrency === c)?.[key] ?? Number.NaN);
  const series = (key: "rate" | "cpuUsPerCall") => [
    { name: "grpc-js echo floor", color: "#9e9e9e", values: pick(r.floor, key) },
    { name: "IntrospectToken hit, gRPC", color: "#1f77b4", values: pick(r.grpcHit, key) },
    { name: "hit, Connect proto h2c", color: "#ff7f0e", values: pick(r.connectProto, key) },
    { name: "hit, Connect JSON HTTP/1.1", color: "#2ca02c", values: pick(r.connectJson, key) },
    { name: "legacy JWT, gRPC", color: "#d62728", values: pick(r.legacy.jwtGrpc, key) },
  ];
  const width = 920;
  const legend = series("rate")
    .map((s, i) => `<rect x="${20 + i * 178}" y="48" width="12" height="12" fill="${s.color}"/><text x="${36 + i * 178}" y="58" class="axis">${escapeXml(s.name)}</text>`)
    .join("\n");
  const passed = r.targets.filter((t) => t.pass).length;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="720" viewBox="0 0 ${width} 720" font-family="sans-serif">
<style>
.title { font-size: 14px; font-weight: bold; }
.axis { font-size: 11px; fill: #333; }
.value { font-size: 9px; fill: #333; }
.grid { stroke: #ddd; stroke-width: 1; }
</style>
<rect width="100%" height="100%" fill="white"/>
<text x="20" y="24" class="title">Token introspection benchmark, ${escapeXml(r.meta.date.slice(0, 10))} (${escapeXml(r.meta.commit.slice(0, 12))}), targets met: ${passed}/${r.targets.length}</text>
<text x="20" y="40" class="axis">${escapeXml(`${r.meta.cpu}, ${r.meta.pinning}; ${r.meta.durations.measureS} s per point`)}</text>
${legend}
${panel("Requests per second (higher is better)", groups, series("rate"), 0, 70, width, 320)}
${panel("Server CPU per call, µs (lower is better)", groups, series("cpuUsPerCall"), 0, 390, width, 320)}
</svg>
`;
}
