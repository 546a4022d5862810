import cluster from "node:cluster";
import { pathToFileURL } from "node:url";
import { runPrimary } from "./cluster.js";
import type { Logger as PinoLogger } from "pino";
import { file_grpc_reflection_v1_reflection } from "../gen/grpc/reflection/v1/reflection_pb.js";
import { file_grpc_reflection_v1alpha_reflection } from "../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { file_health_v1_health } from "../gen/health/v1/health_pb.js";
import { TokenService, file_tokens_v1_token_service } from "../gen/tokens/v1/token_service_pb.js";
import { ConfigError, loadConfig, redactUrl, type Config } from "./config.js";
import { bootstrapAdmin } from "./domain/issue.js";
import { systemClock, type Clock, type TokenDeps } from "./domain/ports.js";
import { SecurityEventRecorder } from "./domain/security-events.js";
import { LastUsedRecorder, LegacyUsageRecorder } from "./domain/usage.js";
import { loadLegacyJwtPolicy } from "./keys/legacy-keys.js";
import { KyselyLegacyJwtStore } from "./storage/legacy-jwt-store.js";
import { KyselySigningKeyStore } from "./storage/signing-key-store.js";
import { KyselyServerSecretStore } from "./storage/server-secret-store.js";
import { loadPageTokens } from "./domain/paging.js";
import { BackendJwtKeys } from "./keys/backend-jwt.js";
import { loadKeyEncryptionKeys } from "./keys/kek-config.js";
import { createIntrospectionCache, createLegacyAnswerCache } from "./domain/introspect.js";
import { RevocationHub } from "./domain/revocation-hub.js";
import { RateLimits, isLimited } from "./domain/rate-limit.js";
import { GatedTokenStore } from "./domain/write-gate.js";
import { RevocationScheduler } from "./domain/revocation-scheduler.js";
import { RotationWatcher } from "./domain/rotate.js";
import { RevocationChannel } from "./storage/revocation-channel.js";
import { KyselyRevocationLog } from "./storage/revocation-log.js";
import { RevocationLogPruner, RevocationPoller } from "./domain/revocation-tasks.js";
import { httpRoutes } from "./server/http-routes.js";
import { oauthMetadataOptions } from "./server/http/metadata.js";
import { forwardAuthOptions } from "./server/http/forward-auth.js";
import { leakEndpointOptions } from "./server/http/secret-scanning.js";
import { TokenRateLimiter } from "./domain/usage-binding.js";
import { createLogger } from "./logger.js";
import { ServiceMetrics } from "./observability/metrics.js";
import { metricsRoute, withRoute } from "./observability/metrics-route.js";
import { clusterMetricsSource } from "./observability/cluster-metrics.js";
import { Tracing } from "./observability/tracing.js";
import { TokenServiceHandler } from "./rpc/token-service.js";
import { ExtAuthzHandler, extAuthzOptions } from "./rpc/ext-authz.js";
import { Authorization } from "../gen/envoy/service/auth/v3/external_auth_pb.js";
import { startGrpcServer } from "./server/grpc-server.js";
import { createHealthService } from "./server/health.js";
import { startHttpServer, type HttpRequest, type HttpResponse } from "./server/http-server.js";
import { grpcServerCredentials, httpTlsOptions, loadTlsMaterial } from "./server/tls.js";
import { createReflectionServices } from "./server/reflection.js";
import { routeServices } from "./server/http-server.js";
import { migrateToLatest, openDatabase, openReadReplica, type OpenedDatabase } from "./storage/database.js";
import { ReplicaReadRouter, withReplicaReads } from "./domain/replica-reads.js";
import { PgReplicaReads } from "./storage/replica-reads.js";
import { KyselySecurityEventStore } from "./storage/security-event-store.js";
import { KyselyTokenStore } from "./storage/token-store.js";

/** A running service, as `startService` returns it. */
export interface RunningService {
  readonly grpcPort: number;
  readonly httpPort: number;
  readonly deps: TokenDeps;
  readonly database: OpenedDatabase;
  /** The revocation transport (the LISTEN channel, or the log poller), for its state (tests, diagnostics). */
  readonly channel: RevocationTransport;
  /** The metrics (`/metrics`), unless METRICS_ENABLED=false and the log level is above debug. */
  readonly metrics: ServiceMetrics | undefined;
  /** OpenTelemetry tracing, when on (OTEL_TRACES_EXPORTER=otlp). */
  readonly tracing: Tracing | undefined;
  /** Graceful shutdown: stop accepting, finish in-flight calls, flush batched writes, close the store. */
  stop(): Promise<void>;
}

/** How a replica hears of revocations: `REVOCATION_TRANSPORT`. */
export type RevocationTransport = RevocationChannel | RevocationPoller;

/** Options beyond configuration, for tests and embedding. */
export interface StartOptions {
  /** Tests only: delay every revocation notice this long on this replica (a lagging replica). */
  readonly revocationNoticeDelayMs?: number;
  readonly log?: PinoLogger;
  readonly clock?: Clock;
  /** Where the first-start bootstrap token is shown; stdout by default. */
  readonly showBootstrapToken?: (token: string, subject: string) => void;
  /** False in cluster workers: the primary bootstraps once, before forking. */
  readonly bootstrapOnFirstStart?: boolean;
}

/** Opens the store and builds the domain's dependencies (shared with tokenctl). */
export async function openDeps(config: Config, log: PinoLogger, clock: Clock = systemClock, metrics?: ServiceMetrics, tracing?: Tracing, noticeDelayMs = 0) {
  // Before the store: staging and production without a key-encryption key stop here, having touched nothing.
  const keks = await loadKeyEncryptionKeys(config, log);
  const database = await openDatabase({
    ...(config.databaseUrl ? { url: config.databaseUrl } : { dataDir: config.dataDir }),
    poolMax: config.databasePoolMax,
    connectTimeoutMs: config.databaseConnectTimeoutMs,
    statementTimeoutMs: config.databaseStatementTimeoutMs,
    onIdleClientError: (err) => log.warn({ err }, "a database connection failed; the pool replaces it"),
  });
  try {
    const applied = await migrateToLatest(database.db);
    log.info({ store: database.kind, applied }, applied.length > 0 ? "migrations applied" : "schema up to date");
  } catch (error) {
    await database.close();
    throw error;
  }
  let pageTokens;
  try {
    // Shared by every replica through the store, so a page continues anywhere.
    pageTokens = await loadPageTokens(new KyselyServerSecretStore(database.db));
  } catch (error) {
    await database.close();
    throw error;
  }
  // Writes and other slow operations get part of the pool, never all of it: the
  // hot path's lookups keep the rest (see domain/write-gate.ts).
  const kyselyStore = new KyselyTokenStore(database.db, database.prepared);
  // Cache misses from a streaming replica (DATABASE_READ_URL), proven against
  // this replica's revocation position; everything else stays on the primary
  // (domain/replica-reads.ts). The hub is read at call time only.
  const readReplica = config.databaseReadUrl === undefined ? undefined : openReadReplica(config.databaseReadUrl, {
    poolMax: config.databaseReadPoolMax,
    connectTimeoutMs: config.databaseConnectTimeoutMs,
    statementTimeoutMs: config.databaseStatementTimeoutMs,
    onIdleClientError: (err) => log.warn({ err }, "a read replica connection failed; the pool replaces it"),
  });
  const replicaReads = readReplica === undefined ? undefined : new ReplicaReadRouter(new PgReplicaReads(readReplica), (digest) => kyselyStore.findByDigest(digest), { mark: () => revocations.mark() }, { stalenessMs: config.cacheStalenessMs }, log);
  if (config.databaseReadUrl !== undefined) log.info({ read_replica: redactUrl(config.databaseReadUrl) }, "cache misses are read from the read replica");
  const routedStore = replicaReads === undefined ? kyselyStore : withReplicaReads(kyselyStore, replicaReads);
  // Traced: each store query inside a traced call gets a child span.
  const store = new GatedTokenStore(tracing ? tracing.traceStore(routedStore) : routedStore, {
    maxConcurrent: config.databaseWriteConcurrency > 0 ? config.databaseWriteConcurrency : Math.max(1, Math.floor(config.databasePoolMax / 2)),
    maxQueued: config.databaseWriteQueue,
    ...(metrics ? { onRefused: (limit: Parameters<ServiceMetrics["rateLimited"]>[0]) => metrics.rateLimited(limit) } : {}),
  });
  const securityEvents = new KyselySecurityEventStore(database.db);
  const events = new SecurityEventRecorder(securityEvents, log, clock, config.securityEventWindowMs, metrics, {
    maxRowsPerWindow: config.securityEventRowsPerWindow,
    maxBufferedRows: config.securityEventBufferRows,
    retentionMs: config.securityEventRetentionMs,
  });
  const usage = new LastUsedRecorder(store, log, config.lastUsedFlushMs);
  const legacyStore = new KyselyLegacyJwtStore(database.db);
  const legacyUsage = new LegacyUsageRecorder(legacyStore, log, config.lastUsedFlushMs);
  let legacyPolicy;
  try {
    legacyPolicy = await loadLegacyJwtPolicy(config, log);
  } catch (error) {
    await database.close();
    throw error;
  }
  const backendJwt = new BackendJwtKeys(
    new KyselySigningKeyStore(database.db),
    keks.keys,
    {
      alg: config.backendJwtAlgorithm,
      ttlMs: config.backendJwtTtlMs,
      rotationMs: config.backendJwtKeyRotationMs,
      refreshMs: config.backendJwtKeyRefreshMs,
      issuer: config.backendJwtIssuer ?? config.tokenIssuer,
      audience: config.backendJwtAudience.length > 0 ? config.backendJwtAudience : config.tokenAudience,
    },
    clock,
    log,
  );
  const cache = createIntrospectionCache({
    maxEntries: config.cacheMaxEntries,
    maxBytes: config.cacheMaxMegabytes * 1024 * 1024,
    stalenessMs: config.cacheStalenessMs,
    negativeTtlMs: config.cacheNegativeTtlMs,
    negativeMaxEntries: config.cacheNegativeMaxEntries,
  });
  // Per replica: see domain/rate-limit.ts.
  const limits = new RateLimits(
    {
      perCaller: { introspect: config.rateLimitIntrospect, issue: config.rateLimitIssue, revoke: config.rateLimitRevoke, list: config.rateLimitList },
      failedAuthPerPeer: config.rateLimitFailedAuth,
      maxKeys: config.rateLimitMaxKeys,
      lookupsInFlightPerCaller: config.lookupsInFlightPerCaller,
      lookupsQueuedPerCaller: config.lookupsQueuedPerCaller,
    },
    config.environment,
    events,
    metrics,
  );
  // One fan-out for revocation notices: this replica's cache and every
  // WatchRevocations stream. It keeps the replica's place in the revocation
  // log and catches up from it after a blip instead of flushing the cache.
  const revocationLog = new KyselyRevocationLog(database.db);
  const revocations = new RevocationHub(revocationLog, log);
  // Verified legacy JWTs, kept until exp and evicted by jti (domain/legacy-jwt.ts):
  // few next to API tokens, so a tenth of the cache's bounds.
  const legacyCache = createLegacyAnswerCache({
    maxEntries: Math.max(1000, Math.floor(config.cacheMaxEntries / 10)),
    maxBytes: Math.max(1 << 20, Math.floor((config.cacheMaxMegabytes * 1024 * 1024) / 10)),
    stalenessMs: config.cacheStalenessMs,
  });
  revocations.subscribe({
    revoked: (key, tokenId) => {
      cache.evict(key);
      backendJwt.forget(tokenId);
    },
    legacyRevoked: (jti) => legacyCache.evictJti(jti),
    confirmed: (atMs) => {
      cache.confirmUntil(atMs);
      legacyCache.confirmUntil(atMs);
    },
    reset: () => {
      cache.clear();
      legacyCache.clear();
    },
  });
  const channel: RevocationTransport =
    config.revocationTransport === "poll"
      ? new RevocationPoller(revocations, config.revocationPollIntervalMs, log)
      : new RevocationChannel(
          database.listen,
          {
            revoked: (key, tokenId, committedAtMs, position) => {
              revocations.revoked(key, tokenId, position);
              metrics?.revocationApplied(committedAtMs); // evicted by now: the hub is synchronous
            },
            noticed: (position) => revocations.noticed(position),
            confirmed: (atMs) => revocations.confirm(atMs),
            restored: () => revocations.restored(),
            lost: () => undefined, // cached answers age out within the staleness bound; the channel logs it
          },
          { heartbeatMs: config.revocationHeartbeatMs, timeoutMs: config.revocationHeartbeatTimeoutMs, maxBackoffMs: 5_000, noticeDelayMs },
          log,
        );
  const pruner = new RevocationLogPruner(revocationLog, config.revocationLogRetentionMs, log);
  // Rotation and bulk revocation share the write gate (issue 13).
  const lifecycleStore = store.lifecycle(kyselyStore);
  const scheduler = new RevocationScheduler({ store: lifecycleStore, cache, events, clock, log, environment: config.environment }, config.revocationSchedulerMs);
  const deps: TokenDeps = {
    cache,
    revocations,
    legacy: { policy: legacyPolicy, store: legacyStore, usage: legacyUsage, cache: legacyCache },
    backendJwt,
    store,
    securityEvents,
    events,
    usage,
    clock,
    log,
    pageTokens,
    ...(metrics ? { metrics } : {}),
    limits,
    lifecycle: {
      store: lifecycleStore,
      maxGraceMs: config.rotationMaxGraceMs,
      defaultGraceMs: config.rotationDefaultGraceMs,
      watcher: new RotationWatcher({ lifecycle: lifecycleStore, tokens: store, cache, events, clock, log, environment: config.environment }),
    },
    ...(tracing ? { tracing: tracing.domain } : {}),
    // Tokens with a rate limit of their own: per replica, like every limit.
    tokenRates: new TokenRateLimiter(config.rateLimitMaxKeys),
    policy: {
      environment: config.environment,
      issuer: config.tokenIssuer,
      audience: config.tokenAudience,
      defaultTtlMs: config.tokenDefaultTtlMs,
      maxTtlMs: config.tokenMaxTtlMs,
      requireExpiry: config.tokenRequireExpiry,
      maxActiveTokensPerSubject: config.maxActiveTokensPerSubject,
      metadataAllowedKeys: config.tokenMetadataAllowedKeys,
    },
  };
  metrics?.watch({ cache, listener: channel, revocations, ...(database.poolStats ? { pool: database.poolStats } : {}) });
  metrics?.watchLimits({ limits, writes: store, cache });
  if (replicaReads !== undefined && readReplica !== undefined) metrics?.watchReplicaReads(replicaReads, readReplica.poolStats);
  /** Starts the periodic writers of batched bookkeeping. */
  const startBatches = () => {
    events.start();
    usage.start();
    legacyUsage.start();
    scheduler.start();
  };
  /** Stops them, writing what is pending (a clean shutdown loses nothing). */
  const stopBatches = async () => {
    await scheduler.stop();
    await Promise.all([usage.stop(), legacyUsage.stop()]);
    await events.stop();
  };
  // Closing the store closes the replica's pool too.
  const opened: OpenedDatabase =
    readReplica === undefined || replicaReads === undefined
      ? database
      : {
          ...database,
          close: async () => {
            replicaReads.stop();
            await Promise.all([readReplica.close(), database.close()]);
          },
        };
  return { database: opened, deps, events, backendJwt, keks: keks.keys, channel, pruner, startBatches, stopBatches };
}

/**
 * Wiring: config → database → stores → domain → servers. The one place that
 * sees every layer. Tears down in reverse order.
 */
export async function startService(config: Config, options: StartOptions = {}): Promise<RunningService> {
  const log = options.log ?? createLogger(config.logLevel);
  if (config.environment !== "development" && !isLimited(config.rateLimitFailedAuth)) {
    log.warn({ environment: config.environment }, "RATE_LIMIT_FAILED_AUTH=off: credential guessing is not slowed down on this replica");
  }
  // Before the store: a bad certificate should fail start-up at once, named.
  const tls = await loadTlsMaterial(config, log);
  // So is an unreadable secret-scanning key file.
  const leaks = leakEndpointOptions(config, log);
  // Calls are observed for metrics and, at debug, for the per-request log line.
  const metrics =
    config.metricsEnabled || log.isLevelEnabled("debug")
      ? new ServiceMetrics(log, { environment: config.environment, store: config.databaseUrl ? "postgres" : "pglite" })
      : undefined;
  // Off (the default): undefined, and nothing below wraps anything.
  const tracing = Tracing.fromConfig(config, log);
  const { database, deps, backendJwt, channel, pruner, startBatches, stopBatches } = await openDeps(config, log, options.clock, metrics, tracing, options.revocationNoticeDelayMs).catch(async (error: unknown) => {
    await tracing?.shutdown();
    throw error;
  });
  startBatches();
  try {
    await backendJwt.start();
  } catch (error) {
    // A signing key that cannot be unwrapped stops start-up; leave the store closed behind us.
    backendJwt.stop();
    await stopBatches();
    await database.close();
    await tracing?.shutdown();
    throw error;
  }
  await channel.start();
  pruner.start();

  if (options.bootstrapOnFirstStart !== false) await bootstrapOnFirstStart(config, deps, log, options.showBootstrapToken);

  const handler = new TokenServiceHandler(deps, {
    maxStreamsPerCaller: config.watchMaxStreamsPerCaller,
    minHeartbeatMs: config.watchMinHeartbeatMs,
    // Re-checked twice per staleness bound: a revocation missed while the
    // channel was down ends the stream soon after the cached answer ages out.
    streamRecheckMs: Math.max(50, Math.floor(config.cacheStalenessMs / 2)),
  });
  const health = createHealthService({
    services: [TokenService.typeName],
    check: () => deps.store.ping().then(() => true, () => false),
  });
  const services = [
    { service: TokenService, impl: handler },
    health,
    ...createReflectionServices([file_tokens_v1_token_service, file_health_v1_health, file_grpc_reflection_v1_reflection, file_grpc_reflection_v1alpha_reflection]),
  ];
  const onInternalError = (err: unknown, method: string) => log.error({ err, method }, "unexpected failure in transport");
  // Envoy's ext_authz is a gRPC API: mounted on the gRPC port only, and only when protected (or in development).
  const extAuthz = extAuthzOptions(config, log);
  const grpcServices = extAuthz ? [...services, { service: Authorization, impl: new ExtAuthzHandler(deps, extAuthz) }] : services;

  const grpc = await startGrpcServer({
    host: config.listenHost,
    port: config.grpcPort,
    services: grpcServices,
    maxMessageBytes: config.maxMessageBytes,
    limits: {
      maxResponseBytes: config.maxResponseBytes,
      requestBodyTimeoutMs: config.requestBodyTimeoutMs,
      connectionIdleMs: config.connectionIdleTimeoutMs,
      connectionMaxAgeMs: config.grpcMaxConnectionAgeMs,
      connectionMaxAgeGraceMs: config.grpcMaxConnectionAgeGraceMs,
      keepaliveTimeMs: config.grpcKeepaliveTimeMs,
      keepaliveTimeoutMs: config.grpcKeepaliveTimeoutMs,
    },
    onInternalError,
    credentials: grpcServerCredentials(tls),
    ...(metrics ? { observer: metrics } : {}),
    ...(tracing ? { tracing: tracing.grpc } : {}),
  });
  // Under WORKERS, /metrics answers for the whole cluster (observability/cluster-metrics.ts).
  const metricsSource = metrics && cluster.isWorker ? clusterMetricsSource(metrics.registry) : metrics;
  const metricsEndpoint = config.metricsEnabled && metricsSource ? metricsRoute(metricsSource, (err) => log.error({ err }, "metrics collection failed")) : undefined;
  const http = await startHttpServer({
    host: config.listenHost,
    port: config.httpPort,
    routes: routeServices(services),
    maxMessageBytes: config.maxMessageBytes,
    maxResponseBytes: config.maxResponseBytes,
    requestBodyTimeoutMs: config.requestBodyTimeoutMs,
    connectionIdleMs: config.connectionIdleTimeoutMs,
    maxTimeoutMs: config.rpcMaxTimeoutMs,
    onInternalError,
    tls: httpTlsOptions(tls),
    ...(metrics ? { observer: metrics } : {}),
    ...(tracing ? { interceptors: [tracing.connectInterceptor()] } : {}),
    extraHandler: withRoute(metricsEndpoint, traced(tracing, httpRoutes({
      jwks: () => backendJwt.jwks(),
      tokens: deps,
      introspectionIssuer: config.backendJwtIssuer ?? config.tokenIssuer,
      oauthMetadata: oauthMetadataOptions(config, log, httpTlsOptions(tls) !== undefined),
      signIntrospection: (payload) => backendJwt.signPayload(payload, "token-introspection+jwt"),
      forwardAuth: forwardAuthOptions(config, log),
      leaks,
      readiness: { store: () => deps.store.ping(), revocationChannel: () => channel.up },
    }))),
  }).catch(async (error: unknown) => {
    await grpc.close(0);
    throw error;
  });

  log.info(
    {
      environment: config.environment,
      store: database.kind,
      database: config.databaseUrl ? redactUrl(config.databaseUrl) : config.dataDir,
      grpc: `${config.listenHost}:${grpc.port}`,
      http: `${config.listenHost}:${http.port}`,
    },
    "token service listening",
  );

  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      health.setShuttingDown();
      await Promise.all([grpc.close(config.shutdownGraceMs), http.close(config.shutdownGraceMs)]);
      backendJwt.stop();
      pruner.stop();
      await channel.stop();
      await stopBatches();
      // After the servers: every call's span has ended; this exports them.
      await tracing?.shutdown();
      await database.close();
      log.info({}, "token service stopped");
    })());

  return { grpcPort: grpc.port, httpPort: http.port, deps, database, channel, metrics, tracing, stop };
}

/** The plain HTTP routes, traced when tracing is on. */
function traced(tracing: Tracing | undefined, routes: (req: HttpRequest, res: HttpResponse) => boolean): (req: HttpRequest, res: HttpResponse) => boolean {
  return tracing ? tracing.httpRoutes(routes) : routes;
}

/**
 * First start of a development server on an empty store: hand the operator
 * an admin token once. Never in staging or production.
 */
export async function bootstrapOnFirstStart(config: Config, deps: TokenDeps, log: PinoLogger, show: (token: string, subject: string) => void = printBootstrapToken): Promise<void> {
  if (config.environment !== "development" || (await deps.store.count()) !== 0) return;
  const { token, record } = await bootstrapAdmin(deps, config.bootstrapAdminSubject, "first-start");
  log.info({ token_id: record.id, token_hint: record.displayHint, subject: record.subject }, "first start: bootstrap admin token issued");
  show(token, record.subject);
  await deps.events.flush();
}

function printBootstrapToken(token: string, subject: string): void {
  process.stdout.write(
    [
      "",
      "================ FIRST START: BOOTSTRAP ADMIN TOKEN ================",
      `  subject: ${subject}`,
      `  token:   ${token}`,
      "  Shown once, now. Store it safely; it cannot be shown again.",
      "====================================================================",
      "",
    ].join("\n"),
  );
}

async function main(): Promise<void> {
  let config: Config;
  try {
    config = loadConfig(process.env);
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`${error.message}\n`);
      process.exit(78); // EX_CONFIG
    }
    throw error;
  }
  const log = createLogger(config.logLevel);
  if (config.workers > 1 && cluster.isPrimary) {
    await runPrimary(config, log, async () => {
      // Migrate and bootstrap once, before any worker starts.
      const { database, deps } = await openDeps(config, log);
      try {
        await bootstrapOnFirstStart(config, deps, log);
      } finally {
        await database.close();
      }
    });
    return;
  }
  const service = await startService(config, { log, bootstrapOnFirstStart: !cluster.isWorker });
  let signals = 0;
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    process.on(signal, () => {
      if (++signals > 1) process.exit(130); // a second signal: stop waiting
      log.info({ signal }, "shutting down");
      service.stop().then(
        () => process.exit(0),
        (err: unknown) => {
          log.error({ err }, "shutdown failed");
          process.exit(1);
        },
      );
    });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    process.stderr.write(`token service failed to start: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(err instanceof ConfigError ? 78 : 1); // EX_CONFIG: a key file or certificate the config names is bad
  });
}
