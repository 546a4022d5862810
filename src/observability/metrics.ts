/**
 * The service's Prometheus metrics (prom-client), served at `GET /metrics` on
 * the HTTP port. Every metric, its labels and where it is measured:
 *
 * - per call, both servers: `token_service_rpc_duration_seconds` (histogram)
 *   and `token_service_rpc_handled_total` (counter, the same series' counts),
 *   labelled `server`, `service`, `method`, `code`. Recorded through a
 *   {@link CallObserver} the transports call with their descriptors and the
 *   gRPC code enum, so every label value comes from a fixed set.
 * - per resolved token: `token_service_introspections_total{use,token_kind,outcome}`
 *   and, for legacy JWTs presented for introspection,
 *   `token_service_legacy_jwt_introspections_total{outcome}`, through the
 *   domain's `DomainMetrics` port.
 * - per security event: `token_service_security_events_total{type,severity}`;
 *   events folded into a per-window overflow row,
 *   `token_service_security_events_overflowed_total`; events never stored,
 *   `token_service_security_events_dropped_total{reason}`.
 * - per revocation notice: `token_service_revocation_propagation_seconds`.
 * - read at scrape time, no per-call cost: the cache (`TokenCache.stats()`),
 *   the revocation listener (`RevocationChannel.stats()`) and the store's
 *   connection pool (`OpenedDatabase.poolStats()`).
 * - per refusal by a rate limit or cap: `token_service_rate_limited_total{limit}`
 *   (the domain's `RateLimitMetrics` port); at scrape time the buckets held,
 *   store lookups and writes in flight and queued, negative cache entries and
 *   coalesced lookups.
 * - prom-client's default process and Node.js metrics (`process_*`, `nodejs_*`).
 */
import { performance } from "node:perf_hooks";
import type { DescMethod } from "@bufbuild/protobuf";
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { Logger as PinoLogger } from "pino";
import type { InactiveReason, IntrospectionUse, TokenKind } from "../domain/introspect.js";
import type { SecurityEvent } from "../domain/model.js";
import type { DomainMetrics, SecurityEventMetrics } from "../domain/ports.js";
import type { LimitName, RateLimitMetrics } from "../domain/rate-limit.js";
import type { CallFacts, CallObserver, CallRecorder, HttpRequestRecorder, ServerName } from "../server/call-observer.js";
import { peerKey } from "../server/context.js";
import { requestIdKey } from "../server/request-id.js";
import { CounterRow, HistogramRow, HotCounter, HotHistogram } from "./hot-metrics.js";

/** Every metric of ours starts with this. */
export const METRIC_PREFIX = "token_service_";

/** gRPC status code names (the `code` label), indexed by number (gRPC's status codes, which Connect shares). */
export const GRPC_CODE_NAMES: readonly string[] = Object.freeze([
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
]);

/**
 * Call durations, in seconds. A cached introspection takes tens of
 * microseconds of handler time and a store read a millisecond or a few, so
 * the low buckets are fine-grained; streams (WatchRevocations) land in +Inf.
 */
const RPC_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** Revocation propagation, in seconds: normally milliseconds; up to the staleness bound when the channel is cut. */
const LAG_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** What the scrape-time collectors read; each is optional (tokenctl and tests wire less). */
export interface MetricsSources {
  /** `TokenCache.stats()`. */
  readonly cache?: { stats(): { size: number; bytes: number; hits: number; misses: number; evictions: number } };
  /** `RevocationChannel.stats()`. */
  readonly listener?: { stats(): { up: boolean; reconnects: number; losses: number } };
  /** `OpenedDatabase.poolStats` (PostgreSQL only). */
  readonly pool?: () => { total: number; idle: number; waiting: number; max: number };
  /** `RevocationHub.mark()`: the revocation log position applied and when it was last confirmed (ms). */
  readonly revocations?: { mark(): { position: number; confirmedAt: number } };
}

/** Constant facts about this process, exported as `token_service_info` labels. */
export interface ServiceInfo {
  readonly environment: string;
  readonly store: string;
}

/**
 * All metrics of one service instance, in its own registry (so tests can run
 * several services in one process). Implements the domain's
 * {@link DomainMetrics} port and the transports' {@link CallObserver}; the
 * latter also writes the per-request debug log line.
 */
export class ServiceMetrics implements DomainMetrics, SecurityEventMetrics, CallObserver, RateLimitMetrics {
  /** The registry `/metrics` serves. */
  readonly registry = new Registry();
  readonly #log: PinoLogger;
  readonly #rpcDuration: HotHistogram;
  readonly #introspections: HotCounter;
  /** use → kind → outcome → row, rows made on first use. */
  readonly #outcomeRows: Record<IntrospectionUse, Record<TokenKind | "unrecognized", Partial<Record<"active" | InactiveReason, CounterRow>>>>;
  readonly #securityEvents: Counter<"type" | "severity">;
  readonly #securityEventsOverflowed: Counter;
  readonly #securityEventsDropped: Counter<"reason">;
  readonly #revocationLag: Histogram;
  readonly #rateLimited: Counter<"limit">;
  /** Whether debug lines are wanted: read per call, so kept current rather than asked of pino each time. */
  #debug: boolean;

  constructor(log: PinoLogger, info: ServiceInfo, options: { readonly defaultMetrics?: boolean } = {}) {
    this.#log = log;
    this.#debug = log.isLevelEnabled("debug");
    log.on("level-change", () => {
      this.#debug = log.isLevelEnabled("debug");
    });
    const registers = [this.registry];
    if (options.defaultMetrics !== false) collectDefaultMetrics({ register: this.registry });

    new Gauge({
      name: `${METRIC_PREFIX}info`,
      help: "Always 1; the labels say which environment this replica serves and which store it uses.",
      labelNames: ["environment", "store"],
      registers,
      aggregator: "first", // under WORKERS, one line for the replica, not one per worker summed
    }).set({ environment: info.environment, store: info.store }, 1);

    this.#rpcDuration = new HotHistogram(
      { name: `${METRIC_PREFIX}rpc_duration_seconds`, help: "Time to handle a call, from the handler's start to its status, by server, service, method and gRPC code.", buckets: RPC_BUCKETS },
      this.registry,
    );
    const rpcDuration = this.#rpcDuration;
    new Counter({
      name: `${METRIC_PREFIX}rpc_handled_total`,
      help: "Calls finished, by server (grpc: the gRPC port; http: the Connect port), service, method and gRPC code.",
      labelNames: ["server", "service", "method", "code"],
      registers,
      collect() {
        this.reset();
        for (const row of rpcDuration.rows()) this.inc(row.labels, row.count);
      },
    });

    this.#introspections = new HotCounter(
      {
        name: `${METRIC_PREFIX}introspections_total`,
        help: "Tokens resolved, by use (introspect: a token presented to IntrospectToken or an HTTP endpoint; authenticate: a caller's own credential), token_kind (opaque, legacy_jwt, unrecognized) and outcome (active or the inactive reason).",
      },
      this.registry,
    );
    const empty = () => ({ opaque: {}, legacy_jwt: {}, unrecognized: {} });
    this.#outcomeRows = { introspect: empty(), authenticate: empty() };
    const introspections = this.#introspections;
    new Counter({
      name: `${METRIC_PREFIX}legacy_jwt_introspections_total`,
      help: "Legacy JWTs presented for introspection, by outcome (active or the inactive reason): who still has to migrate is in ListLegacyJwtUsage.",
      labelNames: ["outcome"],
      registers,
      collect() {
        this.reset();
        for (const row of introspections.rows()) {
          if (row.labels["token_kind"] === "legacy_jwt" && row.labels["use"] === "introspect") this.inc({ outcome: row.labels["outcome"] ?? "" }, row.value);
        }
      },
    });

    this.#securityEvents = new Counter({
      name: `${METRIC_PREFIX}security_events_total`,
      help: "Security events raised, by type and severity (every occurrence; the log and the table fold repeats).",
      labelNames: ["type", "severity"],
      registers,
    });
    this.#securityEventsOverflowed = new Counter({
      name: `${METRIC_PREFIX}security_events_overflowed_total`,
      help: "Security events folded into a per-window overflow row (one per type and severity) because the window's row cap was reached.",
      registers,
    });
    this.#securityEventsDropped = new Counter({
      name: `${METRIC_PREFIX}security_events_dropped_total`,
      help: "Security events never stored, by reason: buffer_full (the store was away longer than the retry buffer lasts) or refused (the store refused the write; not retried).",
      labelNames: ["reason"],
      registers,
    });
    this.#revocationLag = new Histogram({
      name: `${METRIC_PREFIX}revocation_propagation_seconds`,
      help: "From the revoking statement in the database (its clock) to this replica's eviction of the token (this replica's clock), per revocation notice received.",
      buckets: LAG_BUCKETS,
      registers,
    });
    this.#rateLimited = new Counter({
      name: `${METRIC_PREFIX}rate_limited_total`,
      help: "Requests refused by a rate limit or cap (per replica), by limit: caller_introspect, caller_issue, caller_revoke, caller_list (per caller token), failed_auth_peer (failed authentications per address), store_lookups (lookups in flight per caller), store_writes (the write queue).",
      labelNames: ["limit"],
      registers,
    });
  }

  /** Counts one refusal by a rate limit or cap. */
  rateLimited(limit: LimitName): void {
    this.#rateLimited.inc({ limit });
  }

  /** Registers the scrape-time readings of the rate limits, the write gate and the negative cache. */
  watchLimits(sources: {
    readonly limits?: { stats(): { buckets: number; lookups: { running: number; queued: number } } };
    readonly writes?: { stats(): { running: number; queued: number } };
    readonly cache?: { stats(): { negatives: number; coalesced: number } };
  }): void {
    const registers = [this.registry];
    const { limits, writes, cache } = sources;
    if (limits !== undefined) {
      scrapedGauge(registers, "rate_limit_buckets", "Token buckets held by the rate limits now (idle ones are dropped).", () => limits.stats().buckets);
      scrapedGauge(registers, "store_lookups_in_flight", "Token lookups (cache misses) reading the store now, over every caller.", () => limits.stats().lookups.running);
      scrapedGauge(registers, "store_lookups_queued", "Token lookups waiting for their caller's in-flight cap now.", () => limits.stats().lookups.queued);
    }
    if (writes !== undefined) {
      scrapedGauge(registers, "store_writes_in_flight", "Store operations other than token lookups (issue, revoke, list, …) running now.", () => writes.stats().running);
      scrapedGauge(registers, "store_writes_queued", "Store operations other than token lookups waiting for a slot now.", () => writes.stats().queued);
    }
    if (cache !== undefined) {
      scrapedGauge(registers, "cache_negative_entries", "Unknown tokens remembered now, in the cache's own segment for them.", () => cache.stats().negatives);
      scrapedCounter(registers, "cache_coalesced_lookups_total", "Cache misses that joined an identical store read already in flight instead of making their own.", () => cache.stats().coalesced);
    }
  }

  // ------------------------------------------------------------ DomainMetrics

  /** Counts one resolved token (the domain's hot path: two property reads and an increment). */
  introspected(kind: TokenKind | "unrecognized", outcome: "active" | InactiveReason, use: IntrospectionUse): void {
    const rows = this.#outcomeRows[use][kind];
    (rows[outcome] ??= this.#introspections.row({ use, token_kind: kind, outcome })).inc();
  }

  /** Counts one security event. */
  securityEvent(event: SecurityEvent): void {
    this.#securityEvents.inc({ type: event.type, severity: event.severity });
  }

  /** Counts security events folded into an overflow row. */
  securityEventsOverflowed(count: number): void {
    this.#securityEventsOverflowed.inc(count);
  }

  /** Counts security events that were never stored. */
  securityEventsDropped(reason: "buffer_full" | "refused", count: number): void {
    this.#securityEventsDropped.inc({ reason }, count);
  }

  // ------------------------------------------------------------ CallObserver

  /**
   * The recorder of one method: per call, a clock read, an array index, a
   * histogram observation and a level check; the log line only at debug.
   */
  recorder(server: ServerName, method: DescMethod): CallRecorder {
    const service = method.parent.typeName;
    const procedure = `/${service}/${method.name}`;
    const byCode: (HistogramRow | undefined)[] = new Array<HistogramRow | undefined>(GRPC_CODE_NAMES.length);
    const histogram = this.#rpcDuration;
    const log = this.#log;
    return (rawCode: number, startMs: number, facts: CallFacts) => {
      const ms = performance.now() - startMs;
      const code = rawCode >= 0 && rawCode < GRPC_CODE_NAMES.length ? rawCode : 2; // UNKNOWN
      (byCode[code] ??= histogram.row({ server, service, method: method.name, code: GRPC_CODE_NAMES[code]! })).observe(ms / 1000);
      if (this.#debug) {
        const values = facts.values;
        log.debug(
          { request_id: values.get(requestIdKey), server, method: procedure, code: GRPC_CODE_NAMES[code], duration_ms: round3(ms), peer: values.get(peerKey) },
          "request",
        );
      }
    };
  }

  /** At debug, a recorder that logs one plain HTTP request (`/auth`, `/metrics`, …); else nothing, at no cost. */
  httpRequest(): HttpRequestRecorder | undefined {
    if (!this.#debug) return undefined;
    const startMs = performance.now();
    return (method, path, status, requestId, peer) =>
      this.#log.debug(
        { request_id: requestId, server: "http", http_method: method, path: path.slice(0, 256), status, duration_ms: round3(performance.now() - startMs), peer },
        "request",
      );
  }

  // ------------------------------------------------------------ the rest

  /** A revocation notice was applied; `committedAtMs` is the database's time of the revoking statement. */
  revocationApplied(committedAtMs: number | undefined): void {
    if (committedAtMs === undefined) return;
    // Clocks of two machines: a small negative difference is skew, not time travel.
    this.#revocationLag.observe(Math.max(0, Date.now() - committedAtMs) / 1000);
  }

  /** Registers the scrape-time readings of the cache, the listener and the pool. */
  watch(sources: MetricsSources): void {
    const registers = [this.registry];
    const { cache, listener, pool, revocations } = sources;
    if (cache !== undefined) {
      scrapedCounter(registers, "cache_hits_total", "Introspection cache lookups answered from the cache.", () => cache.stats().hits);
      scrapedCounter(registers, "cache_misses_total", "Introspection cache lookups that went to the store (absent, or too stale to serve).", () => cache.stats().misses);
      scrapedCounter(registers, "cache_evictions_total", "Entries dropped: least recently used beyond the bounds, revoked, or cleared when the revocation channel came back.", () => cache.stats().evictions);
      scrapedGauge(registers, "cache_entries", "Entries in the introspection cache now.", () => cache.stats().size);
      scrapedGauge(registers, "cache_bytes", "Estimated memory held by the introspection cache now, in bytes.", () => cache.stats().bytes);
    }
    if (listener !== undefined) {
      scrapedGauge(registers, "revocation_listener_up", "1 while the revocation channel (LISTEN) is subscribed and proving itself, 0 while it is being reopened.", () => (listener.stats().up ? 1 : 0));
      scrapedCounter(registers, "revocation_listener_reconnects_total", "Times the revocation channel was reopened after its first subscription.", () => listener.stats().reconnects);
      scrapedCounter(registers, "revocation_listener_losses_total", "Times the revocation channel was declared lost (connection error or no heartbeat back in time).", () => listener.stats().losses);
    }
    if (revocations !== undefined) {
      // Under WORKERS the cluster reports the worst worker: the lowest position, the oldest confirmation.
      new Gauge({
        name: `${METRIC_PREFIX}revocation_log_position`,
        help: "The revocation log position this replica has applied: every revocation up to it has reached its cache. A replica trailing the others is lagging behind the log.",
        registers,
        aggregator: "min",
        collect() {
          this.set(revocations.mark().position);
        },
      });
      new Gauge({
        name: `${METRIC_PREFIX}revocation_confirmed_age_seconds`,
        help: "Seconds since this replica last proved it had heard every revocation (heartbeat back, or successful poll); cached answers are served only while this is within CACHE_STALENESS.",
        registers,
        aggregator: "max",
        collect() {
          const at = revocations.mark().confirmedAt;
          this.set(at === 0 ? Number.POSITIVE_INFINITY : Math.max(0, Date.now() - at) / 1000);
        },
      });
    }
    if (pool !== undefined) {
      scrapedGauge(registers, "store_pool_connections", "PostgreSQL connections open in the pool (in use and idle).", () => pool().total);
      scrapedGauge(registers, "store_pool_idle_connections", "PostgreSQL connections open and idle.", () => pool().idle);
      scrapedGauge(registers, "store_pool_waiting_requests", "Queries waiting for a pooled connection.", () => pool().waiting);
      scrapedGauge(registers, "store_pool_max_connections", "The pool's limit (DATABASE_POOL_MAX).", () => pool().max);
    }
  }

  /**
   * Cache misses by where they were read (DATABASE_READ_URL): `served` by
   * the read replica, every other outcome read again (or only) from the
   * primary; and the replica pool's use.
   */
  watchReplicaReads(reads: { stats(): Readonly<Record<string, number>> }, pool: () => { total: number; idle: number; waiting: number; max: number }): void {
    const registers = [this.registry];
    new Counter({
      name: `${METRIC_PREFIX}replica_reads_total`,
      help: "Cache misses routed to the read replica, by outcome: served (answered by the replica), lagging (the replica had not replayed a revocation this replica applied), unconfirmed (no recent revocation confirmation to prove a replica answer by), not_found (no such row on the replica, perhaps not replayed yet), failed (replica error), skipped (replica unreachable or recently lagging); all but served are read from the primary.",
      labelNames: ["outcome"],
      registers,
      collect() {
        this.reset();
        for (const [outcome, count] of Object.entries(reads.stats())) this.inc({ outcome }, count);
      },
    });
    scrapedGauge(registers, "replica_pool_connections", "Read replica connections open in its pool (in use and idle).", () => pool().total);
    scrapedGauge(registers, "replica_pool_waiting_requests", "Queries waiting for a read replica connection.", () => pool().waiting);
  }

  /** The text exposition and its content type. */
  async exposition(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}

type Registers = Registry[];

/** A counter whose value is read from a monotonic source at scrape time. */
function scrapedCounter(registers: Registers, name: string, help: string, read: () => number): void {
  new Counter({
    name: `${METRIC_PREFIX}${name}`,
    help,
    registers,
    collect() {
      this.reset();
      this.inc(read());
    },
  });
}

/** A gauge read at scrape time. */
function scrapedGauge(registers: Registers, name: string, help: string, read: () => number): void {
  new Gauge({
    name: `${METRIC_PREFIX}${name}`,
    help,
    registers,
    collect() {
      this.set(read());
    },
  });
}

function round3(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
