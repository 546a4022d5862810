import { parseEnvironment, type Environment } from "./domain/environment.js";
import { LEGACY_ALGORITHMS, type LegacyAlgorithm } from "./domain/legacy-jwt.js";
import type { BucketSpec } from "./domain/rate-limit.js";
import { validateNetworks } from "./domain/usage-binding.js";

/**
 * Configuration: the only reader of `process.env`. Every key is declared once
 * in `CONFIG_KEYS` with its default and its documentation (the README table
 * mirrors it, and a test checks that it does). `loadConfig` validates them
 * all at start-up and fails naming every bad key, so a typo never reaches
 * production as a silent default.
 */

/** The service's configuration, typed and frozen. */
export interface Config {
  readonly environment: Environment;
  readonly databaseUrl: string | undefined;
  readonly dataDir: string;
  readonly databasePoolMax: number;
  readonly databaseConnectTimeoutMs: number;
  readonly databaseStatementTimeoutMs: number;
  readonly listenHost: string;
  readonly grpcPort: number;
  readonly httpPort: number;
  readonly maxMessageBytes: number;
  readonly rpcMaxTimeoutMs: number;
  readonly tokenIssuer: string;
  readonly tokenAudience: readonly string[];
  readonly tokenDefaultTtlMs: number;
  readonly tokenMaxTtlMs: number;
  readonly tokenRequireExpiry: boolean;
  readonly maxActiveTokensPerSubject: number;
  readonly lastUsedFlushMs: number;
  readonly rotationMaxGraceMs: number;
  readonly rotationDefaultGraceMs: number;
  readonly revocationSchedulerMs: number;
  readonly securityEventWindowMs: number;
  readonly securityEventRowsPerWindow: number;
  readonly securityEventBufferRows: number;
  readonly securityEventRetentionMs: number;
  readonly bootstrapAdminSubject: string;
  readonly logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
  readonly metricsEnabled: boolean;
  readonly shutdownGraceMs: number;
  readonly tlsCertFile: string | undefined;
  readonly tlsKeyFile: string | undefined;
  readonly tlsClientCaFile: string | undefined;
  readonly tlsPorts: "both" | "grpc" | "http";
  readonly legacyHmacSecret: string | undefined;
  readonly legacyHmacSecretPrevious: string | undefined;
  readonly legacyHmacAlgorithm: LegacyAlgorithm;
  readonly legacyPublicKeyFile: string | undefined;
  readonly legacyPublicKeyAlgorithm: LegacyAlgorithm;
  readonly legacyJwksFile: string | undefined;
  readonly legacyIssuer: string | undefined;
  readonly legacyAudience: readonly string[];
  readonly requireJti: boolean;
  readonly legacyReleaseDate: Date;
  readonly legacySunsetDate: Date | undefined;
  readonly legacyMigrationUrl: string;
  readonly legacyMaxLength: number;
  readonly legacyClockToleranceMs: number;
  readonly legacyRequireEnv: boolean;
  readonly backendJwtAlgorithm: "ES256" | "EdDSA";
  readonly backendJwtTtlMs: number;
  readonly backendJwtKeyRotationMs: number;
  readonly backendJwtKeyRefreshMs: number;
  readonly backendJwtIssuer: string | undefined;
  readonly backendJwtAudience: readonly string[];
  readonly cacheMaxEntries: number;
  readonly cacheMaxMegabytes: number;
  readonly cacheStalenessMs: number;
  readonly cacheNegativeTtlMs: number;
  readonly revocationHeartbeatMs: number;
  readonly revocationHeartbeatTimeoutMs: number;
  readonly forwardAuthEnabled: boolean;
  readonly forwardAuthSecret: string | undefined;
  readonly forwardAuthBackendJwt: boolean;
  readonly workers: number;
  readonly tokenMetadataAllowedKeys: readonly string[];
  readonly keyEncryptionKey: string | undefined;
  readonly keyEncryptionKeyFile: string | undefined;
  readonly keyEncryptionKeyPrevious: string | undefined;
  readonly keyEncryptionKeyPreviousFile: string | undefined;
  // Rate limits and resource caps (issue 8, items 3 and 7).
  readonly rateLimitIntrospect: BucketSpec;
  readonly rateLimitIssue: BucketSpec;
  readonly rateLimitRevoke: BucketSpec;
  readonly rateLimitList: BucketSpec;
  readonly rateLimitFailedAuth: BucketSpec;
  readonly rateLimitMaxKeys: number;
  readonly lookupsInFlightPerCaller: number;
  readonly lookupsQueuedPerCaller: number;
  readonly databaseWriteConcurrency: number;
  readonly databaseWriteQueue: number;
  readonly cacheNegativeMaxEntries: number;
  readonly watchMaxStreamsPerCaller: number;
  readonly watchMinHeartbeatMs: number;
  // Transport limits (issue 8)
  readonly maxResponseBytes: number;
  readonly requestBodyTimeoutMs: number;
  readonly connectionIdleTimeoutMs: number;
  readonly grpcMaxConnectionAgeMs: number;
  readonly grpcMaxConnectionAgeGraceMs: number;
  readonly grpcKeepaliveTimeMs: number;
  readonly grpcKeepaliveTimeoutMs: number;
  readonly publicBaseUrl: string | undefined;
  // Envoy ext_authz over gRPC (issue 12).
  readonly extAuthzEnabled: boolean;
  readonly extAuthzSecret: string | undefined;
  readonly extAuthzHeader: string;
  readonly extAuthzBackendJwt: boolean;
  readonly extAuthzRemoveHeader: boolean;
  // OpenTelemetry tracing (issue 12, item 4): the standard OTEL_* variables, read here and handed to the SDK explicitly.
  readonly otelTracesExporter: "none" | "otlp";
  readonly otelSdkDisabled: boolean;
  readonly otelServiceName: string;
  readonly otelResourceAttributes: Readonly<Record<string, string>>;
  readonly otelExporterOtlpEndpoint: string;
  readonly otelExporterOtlpTracesEndpoint: string | undefined;
  readonly otelExporterOtlpProtocol: "http/protobuf" | "http/json";
  readonly otelExporterOtlpHeaders: Readonly<Record<string, string>> | undefined;
  readonly otelExporterOtlpTimeoutMs: number;
  readonly otelTracesSampler: TraceSampler;
  readonly otelTracesSamplerArg: number | undefined;
  readonly otelBspScheduleDelayMs: number;
  readonly otelBspMaxQueueSize: number;
  readonly otelBspMaxExportBatchSize: number;
  readonly otelBspExportTimeoutMs: number;
  // Revocation log and transports (issue 10).
  readonly revocationTransport: "notify" | "poll";
  readonly revocationPollIntervalMs: number;
  readonly revocationLogRetentionMs: number;
  // Read replicas for cache misses (issue 10, item 6).
  readonly databaseReadUrl: string | undefined;
  readonly databaseReadPoolMax: number;
  // Usage binding and leak revocation (issue 13).
  readonly trustedProxies: readonly string[];
  readonly githubScanningKeysFile: string | undefined;
  readonly leakReportMaxTokens: number;
  readonly leakReportMaxBytes: number;
  readonly gitlabRevocationToken: string | undefined;
}

/** The samplers `OTEL_TRACES_SAMPLER` names (OpenTelemetry SDK environment variable specification). */
export const TRACE_SAMPLERS = ["always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"] as const;
/** One of {@link TRACE_SAMPLERS}. */
export type TraceSampler = (typeof TRACE_SAMPLERS)[number];

/** Thrown by `loadConfig` with one line per bad key. */
export class ConfigError extends Error {
  override readonly name = "ConfigError";
  constructor(readonly problems: readonly string[]) {
    super(`invalid configuration:\n  ${problems.join("\n  ")}`);
  }
}

type Parser<T> = (raw: string) => T;

/**
 * A default that depends on `TOKEN_ENVIRONMENT`: safe in staging and
 * production, convenient in development.
 */
export interface EnvironmentDefault {
  readonly development: string;
  readonly staging: string;
  readonly production: string;
}

interface KeySpec<K extends keyof Config> {
  readonly field: K;
  readonly default: string | EnvironmentDefault | undefined;
  readonly doc: string;
  readonly parse: Parser<Config[K]>;
}

const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

function integer(min: number, max: number): Parser<number> {
  return (raw) => {
    if (!/^\d+$/.test(raw)) throw new Error(`must be a whole number from ${min} to ${max}`);
    const value = Number(raw);
    if (value < min || value > max) throw new Error(`must be a whole number from ${min} to ${max}`);
    return value;
  };
}

const DURATION_UNITS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses `500ms`, `30s`, `15m`, `12h`, `90d`. */
export function parseDuration(raw: string): number {
  const match = /^(\d+)(ms|s|m|h|d)$/.exec(raw.trim());
  if (!match) throw new Error("must be a duration such as 500ms, 30s, 15m, 12h or 90d");
  return Number(match[1]) * DURATION_UNITS[match[2]!]!;
}

function duration(minMs: number): Parser<number> {
  return (raw) => {
    const ms = parseDuration(raw);
    if (ms < minMs) throw new Error(`must be at least ${minMs}ms`);
    return ms;
  };
}

/** `<per second>,<burst>` (e.g. `50,100`), or `off`: a token bucket. */
function bucket(raw: string): BucketSpec {
  const value = raw.trim().toLowerCase();
  if (value === "off") return Object.freeze({ ratePerSecond: 0, burst: 0 });
  const match = /^(\d+(?:\.\d+)?)\s*,\s*(\d+)$/.exec(value);
  const rate = match ? Number(match[1]) : NaN;
  const burst = match ? Number(match[2]) : NaN;
  if (!(rate > 0 && rate <= 10_000_000) || !(burst >= 1 && burst <= 100_000_000)) throw new Error("must be `<requests per second>,<burst>` (e.g. 50,100; rate above 0, burst at least 1) or off");
  return Object.freeze({ ratePerSecond: rate, burst });
}

function boolean(raw: string): boolean {
  const value = raw.trim().toLowerCase();
  if (["true", "1", "yes", "on"].includes(value)) return true;
  if (["false", "0", "no", "off"].includes(value)) return false;
  throw new Error("must be true or false");
}

function date(raw: string): Date {
  if (!/^\d{4}-\d{2}-\d{2}(T[\d:.]+(Z|[+-]\d{2}:\d{2}))?$/.test(raw.trim())) throw new Error("must be a date such as 2027-02-20 or 2027-02-20T00:00:00Z");
  const value = new Date(raw.trim());
  if (Number.isNaN(value.getTime())) throw new Error("must be a valid date");
  return value;
}

function list(raw: string): readonly string[] {
  return Object.freeze(raw.split(",").map((s) => s.trim()).filter((s) => s !== ""));
}

function algorithm(family: "hmac" | "public"): Parser<LegacyAlgorithm> {
  const allowed = LEGACY_ALGORITHMS.filter((a) => (family === "hmac") === a.startsWith("HS"));
  return (raw) => {
    const value = raw.trim() as LegacyAlgorithm;
    if (!allowed.includes(value)) throw new Error(`must be one of ${allowed.join(", ")}`);
    return value;
  };
}

/** A key-encryption key: exactly 32 bytes in base64 or base64url (padding optional). */
function kek(raw: string): string {
  const value = raw.trim();
  if (!/^[A-Za-z0-9+/_-]{43}=?$/.test(value)) throw new Error("must be 32 random bytes in base64; make one with: openssl rand -base64 32");
  return value;
}

/**
 * An absolute http(s) URL without credentials, query or fragment (RFC 8414
 * §2: the issuer has none), its trailing slash dropped (RFC 8414 §3.1 drops
 * it before inserting the well-known path). The rest is kept as written:
 * clients compare the issuer they were given with the one they discover.
 */
function publicBaseUrl(raw: string): string {
  const value = raw.trim().replace(/\/+$/, "");
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new Error("must be an absolute URL such as https://tokens.example.com");
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") throw new Error("must be an http or https URL");
  if (url.username !== "" || url.password !== "") throw new Error("must not contain credentials");
  if (url.search !== "" || value.includes("?") || value.includes("#")) throw new Error("must have no query or fragment (RFC 8414 §2)");
  return value;
}

/**
 * A W3C Baggage-style list, `key1=value1,key2=value2`, values percent-decoded:
 * the format of `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_EXPORTER_OTLP_HEADERS`.
 */
function keyValueList(raw: string): Readonly<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const item of raw.split(",")) {
    if (item.trim() === "") continue;
    const eq = item.indexOf("=");
    const key = eq < 0 ? "" : item.slice(0, eq).trim();
    if (!/^[\x21-\x7e]+$/.test(key)) throw new Error("must be a comma-separated list of key=value");
    try {
      out[key] = decodeURIComponent(item.slice(eq + 1).trim());
    } catch {
      throw new Error("must be a comma-separated list of key=value, values percent-encoded");
    }
  }
  return Object.freeze(out);
}

function httpUrl(raw: string): string {
  const value = raw.trim();
  if (!/^https?:\/\/\S+$/.test(value)) throw new Error("must be an http(s) URL");
  return value;
}

function text(raw: string): string {
  return raw.trim();
}

function spec<K extends keyof Config>(field: K, def: string | EnvironmentDefault | undefined, doc: string, parse: Parser<Config[K]>): KeySpec<K> {
  return { field, default: def, doc, parse };
}

/** Every configuration key: environment variable name → field, default, documentation, parser. */
export const CONFIG_KEYS = {
  TOKEN_ENVIRONMENT: spec("environment", "development", "Environment this service runs in: development, staging or production (also dev, stage, prod). Decides the prefix of issued tokens (cf-, cfstg-, cfprd-) and which tokens are accepted.", (raw) => {
    const env = parseEnvironment(raw);
    if (!env) throw new Error("must be development, staging or production (or dev, stage, prod)");
    return env;
  }),
  DATABASE_URL: spec("databaseUrl", undefined, "PostgreSQL (15 or newer) connection URL, e.g. postgres://user@host:5432/tokens. Unset: embedded PGlite in DATA_DIR.", (raw) => {
    if (!/^postgres(ql)?:\/\//.test(raw)) throw new Error("must start with postgres:// or postgresql://");
    return raw;
  }),
  DATA_DIR: spec("dataDir", "./data", "Data directory of the embedded PGlite store, used when DATABASE_URL is unset. `memory://` keeps it in memory (lost on exit).", text),
  DATABASE_POOL_MAX: spec("databasePoolMax", "10", "Most PostgreSQL connections in the pool.", integer(1, 1000)),
  DATABASE_CONNECT_TIMEOUT: spec("databaseConnectTimeoutMs", "2s", "How long to wait for a PostgreSQL connection before answering UNAVAILABLE.", duration(1)),
  DATABASE_STATEMENT_TIMEOUT: spec("databaseStatementTimeoutMs", "5s", "Longest a single statement may run (PostgreSQL statement_timeout).", duration(1)),
  LISTEN_HOST: spec("listenHost", "127.0.0.1", "Address both servers listen on. Use 0.0.0.0 in a container.", text),
  GRPC_PORT: spec("grpcPort", "50051", "Port of the gRPC server (@grpc/grpc-js), the gateways' hot path. 0 picks a free port.", integer(0, 65535)),
  HTTP_PORT: spec("httpPort", "8080", "Port of the Connect server: Connect, gRPC-Web and gRPC over HTTP/1.1 and cleartext HTTP/2. 0 picks a free port.", integer(0, 65535)),
  MAX_MESSAGE_BYTES: spec("maxMessageBytes", "65536", "Largest request message accepted on either port; larger ones are refused before any work.", integer(1024, 16 * 1024 * 1024)),
  RPC_MAX_TIMEOUT: spec("rpcMaxTimeoutMs", "30s", "Longest deadline a caller may ask for on the Connect port; longer ones are cut to this.", duration(1)),
  TOKEN_ISSUER: spec("tokenIssuer", "cf-token-service", "The `iss` claim reported for opaque tokens.", text),
  TOKEN_AUDIENCE: spec("tokenAudience", "", "Comma-separated `aud` claim reported for opaque tokens; empty for none.", list),
  TOKEN_DEFAULT_TTL: spec("tokenDefaultTtlMs", "30d", "Lifetime of a token whose request sets no expiry (and of bootstrap tokens).", duration(1000)),
  TOKEN_MAX_TTL: spec("tokenMaxTtlMs", "365d", "Longest lifetime a token may be issued with.", duration(1000)),
  TOKEN_REQUIRE_EXPIRY: spec("tokenRequireExpiry", "true", "When true every token expires; when false a request without expiry gets a token that never expires.", boolean),
  MAX_ACTIVE_TOKENS_PER_SUBJECT: spec("maxActiveTokensPerSubject", "100", "Most active (unexpired, unrevoked) tokens one subject may hold; IssueToken answers RESOURCE_EXHAUSTED beyond it.", integer(1, 1_000_000)),
  LAST_USED_FLUSH_INTERVAL: spec("lastUsedFlushMs", "5s", "How often batched last-used times are written (and always on shutdown).", duration(10)),
  SECURITY_EVENT_WINDOW: spec("securityEventWindowMs", "10s", "Identical security events within this window are stored as one row with a count.", duration(10)),
  // Security event bounds under floods (issue 8, item 4).
  SECURITY_EVENT_ROWS_PER_WINDOW: spec("securityEventRowsPerWindow", "1000", "Most security event rows one replica stores per window for info and warning events (critical ones have as many again); events from further actors fold into one row per type and severity, with their count.", integer(1, 100_000)),
  SECURITY_EVENT_BUFFER_ROWS: spec("securityEventBufferRows", "10000", "Most security event rows kept in memory while the store is unavailable (a tenth reserved for critical events); beyond it events are dropped and counted in token_service_security_events_dropped_total.", integer(10, 1_000_000)),
  SECURITY_EVENT_RETENTION: spec("securityEventRetentionMs", "90d", "Security events last seen longer ago than this are deleted, hourly and in batches, by every replica (concurrent pruners skip each other's rows). 0s keeps them forever.", duration(0)),
  BOOTSTRAP_ADMIN_SUBJECT: spec("bootstrapAdminSubject", "admin@localhost", "Subject of the admin token printed on the very first start of a development server with an empty store.", text),
  LOG_LEVEL: spec("logLevel", "info", "Log level: fatal, error, warn, info, debug, trace or silent.", (raw) => {
    const level = raw.trim().toLowerCase();
    if (!(LOG_LEVELS as readonly string[]).includes(level)) throw new Error(`must be one of ${LOG_LEVELS.join(", ")}`);
    return level as Config["logLevel"];
  }),
  METRICS_ENABLED: spec("metricsEnabled", "true", "Serve Prometheus metrics at GET /metrics on the HTTP port. false: no /metrics, and calls are not timed (unless LOG_LEVEL is debug or trace, for the per-request log line).", boolean),
  SHUTDOWN_GRACE: spec("shutdownGraceMs", "10s", "How long in-flight calls may finish after SIGTERM before connections are closed.", duration(0)),
  TLS_CERT_FILE: spec("tlsCertFile", undefined, "PEM certificate chain (server certificate first) for TLS. Set together with TLS_KEY_FILE; unset: cleartext.", text),
  TLS_KEY_FILE: spec("tlsKeyFile", undefined, "PEM private key of the certificate in TLS_CERT_FILE (unencrypted).", text),
  TLS_CLIENT_CA_FILE: spec("tlsClientCaFile", undefined, "PEM bundle of the CAs that sign client certificates. Set: mutual TLS, every client must present a certificate they signed (callers still need their bearer token).", text),
  TLS_PORTS: spec("tlsPorts", "both", "Which ports terminate TLS when TLS_CERT_FILE is set: both, grpc or http (the other stays cleartext, e.g. for probes or a sidecar).", (raw) => {
    const value = raw.trim().toLowerCase();
    if (value !== "both" && value !== "grpc" && value !== "http") throw new Error("must be both, grpc or http");
    return value;
  }),
  LEGACY_JWT_HMAC_SECRET: spec("legacyHmacSecret", undefined, "Current HMAC secret of the old system's JWTs. Unset (and no public key): legacy JWTs are refused as MALFORMED.", text),
  LEGACY_JWT_HMAC_SECRET_PREVIOUS: spec("legacyHmacSecretPrevious", undefined, "The previous HMAC secret, still accepted during a rotation.", text),
  LEGACY_JWT_HMAC_ALGORITHM: spec("legacyHmacAlgorithm", "HS256", "The one algorithm the HMAC secrets are used with: HS256, HS384 or HS512.", algorithm("hmac")),
  LEGACY_JWT_PUBLIC_KEY_FILE: spec("legacyPublicKeyFile", undefined, "PEM file (SPKI public key) verifying legacy JWTs signed with LEGACY_JWT_PUBLIC_KEY_ALGORITHM.", text),
  LEGACY_JWT_PUBLIC_KEY_ALGORITHM: spec("legacyPublicKeyAlgorithm", "RS256", "The one algorithm the PEM public key is used with: RS256, RS384, RS512, PS256, ES256, ES384 or EdDSA.", algorithm("public")),
  LEGACY_JWT_JWKS_FILE: spec("legacyJwksFile", undefined, "JWKS file of public keys verifying legacy JWTs; every key must name its `alg` (and should have a `kid`).", text),
  LEGACY_JWT_ISSUER: spec("legacyIssuer", undefined, "Required `iss` of legacy JWTs; unset: not checked.", text),
  LEGACY_JWT_AUDIENCE: spec("legacyAudience", "", "Comma-separated accepted `aud` values of legacy JWTs; empty: not checked.", list),
  REQUIRE_JTI: spec("requireJti", "false", "When true, a legacy JWT without `jti` is refused; when false it is accepted with a warning and a counted security event (it cannot be revoked on its own).", boolean),
  LEGACY_JWT_RELEASE_DATE: spec("legacyReleaseDate", "2026-11-22", "When API tokens were released: the start of the legacy JWT deprecation window (the `Deprecation` header).", date),
  LEGACY_JWT_SUNSET_DATE: spec("legacySunsetDate", undefined, "When legacy JWTs stop working (the `Sunset` header). Default: 90 days after LEGACY_JWT_RELEASE_DATE.", date),
  LEGACY_JWT_MIGRATION_URL: spec("legacyMigrationUrl", "https://developer.example.com/api-tokens/migrating-from-jwts", "Migration documentation, sent in the `Link` header and the sunset message. Point it at your own docs.", (raw) => {
    if (!/^https?:\/\/\S+$/.test(raw.trim())) throw new Error("must be an http(s) URL");
    return raw.trim();
  }),
  LEGACY_JWT_MAX_LENGTH: spec("legacyMaxLength", "4096", "Longest legacy JWT looked at, in characters (at most 4096, the limit on any presented token); longer ones are refused before any work.", integer(256, 4096)),
  LEGACY_JWT_CLOCK_TOLERANCE: spec("legacyClockToleranceMs", "30s", "Clock skew allowed when checking a legacy JWT's exp, nbf and iat (an iat further in the future is refused).", duration(0)),
  // Legacy JWT hardening (issue 9).
  LEGACY_JWT_REQUIRE_ENV: spec("legacyRequireEnv", { development: "false", staging: "true", production: "true" }, "When true, a legacy JWT without an `env` claim is inactive (INVALID) with a `legacy_jwt_without_env` security event; when false it is taken to belong to this service's environment. Default: true in staging and production, false in development.", boolean),
  BACKEND_JWT_ALGORITHM: spec("backendJwtAlgorithm", "ES256", "Signature algorithm of backend JWTs: ES256 or EdDSA (Ed25519).", (raw) => {
    if (raw !== "ES256" && raw !== "EdDSA") throw new Error("must be ES256 or EdDSA");
    return raw;
  }),
  BACKEND_JWT_TTL: spec("backendJwtTtlMs", "5m", "Lifetime of a backend JWT (never beyond the token's own expiry).", duration(1000)),
  BACKEND_JWT_KEY_ROTATION: spec("backendJwtKeyRotationMs", "24h", "How often a new backend JWT signing key is made; old public keys stay in the JWKS until their JWTs have expired.", duration(60_000)),
  BACKEND_JWT_KEY_REFRESH: spec("backendJwtKeyRefreshMs", "60s", "How often each replica re-reads the shared signing keys. A new key is published for two of these intervals before it signs.", duration(1000)),
  BACKEND_JWT_ISSUER: spec("backendJwtIssuer", undefined, "`iss` of backend JWTs. Default: TOKEN_ISSUER.", text),
  BACKEND_JWT_AUDIENCE: spec("backendJwtAudience", "", "Comma-separated `aud` of backend JWTs. Default: TOKEN_AUDIENCE.", list),
  CACHE_MAX_ENTRIES: spec("cacheMaxEntries", "100000", "Most tokens held in each replica's introspection cache (least recently used go first).", integer(1, 10_000_000)),
  CACHE_MAX_MEGABYTES: spec("cacheMaxMegabytes", "256", "Most memory (estimated) the introspection cache may hold, in MiB.", integer(1, 65_536)),
  CACHE_STALENESS: spec("cacheStalenessMs", "2s", "Longest a cached answer is served without the revocation channel confirming it; with the channel cut, revocations still take effect within this bound.", duration(1)),
  CACHE_NEGATIVE_TTL: spec("cacheNegativeTtlMs", "2s", "How long an unknown token is remembered, so garbage does not reach the store on every call.", duration(0)),
  REVOCATION_HEARTBEAT: spec("revocationHeartbeatMs", "500ms", "How often the revocation channel proves itself with a heartbeat through the store.", duration(10)),
  WORKERS: spec("workers", "1", "Worker processes (node:cluster) sharing both ports, each with its own cache and revocation listener. More than 1 needs DATABASE_URL (PGlite is one process's).", integer(1, 64)),
  REVOCATION_HEARTBEAT_TIMEOUT: spec("revocationHeartbeatTimeoutMs", "1500ms", "No heartbeat back within this: the channel is declared lost and reopened.", duration(10)),
  FORWARD_AUTH_ENABLED: spec("forwardAuthEnabled", "true", "Serve /auth on the HTTP port, forward authentication for reverse proxies (nginx auth_request, Traefik ForwardAuth, Caddy forward_auth, Envoy ext_authz). It needs no caller token: make it reachable only by the proxy, or set FORWARD_AUTH_SECRET.", boolean),
  FORWARD_AUTH_SECRET: spec("forwardAuthSecret", undefined, "When set, /auth answers only requests carrying `X-Forward-Auth-Secret` with this value (16 to 256 printable ASCII characters, no spaces); others get 403. Unset: anyone who can reach /auth may use it.", (raw) => {
    if (!/^[\x21-\x7e]{16,256}$/.test(raw)) throw new Error("must be 16 to 256 printable ASCII characters without spaces");
    return raw;
  }),
  FORWARD_AUTH_BACKEND_JWT: spec("forwardAuthBackendJwt", "false", "When true, /auth adds `X-Auth-Backend-Jwt`, a backend JWT with the token's claims, for the proxy to pass to the upstream.", boolean),
  // Issuing and revocation (issuer links, cascade, metadata allow-list).
  TOKEN_METADATA_ALLOWED_KEYS: spec("tokenMetadataAllowedKeys", "", "Comma-separated metadata keys non-admin callers may set when issuing; any other key is PERMISSION_DENIED (admins may set any). Empty: non-admins set no metadata. Gateways may read metadata as claims, so allow only keys none of them trusts.", (raw) => {
    const keys = list(raw);
    for (const key of keys) if (!/^[A-Za-z0-9_.-]{1,64}$/.test(key)) throw new Error("each key must be 1 to 64 letters, digits or ._-");
    return keys;
  }),
  // Rotation with grace and bulk revocation (issue 13).
  ROTATION_MAX_GRACE: spec("rotationMaxGraceMs", "7d", "Longest grace period RotateToken may ask for: the old token is revoked at its end (0s: at once).", duration(0)),
  ROTATION_DEFAULT_GRACE: spec("rotationDefaultGraceMs", "24h", "Grace period of a RotateToken that asks for none. At most ROTATION_MAX_GRACE.", duration(0)),
  REVOCATION_SCHEDULER_INTERVAL: spec("revocationSchedulerMs", "1s", "How often each replica carries out due scheduled revocations (ends of rotation grace periods) and resumes bulk revocations whose replica stopped: the most a scheduled revocation is late.", duration(50)),
  // Keys at rest: the key-encryption key (KEK) that wraps the stored backend JWT signing keys (src/keys/key-wrap.ts).
  KEY_ENCRYPTION_KEY: spec("keyEncryptionKey", undefined, "Key-encryption key: 32 random bytes in base64 (`openssl rand -base64 32`). Encrypts the stored private signing keys (AES-256-GCM); keep it outside the database and its backups. Required in staging and production (this or KEY_ENCRYPTION_KEY_FILE); development without one keeps a generated one in DATA_DIR/key-encryption-key.", kek),
  KEY_ENCRYPTION_KEY_FILE: spec("keyEncryptionKeyFile", undefined, "File holding the key-encryption key (base64, as KEY_ENCRYPTION_KEY), e.g. a mounted secret; instead of KEY_ENCRYPTION_KEY.", text),
  KEY_ENCRYPTION_KEY_PREVIOUS: spec("keyEncryptionKeyPrevious", undefined, "The previous key-encryption key, still accepted for decrypting during a rotation (`tokenctl keys rewrap` moves every key to the current one).", kek),
  KEY_ENCRYPTION_KEY_PREVIOUS_FILE: spec("keyEncryptionKeyPreviousFile", undefined, "File holding the previous key-encryption key; instead of KEY_ENCRYPTION_KEY_PREVIOUS.", text),
  // ---- Rate limits and resource caps (issue 8, items 3 and 7). All per replica (per process).
  RATE_LIMIT_INTROSPECT: spec("rateLimitIntrospect", "50000,100000", "Per caller (token id), per replica: IntrospectToken calls and POST /oauth2/introspect, as `<per second>,<burst>`, or off. Gateways introspect tens of thousands of times a second with one credential; unknown tokens they relay are bounded by LOOKUPS_IN_FLIGHT_PER_CALLER instead.", bucket),
  RATE_LIMIT_ISSUE: spec("rateLimitIssue", "50,100", "Per caller, per replica: IssueToken calls, as `<per second>,<burst>`, or off.", bucket),
  RATE_LIMIT_REVOKE: spec("rateLimitRevoke", "50,100", "Per caller, per replica: RevokeToken calls and POST /oauth2/revoke, as `<per second>,<burst>`, or off.", bucket),
  RATE_LIMIT_LIST: spec("rateLimitList", "20,50", "Per caller, per replica: ListTokens, ListSecurityEvents, ListLegacyJwtUsage, GetJwks and opening WatchRevocations, as `<per second>,<burst>`, or off.", bucket),
  RATE_LIMIT_FAILED_AUTH: spec("rateLimitFailedAuth", "2,10", "Per peer address (IPv6: per /64), per replica: failed caller authentications (and wrong /auth proxy secrets), as `<per second>,<burst>`, or off. Past it, calls from that address are refused with RESOURCE_EXHAUSTED / 429 before any work, unless their credential is already cached as active.", bucket),
  RATE_LIMIT_MAX_KEYS: spec("rateLimitMaxKeys", "50000", "Most callers (per method class) and addresses tracked by the rate limits; idle ones are dropped, and beyond this newcomers share one bucket. Also the most tokens with a rate limit of their own tracked at once (beyond it, the longest-tracked one starts afresh).", integer(100, 10_000_000)),
  LOOKUPS_IN_FLIGHT_PER_CALLER: spec("lookupsInFlightPerCaller", "64", "Store lookups (cache misses) one caller, or one address for credentials and /auth, may have in flight; identical misses share one.", integer(1, 100_000)),
  LOOKUPS_QUEUED_PER_CALLER: spec("lookupsQueuedPerCaller", "1024", "More lookups that may wait for one caller; beyond, RESOURCE_EXHAUSTED (429 on HTTP) with retry-after 1s.", integer(0, 1_000_000)),
  DATABASE_WRITE_CONCURRENCY: spec("databaseWriteConcurrency", "0", "Store operations other than token lookups (issue, revoke, list, last-used writes) running at once, so they never hold the whole pool; the rest wait. 0: half of DATABASE_POOL_MAX, at least 1. Must be below DATABASE_POOL_MAX.", integer(0, 1000)),
  DATABASE_WRITE_QUEUE: spec("databaseWriteQueue", "1000", "More such operations that may wait; beyond, RESOURCE_EXHAUSTED with retry-after 1s.", integer(0, 1_000_000)),
  CACHE_NEGATIVE_MAX_ENTRIES: spec("cacheNegativeMaxEntries", "20000", "Most unknown tokens remembered, in a segment of their own: a flood of unknown tokens evicts only other unknown tokens, never a known one.", integer(1, 10_000_000)),
  WATCH_MAX_STREAMS_PER_CALLER: spec("watchMaxStreamsPerCaller", "32", "Most WatchRevocations streams one caller may hold open on a replica; beyond, RESOURCE_EXHAUSTED.", integer(1, 100_000)),
  WATCH_MIN_HEARTBEAT: spec("watchMinHeartbeatMs", "500ms", "Shortest WatchRevocations heartbeat interval served (100ms to 60s); a shorter ask within the documented 100ms-60s range is raised to it (sent back in `x-heartbeat-interval-ms`).", (raw) => {
    const ms = parseDuration(raw);
    if (ms < 100 || ms > 60_000) throw new Error("must be from 100ms to 60s");
    return ms;
  }),
  // Transport limits (issue 8): what a client can hold or make the service send. See README "Transport limits".
  MAX_RESPONSE_BYTES: spec("maxResponseBytes", "33554432", "Largest response message on either port (32 MiB: a full 500-row page of rows each as large as the largest request). A larger answer fails with RESOURCE_EXHAUSTED. At least MAX_MESSAGE_BYTES.", integer(1024, 1024 * 1024 * 1024)),
  REQUEST_BODY_TIMEOUT: spec("requestBodyTimeoutMs", "10s", "How long the body of a request may take to arrive completely, on both ports (never longer than the call's own deadline); past it the call is answered DEADLINE_EXCEEDED. Also Node's HTTP/1.1 header timeout on the HTTP port. Streaming requests (reflection) are exempt.", duration(100)),
  CONNECTION_IDLE_TIMEOUT: spec("connectionIdleTimeoutMs", "5m", "A connection without calls for this long is closed (GOAWAY) on both ports: grpc.max_connection_idle_ms on the gRPC port; HTTP/2 session idle and HTTP/1.1 keep-alive on the HTTP port. Keep it above a proxy's upstream keep-alive.", duration(100)),
  GRPC_MAX_CONNECTION_AGE: spec("grpcMaxConnectionAgeMs", "30m", "A gRPC-port connection this old is sent GOAWAY (grpc.max_connection_age_ms), so clients reconnect and spread over replicas.", duration(1000)),
  GRPC_MAX_CONNECTION_AGE_GRACE: spec("grpcMaxConnectionAgeGraceMs", "1m", "How long calls may still run on a connection past GRPC_MAX_CONNECTION_AGE before it is cut (long streams such as WatchRevocations then reconnect).", duration(0)),
  GRPC_KEEPALIVE_TIME: spec("grpcKeepaliveTimeMs", "2m", "How often the gRPC port pings each connection (HTTP/2 PING) to find peers that vanished without closing it.", duration(1000)),
  GRPC_KEEPALIVE_TIMEOUT: spec("grpcKeepaliveTimeoutMs", "20s", "A ping unanswered for this long drops the connection.", duration(100)),
  // OAuth discovery: RFC 8414 metadata (src/server/http/metadata.ts).
  PUBLIC_BASE_URL: spec("publicBaseUrl", undefined, "The service's HTTP port as clients reach it (e.g. https://tokens.example.com), without query or fragment; a trailing slash is dropped. It is the OAuth issuer identifier: /.well-known/oauth-authorization-server (RFC 8414) names it as `issuer`, builds its endpoint URLs from it, and RFC 9701 signed introspection answers carry it as `iss`. Must be https in production. Unset: development serves the metadata for the listen address (http(s)://LISTEN_HOST:port, 127.0.0.1 for 0.0.0.0); staging and production do not serve it (404). Never taken from the request's Host header.", publicBaseUrl),
  // Envoy ext_authz over gRPC (issue 12): envoy.service.auth.v3.Authorization/Check on the gRPC port (src/rpc/ext-authz.ts).
  EXT_AUTHZ_ENABLED: spec("extAuthzEnabled", "true", "Serve Envoy's external authorization API (`envoy.service.auth.v3.Authorization/Check`) on the gRPC port, for Envoy, Istio and Envoy Gateway. It needs no caller token, so Envoy must prove itself: in staging and production it is served only with EXT_AUTHZ_SECRET or mutual TLS on the gRPC port (unset: not served, with an error at start-up; `true` explicitly: start-up fails). Development serves it open with a warning.", boolean),
  EXT_AUTHZ_SECRET: spec("extAuthzSecret", undefined, "When set, Check answers only calls carrying the gRPC metadata `x-ext-authz-secret` with this value (Envoy's `grpc_service.initial_metadata`; 16 to 256 printable ASCII characters, no spaces); others are denied with 403.", (raw) => {
    if (!/^[\x21-\x7e]{16,256}$/.test(raw)) throw new Error("must be 16 to 256 printable ASCII characters without spaces");
    return raw;
  }),
  EXT_AUTHZ_HEADER: spec("extAuthzHeader", "authorization", "The request header Check reads the `Bearer` credential from (lower-case, as Envoy sends header names).", (raw) => {
    const name = raw.trim().toLowerCase();
    if (!/^[a-z0-9!#$%&'*+.^_`|~-]{1,64}$/.test(name)) throw new Error("must be an HTTP header name (RFC 9110 §5.1) of at most 64 characters");
    return name;
  }),
  EXT_AUTHZ_BACKEND_JWT: spec("extAuthzBackendJwt", "false", "When true, an allowed request also gets `X-Auth-Backend-Jwt`, a backend JWT with the token's claims (API tokens only).", boolean),
  EXT_AUTHZ_REMOVE_HEADER: spec("extAuthzRemoveHeader", "false", "When true, Check tells Envoy to remove the credential header (EXT_AUTHZ_HEADER) from an allowed request, so the upstream never sees the bearer token.", boolean),
  // OpenTelemetry tracing (issue 12, item 4): the standard OTEL_* variables (OpenTelemetry SDK environment
  // variable specification), read here like every other key and handed to the SDK explicitly. Off by default.
  OTEL_TRACES_EXPORTER: spec("otelTracesExporter", "none", "Tracing: `otlp` sends a span per call to an OpenTelemetry collector (OTLP over HTTP); `none` (the default, unlike the OpenTelemetry SDKs' `otlp`) traces nothing and costs nothing.", (raw) => {
    const value = raw.trim().toLowerCase();
    if (value !== "none" && value !== "otlp") throw new Error("must be otlp or none (console, zipkin and the rest are not offered)");
    return value;
  }),
  OTEL_SDK_DISABLED: spec("otelSdkDisabled", "false", "true turns tracing off whatever OTEL_TRACES_EXPORTER says.", boolean),
  OTEL_SERVICE_NAME: spec("otelServiceName", "token-service", "`service.name` of the spans.", text),
  OTEL_RESOURCE_ATTRIBUTES: spec("otelResourceAttributes", "", "More resource attributes, `key=value,key=value` (values percent-encoded), e.g. `service.namespace=auth,k8s.pod.name=…`. `deployment.environment.name` is TOKEN_ENVIRONMENT unless set here.", keyValueList),
  OTEL_EXPORTER_OTLP_ENDPOINT: spec("otelExporterOtlpEndpoint", "http://localhost:4318", "Base URL of the OTLP/HTTP collector; spans go to its `/v1/traces`.", httpUrl),
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: spec("otelExporterOtlpTracesEndpoint", undefined, "Full URL spans are posted to, used as it is (instead of OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces).", httpUrl),
  OTEL_EXPORTER_OTLP_PROTOCOL: spec("otelExporterOtlpProtocol", "http/protobuf", "OTLP encoding: http/protobuf or http/json (OTLP over gRPC is not offered).", (raw) => {
    const value = raw.trim().toLowerCase();
    if (value !== "http/protobuf" && value !== "http/json") throw new Error("must be http/protobuf or http/json");
    return value;
  }),
  OTEL_EXPORTER_OTLP_HEADERS: spec("otelExporterOtlpHeaders", undefined, "Headers sent with every export, `key=value,key=value` (values percent-encoded), e.g. a collector's API key. Secret: never echoed.", keyValueList),
  OTEL_EXPORTER_OTLP_TIMEOUT: spec("otelExporterOtlpTimeoutMs", "10000", "Longest one export request may take, in milliseconds.", integer(1, 600_000)),
  OTEL_TRACES_SAMPLER: spec("otelTracesSampler", "parentbased_always_on", `Which calls are traced: ${TRACE_SAMPLERS.join(", ")}. The parentbased_ ones follow the caller's sampled flag in \`traceparent\`.`, (raw) => {
    const value = raw.trim().toLowerCase();
    if (!(TRACE_SAMPLERS as readonly string[]).includes(value)) throw new Error(`must be one of ${TRACE_SAMPLERS.join(", ")}`);
    return value as TraceSampler;
  }),
  OTEL_TRACES_SAMPLER_ARG: spec("otelTracesSamplerArg", undefined, "Fraction of root traces kept by traceidratio and parentbased_traceidratio, from 0 to 1 (default 1).", (raw) => {
    const value = Number(raw.trim());
    if (raw.trim() === "" || !Number.isFinite(value) || value < 0 || value > 1) throw new Error("must be a number from 0 to 1");
    return value;
  }),
  OTEL_BSP_SCHEDULE_DELAY: spec("otelBspScheduleDelayMs", "5000", "Milliseconds between exports of finished spans (and always on shutdown).", integer(1, 600_000)),
  OTEL_BSP_MAX_QUEUE_SIZE: spec("otelBspMaxQueueSize", "2048", "Most finished spans waiting for export; beyond it new ones are dropped.", integer(1, 1_000_000)),
  OTEL_BSP_MAX_EXPORT_BATCH_SIZE: spec("otelBspMaxExportBatchSize", "512", "Most spans in one export request (at most OTEL_BSP_MAX_QUEUE_SIZE).", integer(1, 1_000_000)),
  OTEL_BSP_EXPORT_TIMEOUT: spec("otelBspExportTimeoutMs", "30000", "Longest one export may take before it is given up, in milliseconds.", integer(1, 600_000)),
  // Revocation log and transports (issue 10).
  REVOCATION_TRANSPORT: spec("revocationTransport", "notify", "How replicas learn of revocations: `notify` (PostgreSQL LISTEN/NOTIFY, pushed within milliseconds, with the revocation log to catch up after a blip) or `poll` (read the revocation log every REVOCATION_POLL_INTERVAL; for stores without LISTEN/NOTIFY).", (raw) => {
    if (raw !== "notify" && raw !== "poll") throw new Error("must be notify or poll");
    return raw;
  }),
  REVOCATION_POLL_INTERVAL: spec("revocationPollIntervalMs", "250ms", "With REVOCATION_TRANSPORT=poll, how often each replica reads the revocation log (must be well under CACHE_STALENESS: each successful poll is what keeps cached answers fresh).", duration(10)),
  REVOCATION_LOG_RETENTION: spec("revocationLogRetentionMs", "24h", "How long revocation log entries are kept: a replica or gateway away for less than this catches up on just what it missed; one away longer drops its whole cache.", duration(60_000)),
  // Read replicas for cache misses (issue 10, item 6).
  DATABASE_READ_URL: spec("databaseReadUrl", undefined, "PostgreSQL streaming replica (hot standby) connection URL for cache misses (token lookups by digest). Writes, the revocation listener and revocation log reads stay on DATABASE_URL; an answer the replica cannot prove current (behind the revocations this replica applied, or no such token) is read again from the primary, as is every miss while the replica is unreachable. Needs DATABASE_URL. Unset: misses read the primary.", (raw) => {
    if (!/^postgres(ql)?:\/\//.test(raw)) throw new Error("must start with postgres:// or postgresql://");
    return raw;
  }),
  DATABASE_READ_POOL_MAX: spec("databaseReadPoolMax", "10", "Most connections in the read replica's pool (with DATABASE_READ_URL).", integer(1, 1000)),
  // ---- Usage binding and leak revocation (issue 13: networks, per-token limits, secret scanning).
  TRUSTED_PROXIES: spec("trustedProxies", "", "Comma-separated CIDRs of the proxies whose `X-Forwarded-For` is believed on /auth: the client is the right-most address that is not one of them. Empty: the header is ignored and the connecting peer is the client (so tokens bound to networks see the proxy's address).", (raw) => validateNetworks("TRUSTED_PROXIES", list(raw))),
  GITHUB_SCANNING_KEYS_FILE: spec("githubScanningKeysFile", undefined, "JSON file of GitHub's secret scanning public keys (`{\"public_keys\":[{\"key_identifier\",\"key\"}]}` as served by api.github.com/meta/public_keys/secret_scanning). Set: POST /secret-scanning/github is served. Unset: not served.", text),
  LEAK_REPORT_MAX_TOKENS: spec("leakReportMaxTokens", "100", "Most tokens one secret-scanning report (GitHub or GitLab) may name; a longer report is refused whole (413).", integer(1, 10_000)),
  LEAK_REPORT_MAX_BYTES: spec("leakReportMaxBytes", "262144", "Largest secret-scanning request body read; a larger one is refused (413) before its signature is checked.", integer(1024, 16 * 1024 * 1024)),
  GITLAB_REVOCATION_TOKEN: spec("gitlabRevocationToken", undefined, "Bearer token a GitLab instance sends to GET /v1/revocable_token_types and POST /v1/revoke (32 to 256 printable ASCII characters). Unset: those endpoints are not served.", (raw) => {
    if (!/^[\x21-\x7e]{32,256}$/.test(raw)) throw new Error("must be 32 to 256 printable ASCII characters without spaces");
    return raw;
  }),
} as const satisfies Record<string, KeySpec<keyof Config>>;

/** Keys whose values are secrets: never echoed in an error. */
const SECRET_KEYS: ReadonlySet<string> = new Set(["GITLAB_REVOCATION_TOKEN", "LEGACY_JWT_HMAC_SECRET", "LEGACY_JWT_HMAC_SECRET_PREVIOUS", "FORWARD_AUTH_SECRET", "KEY_ENCRYPTION_KEY", "KEY_ENCRYPTION_KEY_PREVIOUS", "EXT_AUTHZ_SECRET", "OTEL_EXPORTER_OTLP_HEADERS"]);

/**
 * The default of a key in an environment: its one default, or the one for
 * that environment.
 */
export function defaultFor(keySpec: { readonly default: string | EnvironmentDefault | undefined }, environment: Environment): string | undefined {
  return typeof keySpec.default === "object" ? keySpec.default[environment] : keySpec.default;
}

/**
 * Reads and validates the configuration. Unset and empty variables take their
 * default (for some keys, the default of the configured environment). Throws
 * `ConfigError` naming every bad key.
 */
export function loadConfig(env: Readonly<Record<string, string | undefined>>): Config {
  const problems: string[] = [];
  const out: Record<string, unknown> = {};
  const isSet = (key: keyof typeof CONFIG_KEYS) => env[key] !== undefined && env[key] !== "";
  // Environment-dependent defaults follow TOKEN_ENVIRONMENT; an unreadable one
  // (reported below) takes the production defaults, the safe ones.
  const environment = parseEnvironment(isSet("TOKEN_ENVIRONMENT") ? env.TOKEN_ENVIRONMENT! : "development") ?? "production";
  for (const [key, keySpec] of Object.entries(CONFIG_KEYS) as [string, KeySpec<keyof Config>][]) {
    const raw = env[key] === undefined || env[key] === "" ? defaultFor(keySpec, environment) : env[key];
    if (raw === undefined) {
      out[keySpec.field] = undefined;
      continue;
    }
    try {
      out[keySpec.field] = keySpec.parse(raw);
    } catch (error) {
      const shown = SECRET_KEYS.has(key) ? "(secret)" : JSON.stringify(key === "DATABASE_URL" || key === "DATABASE_READ_URL" || key === "PUBLIC_BASE_URL" ? redactUrl(raw) : raw);
      problems.push(`${key}=${shown}: ${(error as Error).message}`);
    }
  }
  const config = out as unknown as Config;
  if (problems.length === 0 && config.tokenDefaultTtlMs > config.tokenMaxTtlMs) {
    problems.push("TOKEN_DEFAULT_TTL: must not be longer than TOKEN_MAX_TTL");
  }
  if (problems.length === 0 && config.rotationDefaultGraceMs > config.rotationMaxGraceMs) {
    problems.push("ROTATION_DEFAULT_GRACE: must not be longer than ROTATION_MAX_GRACE");
  }
  if (problems.length === 0 && config.legacySunsetDate !== undefined && config.legacySunsetDate <= config.legacyReleaseDate) {
    problems.push("LEGACY_JWT_SUNSET_DATE: must be after LEGACY_JWT_RELEASE_DATE");
  }
  if (problems.length === 0 && config.workers > 1 && config.databaseUrl === undefined) {
    problems.push("WORKERS: more than 1 needs DATABASE_URL (the embedded PGlite store belongs to one process)");
  }
  if (problems.length === 0 && config.databaseReadUrl !== undefined && config.databaseUrl === undefined) {
    problems.push("DATABASE_READ_URL: needs DATABASE_URL (a read replica serves a PostgreSQL primary; the embedded PGlite store has none)");
  }
  if (problems.length === 0 && config.revocationHeartbeatMs >= config.cacheStalenessMs) {
    problems.push("REVOCATION_HEARTBEAT: must be shorter than CACHE_STALENESS, or cached answers expire between heartbeats");
  }
  if (problems.length === 0 && config.databaseUrl !== undefined && config.databaseWriteConcurrency >= config.databasePoolMax) {
    problems.push("DATABASE_WRITE_CONCURRENCY: must be below DATABASE_POOL_MAX, or writes can hold every connection and starve token lookups");
  }
  if (problems.length === 0 && config.maxResponseBytes < config.maxMessageBytes) {
    problems.push("MAX_RESPONSE_BYTES: must be at least MAX_MESSAGE_BYTES");
  }
  if (problems.length === 0 && config.revocationTransport === "poll" && config.revocationPollIntervalMs * 2 > config.cacheStalenessMs) {
    problems.push("REVOCATION_POLL_INTERVAL: must be at most half of CACHE_STALENESS, or cached answers expire between polls");
  }
  // TLS needs a certificate and its key together; mutual TLS needs TLS.
  if ((config.tlsCertFile === undefined) !== (config.tlsKeyFile === undefined)) {
    problems.push(config.tlsCertFile === undefined ? "TLS_CERT_FILE: must be set when TLS_KEY_FILE is" : "TLS_KEY_FILE: must be set when TLS_CERT_FILE is");
  }
  if (config.tlsClientCaFile !== undefined && config.tlsCertFile === undefined) {
    problems.push("TLS_CLIENT_CA_FILE: needs TLS_CERT_FILE and TLS_KEY_FILE (mutual TLS runs over TLS)");
  }
  // Forward auth asked for explicitly in staging or production but left open
  // to anyone who can reach the HTTP port: refuse rather than serve it open
  // or silently not at all. (Left at its default, /auth is simply not served
  // there, with an error at start-up: see server/http/forward-auth.ts.)
  if (problems.length === 0 && config.environment !== "development" && isSet("FORWARD_AUTH_ENABLED") && config.forwardAuthEnabled && !forwardAuthProtected(config)) {
    problems.push(`FORWARD_AUTH_ENABLED: /auth must be protected in ${config.environment}: ${FORWARD_AUTH_FIX}`);
  }
  // RFC 8414 §2: the issuer identifier is an https URL; clients such as openid-client refuse anything else.
  if (config.environment === "production" && config.publicBaseUrl !== undefined && !/^https:/i.test(config.publicBaseUrl)) {
    problems.push("PUBLIC_BASE_URL: must be an https URL in production (RFC 8414 §2)");
  }
  // The same rule for Envoy's ext_authz on the gRPC port (src/rpc/ext-authz.ts).
  if (problems.length === 0 && config.environment !== "development" && isSet("EXT_AUTHZ_ENABLED") && config.extAuthzEnabled && !extAuthzProtected(config)) {
    problems.push(`EXT_AUTHZ_ENABLED: Check must be protected in ${config.environment}: ${EXT_AUTHZ_FIX}`);
  }
  // One source per key-encryption key: two would leave it unclear which one wraps.
  for (const [key, value, file] of [["KEY_ENCRYPTION_KEY", config.keyEncryptionKey, config.keyEncryptionKeyFile], ["KEY_ENCRYPTION_KEY_PREVIOUS", config.keyEncryptionKeyPrevious, config.keyEncryptionKeyPreviousFile]] as const) {
    if (value !== undefined && file !== undefined) problems.push(`${key}: set either ${key} or ${key}_FILE, not both`);
  }
  if (problems.length === 0 && config.otelBspMaxExportBatchSize > config.otelBspMaxQueueSize) {
    problems.push("OTEL_BSP_MAX_EXPORT_BATCH_SIZE: must not be larger than OTEL_BSP_MAX_QUEUE_SIZE");
  }
  if (problems.length > 0) throw new ConfigError(problems);
  return Object.freeze(config);
}

/**
 * Whether only the proxy can ask `/auth`: it must send `FORWARD_AUTH_SECRET`,
 * or the HTTP port requires client certificates (mutual TLS).
 */
export function forwardAuthProtected(config: Pick<Config, "forwardAuthSecret" | "tlsCertFile" | "tlsClientCaFile" | "tlsPorts">): boolean {
  return config.forwardAuthSecret !== undefined || (config.tlsCertFile !== undefined && config.tlsClientCaFile !== undefined && config.tlsPorts !== "grpc");
}

/** How to protect `/auth`, for the start-up error and log lines. */
export const FORWARD_AUTH_FIX =
  "set FORWARD_AUTH_SECRET and have the proxy send it as X-Forward-Auth-Secret, or require client certificates on the HTTP port (TLS_CLIENT_CA_FILE with TLS_PORTS=both or http), or set FORWARD_AUTH_ENABLED=false if no proxy uses /auth";

/**
 * Whether only Envoy can call `Authorization/Check`: it must send
 * `EXT_AUTHZ_SECRET` as gRPC metadata, or the gRPC port requires client
 * certificates (mutual TLS).
 */
export function extAuthzProtected(config: Pick<Config, "extAuthzSecret" | "tlsCertFile" | "tlsClientCaFile" | "tlsPorts">): boolean {
  return config.extAuthzSecret !== undefined || (config.tlsCertFile !== undefined && config.tlsClientCaFile !== undefined && config.tlsPorts !== "http");
}

/** How to protect `Authorization/Check`, for the start-up error and log lines. */
export const EXT_AUTHZ_FIX =
  "set EXT_AUTHZ_SECRET and have Envoy send it as the gRPC metadata x-ext-authz-secret (grpc_service.initial_metadata), or require client certificates on the gRPC port (TLS_CLIENT_CA_FILE with TLS_PORTS=both or grpc), or set EXT_AUTHZ_ENABLED=false if no Envoy uses it";

/** A connection URL without its password, for messages and logs. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = "***";
    return parsed.toString();
  } catch {
    return "(unparseable URL)";
  }
}
