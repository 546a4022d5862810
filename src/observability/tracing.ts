import { ROOT_CONTEXT, SpanKind, SpanStatusCode, diag, DiagLogLevel, trace } from "@opentelemetry/api";
import type { Attributes, Span, TextMapGetter, Tracer } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter as OtlpJsonExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { OTLPTraceExporter as OtlpProtobufExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { resourceFromAttributes } from "@opentelemetry/resources";
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
  TracerProvider,
  type Sampler,
} from "@opentelemetry/sdk-trace";
import {
  ATTR_CLIENT_ADDRESS,
  ATTR_DB_COLLECTION_NAME,
  ATTR_DB_OPERATION_NAME,
  ATTR_DB_SYSTEM_NAME,
  ATTR_DEPLOYMENT_ENVIRONMENT_NAME,
  ATTR_ERROR_TYPE,
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_HTTP_ROUTE,
  ATTR_RPC_METHOD,
  ATTR_RPC_STATUS_CODE,
  ATTR_RPC_SYSTEM_NAME,
  ATTR_SERVICE_NAME,
  DB_SYSTEM_NAME_VALUE_POSTGRESQL,
  RPC_SYSTEM_NAME_VALUE_GRPC,
} from "@opentelemetry/semantic-conventions";
import { ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Metadata, UntypedHandleCall } from "@grpc/grpc-js";
import { redactUrl, type Config } from "../config.js";
import type { CacheOutcome, DomainTracing, Logger, TokenStore } from "../domain/ports.js";
import type { IntrospectionUse } from "../domain/introspect.js";
import { GRPC_CODE_NAMES } from "./metrics.js";

/**
 * OpenTelemetry tracing, instrumented by hand (no auto-instrumentation: it
 * would patch http, http2 and pg for every request, on the hot path too).
 *
 * - A SERVER span per call on both ports (health and reflection excepted)
 *   and per request to the plain HTTP endpoints that do work (`/oauth2/*`, `/auth`), child of the caller's W3C
 *   `traceparent`/`tracestate` (W3C Trace Context, gRPC metadata or HTTP
 *   headers), named and attributed after the stable RPC and HTTP semantic
 *   conventions, its status from the gRPC code (or the HTTP status).
 * - The introspection cache's answer as an attribute of that span
 *   (`tokens.cache.result`, or `tokens.caller_cache.result` for the caller's
 *   own credential): hit, negative (a remembered unknown token) or miss.
 * - A CLIENT child span per store query made during a call (the miss's
 *   `SELECT tokens`), from a decorator of the `TokenStore` port, so neither
 *   storage nor domain imports OpenTelemetry.
 *
 * No attribute ever holds a token, a digest or a header value other than
 * `traceparent`/`tracestate`, which the propagator parses and does not copy.
 *
 * Off (the default), none of this is built: the servers mount their plain
 * handlers, the store is not wrapped, and the domain's `deps.tracing` is
 * undefined, one property check per introspection.
 *
 * The context of a call travels through its awaits by AsyncLocalStorage
 * (`AsyncLocalStorageContextManager`), owned by this object rather than
 * registered globally, so several services in one process (tests) keep their
 * traces apart and nothing else in the process is affected.
 */
export class Tracing {
  readonly #provider: TracerProvider;
  readonly #tracer: Tracer;
  readonly #contexts: AsyncLocalStorageContextManager;
  readonly #propagator = new W3CTraceContextPropagator();
  /** The domain's port: notes the cache's answer on the current call's span. */
  readonly domain: DomainTracing;

  private constructor(provider: TracerProvider) {
    this.#provider = provider;
    this.#tracer = provider.getTracer("token-service");
    this.#contexts = new AsyncLocalStorageContextManager().enable();
    this.domain = { cacheOutcome: (outcome, use) => this.#cacheOutcome(outcome, use) };
  }

  /**
   * Tracing as configured, or undefined when it is off (`OTEL_TRACES_EXPORTER`
   * is `none`, the default, or `OTEL_SDK_DISABLED=true`). Export failures are
   * logged as warnings (through OpenTelemetry's `diag`, process-wide).
   */
  static fromConfig(config: TracingConfig, log: Logger): Tracing | undefined {
    if (config.otelTracesExporter !== "otlp" || config.otelSdkDisabled) return undefined;
    diag.setLogger(
      {
        error: (message, ...args) => log.warn({ detail: args.map(String).join(" ") }, `tracing: ${message}`),
        warn: (message, ...args) => log.warn({ detail: args.map(String).join(" ") }, `tracing: ${message}`),
        info: () => undefined,
        debug: () => undefined,
        verbose: () => undefined,
      },
      { logLevel: DiagLogLevel.WARN, suppressOverrideMessage: true },
    );
    const url = config.otelExporterOtlpTracesEndpoint ?? `${config.otelExporterOtlpEndpoint.replace(/\/+$/, "")}/v1/traces`;
    if (config.otelExporterOtlpHeaders !== undefined && /^http:\/\/(?!(localhost|127\.0\.0\.1|\[::1\])[:/])/.test(url)) {
      log.warn({ endpoint: redactUrl(url) }, "tracing: OTEL_EXPORTER_OTLP_HEADERS go to the collector over cleartext HTTP; use an https:// endpoint or a collector on this host");
    }
    const exporterOptions = { url, headers: { ...config.otelExporterOtlpHeaders }, timeoutMillis: config.otelExporterOtlpTimeoutMs };
    const exporter = config.otelExporterOtlpProtocol === "http/json" ? new OtlpJsonExporter(exporterOptions) : new OtlpProtobufExporter(exporterOptions);
    const provider = new TracerProvider({
      resource: resourceFromAttributes({
        [ATTR_DEPLOYMENT_ENVIRONMENT_NAME]: config.environment,
        ...config.otelResourceAttributes,
        [ATTR_SERVICE_NAME]: config.otelServiceName,
      }),
      sampler: sampler(config),
      spanProcessors: [
        new BatchSpanProcessor({
          exporter,
          scheduledDelayMillis: config.otelBspScheduleDelayMs,
          maxQueueSize: config.otelBspMaxQueueSize,
          maxExportBatchSize: config.otelBspMaxExportBatchSize,
          exportTimeoutMillis: config.otelBspExportTimeoutMs,
        }),
      ],
    });
    log.info({ exporter: "otlp", protocol: config.otelExporterOtlpProtocol, endpoint: redactUrl(url), sampler: config.otelTracesSampler }, "tracing on");
    return new Tracing(provider);
  }

  /** Exports every finished span now. */
  flush(): Promise<void> {
    return this.#provider.forceFlush();
  }

  /** Exports what is left and stops; call after the servers have closed. */
  async shutdown(): Promise<void> {
    await this.#provider.shutdown();
    this.#contexts.disable();
  }

  /**
   * The gRPC server's hook (`GrpcCallTracing`): per method, at mount time, a
   * handler wrapper that starts the call's span from its metadata and runs
   * the call in its context, and a recorder that ends it with the status.
   */
  readonly grpc = {
    method: (procedure: string) => {
      const name = procedure.slice(1); // "/pkg.Service/Method" → "pkg.Service/Method", the span name and rpc.method
      if (UNTRACED_SERVICES.has(name.slice(0, name.indexOf("/")))) return undefined;
      const attributes: Attributes = { [ATTR_RPC_SYSTEM_NAME]: RPC_SYSTEM_NAME_VALUE_GRPC, [ATTR_RPC_METHOD]: name };
      return {
        handler: (handler: UntypedHandleCall): UntypedHandleCall => {
          const traced = (call: { readonly metadata: Metadata }, ...rest: unknown[]): unknown => {
            const parent = this.#propagator.extract(ROOT_CONTEXT, call.metadata, METADATA_GETTER);
            const span = this.#tracer.startSpan(name, { kind: SpanKind.SERVER, attributes }, parent);
            return this.#contexts.with(trace.setSpan(parent, span), handler as (...args: unknown[]) => unknown, undefined, call, ...rest);
          };
          return traced as UntypedHandleCall;
        },
        recorder:
          <F>(next: ((code: number, startMs: number, facts: F) => void) | undefined) =>
          (code: number, start: number, facts: F): void => {
            // The recorder runs in the call's own context (the adapter calls it
            // in the handler's finally), so the active span is the call's.
            const span = trace.getSpan(this.#contexts.active());
            if (span !== undefined) endRpcSpan(span, code);
            next?.(code, start, facts);
          },
      };
    },
  } as const;

  /**
   * The Connect port's interceptor: put it first, so its span covers the
   * others and sees the code the client gets. The protocol decides
   * `rpc.system.name` (gRPC and gRPC-Web are "grpc", Connect "connectrpc").
   */
  connectInterceptor(): Interceptor {
    return (next) => (req) => {
      if (UNTRACED_SERVICES.has(req.service.typeName)) return next(req);
      const parent = this.#propagator.extract(ROOT_CONTEXT, req.header, HEADERS_GETTER);
      const name = `${req.service.typeName}/${req.method.name}`;
      const system = (req.header.get("content-type") ?? "").startsWith("application/grpc") ? RPC_SYSTEM_NAME_VALUE_GRPC : RPC_SYSTEM_NAME_VALUE_CONNECTRPC;
      const span = this.#tracer.startSpan(name, { kind: SpanKind.SERVER, attributes: { [ATTR_RPC_SYSTEM_NAME]: system, [ATTR_RPC_METHOD]: name } }, parent);
      return this.#contexts.with(trace.setSpan(parent, span), async () => {
        let res: Awaited<ReturnType<typeof next>>;
        try {
          res = await next(req);
        } catch (err) {
          endRpcSpan(span, ConnectError.from(err).code);
          throw err;
        }
        if (!res.stream) {
          endRpcSpan(span, OK);
          return res;
        }
        const messages = res.message;
        return {
          ...res,
          message: (async function* () {
            let code = CANCELLED; // ended early by the client
            try {
              yield* messages;
              code = OK;
            } catch (err) {
              code = ConnectError.from(err).code;
              throw err;
            } finally {
              endRpcSpan(span, code);
            }
          })(),
        };
      });
    };
  }

  /**
   * Wraps the HTTP port's plain endpoints (the `extraHandler` contract): a
   * span for each request to a route that does work (`/oauth2/…`, `/auth`,
   * `/auth/…`), ended when the response is done. Other paths (probes, JWKS,
   * metrics, and the RPCs, traced by the interceptor) pass straight through.
   */
  httpRoutes<Req extends TracedRequest, Res extends TracedResponse>(inner: (req: Req, res: Res) => boolean): (req: Req, res: Res) => boolean {
    return (req, res) => {
      const route = tracedRoute(req.url ?? "");
      if (route === undefined) return inner(req, res);
      const parent = this.#propagator.extract(ROOT_CONTEXT, req.headers, NODE_HEADERS_GETTER);
      const method = req.method ?? "_OTHER";
      const attributes: Attributes = { [ATTR_HTTP_REQUEST_METHOD]: method, [ATTR_HTTP_ROUTE]: route };
      const peer = req.socket?.remoteAddress;
      if (peer !== undefined) attributes[ATTR_CLIENT_ADDRESS] = peer;
      const span = this.#tracer.startSpan(`${method} ${route}`, { kind: SpanKind.SERVER, attributes }, parent);
      const answered = this.#contexts.with(trace.setSpan(parent, span), inner, undefined, req, res);
      // Not ours after all (e.g. /auth when forward auth is off): the span is
      // never ended, so never exported; the request goes on to the RPC router.
      if (!answered) return false;
      res.once("close", () => {
        const status = res.statusCode;
        span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, status);
        // Server spans: 5xx is an error, 4xx is the client's (HTTP semantic conventions).
        if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR }).setAttribute(ATTR_ERROR_TYPE, String(status));
        else if (!res.writableFinished) span.setAttribute(ATTR_ERROR_TYPE, "aborted");
        span.end();
      });
      return true;
    };
  }

  /**
   * The token store, with a CLIENT span around each query made inside a
   * traced call (a miss's `findByDigest`, an issue's insert, …). Queries
   * outside any call (batched last-used writes, heartbeats) are not traced.
   */
  traceStore(store: TokenStore): TokenStore {
    // A proxy rather than a class listing every method: a method added to the
    // port later passes straight through (untraced) instead of breaking this.
    const wrapped = new Map<PropertyKey, unknown>();
    return new Proxy(store, {
      get: (target, property) => {
        const known = wrapped.get(property);
        if (known !== undefined) return known;
        const value: unknown = Reflect.get(target, property, target);
        if (typeof value !== "function") return value;
        const method = value as (...args: unknown[]) => Promise<unknown>;
        const operation = typeof property === "string" ? STORE_OPERATIONS[property] : undefined;
        const name = String(property);
        const bound =
          operation === undefined
            ? method.bind(target)
            : (...args: unknown[]) => this.#storeQuery(name, operation, () => method.apply(target, args));
        wrapped.set(property, bound);
        return bound;
      },
    });
  }

  #storeQuery<T>(method: string, operation: string, run: () => Promise<T>): Promise<T> {
    const active = this.#contexts.active();
    const parent = trace.getSpan(active);
    if (parent === undefined || !parent.isRecording()) return run();
    const span = this.#tracer.startSpan(
      `${operation} tokens`,
      {
        kind: SpanKind.CLIENT,
        attributes: {
          [ATTR_DB_SYSTEM_NAME]: DB_SYSTEM_NAME_VALUE_POSTGRESQL,
          [ATTR_DB_OPERATION_NAME]: operation,
          [ATTR_DB_COLLECTION_NAME]: "tokens",
          "tokens.store.method": method,
        },
      },
      active,
    );
    return this.#contexts.with(trace.setSpan(active, span), run).then(
      (value) => {
        span.end();
        return value;
      },
      (err: unknown) => {
        // The error's class or code only: a driver message may quote a value.
        const code = (err as { code?: unknown }).code;
        span.setStatus({ code: SpanStatusCode.ERROR }).setAttribute(ATTR_ERROR_TYPE, typeof code === "string" ? code : err instanceof Error ? err.name : "_OTHER");
        span.end();
        throw err;
      },
    );
  }

  #cacheOutcome(outcome: CacheOutcome, use: IntrospectionUse): void {
    trace.getSpan(this.#contexts.active())?.setAttribute(use === "authenticate" ? ATTR_CALLER_CACHE_RESULT : ATTR_CACHE_RESULT, outcome);
  }
}

/**
 * What tracing reads of a plain HTTP request and response (Node's HTTP/1.1
 * and HTTP/2 compatibility objects both fit), so this module needs no
 * server types.
 */
export interface TracedRequest {
  readonly url?: string | undefined;
  readonly method?: string | undefined;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  readonly socket?: { readonly remoteAddress?: string | undefined } | null | undefined;
}

/** See {@link TracedRequest}. */
export interface TracedResponse {
  readonly statusCode: number;
  readonly writableFinished: boolean;
  once(event: "close", listener: () => void): unknown;
}

/** The configuration tracing reads: the OTEL_* keys and the environment. */
export type TracingConfig = Pick<Config, "environment" | Extract<keyof Config, `otel${string}`>>;

/** `tokens.cache.result`: the cache's answer for the introspected token (hit, negative, miss). */
export const ATTR_CACHE_RESULT = "tokens.cache.result";
/** `tokens.caller_cache.result`: the same for the caller's own credential. */
export const ATTR_CALLER_CACHE_RESULT = "tokens.caller_cache.result";

/**
 * Services whose calls get no span: health checks (probes every few seconds,
 * from every kubelet and load balancer) and reflection (tooling) would bury
 * the traffic worth tracing.
 */
const UNTRACED_SERVICES: ReadonlySet<string> = new Set(["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]);

/**
 * The token store's methods traced as queries, with their SQL operation.
 * Batched bookkeeping (`touchLastUsed`) and `ping` are left out: they run
 * outside calls (and readiness probes would bury the traffic).
 */
const STORE_OPERATIONS: Readonly<Record<string, "SELECT" | "INSERT" | "UPDATE">> = {
  insert: "INSERT",
  findByDigest: "SELECT",
  findById: "SELECT",
  revoke: "UPDATE",
  revokeOne: "UPDATE",
  revokeCascade: "UPDATE",
  list: "SELECT",
  count: "SELECT",
};

/** `rpc.system.name` of Connect (incubating in the semantic conventions, so spelled here). */
const RPC_SYSTEM_NAME_VALUE_CONNECTRPC = "connectrpc";

const OK = 0;
const CANCELLED = 1;


/**
 * Codes that mark a server span as failed (RPC semantic conventions, gRPC):
 * the server's own failures, not the caller's mistakes (an inactive token, a
 * bad argument, a denied permission are answers, not errors).
 */
const SERVER_ERRORS: ReadonlySet<number> = new Set([2, 4, 12, 13, 14, 15]);

function endRpcSpan(span: Span, code: number): void {
  const name = GRPC_CODE_NAMES[code] ?? String(code);
  span.setAttribute(ATTR_RPC_STATUS_CODE, name);
  if (SERVER_ERRORS.has(code)) span.setStatus({ code: SpanStatusCode.ERROR }).setAttribute(ATTR_ERROR_TYPE, name);
  span.end();
}

/** The `http.route` of a plain HTTP path worth a span, or undefined. */
function tracedRoute(url: string): string | undefined {
  const query = url.indexOf("?");
  const path = query < 0 ? url : url.slice(0, query);
  if (path === "/oauth2/introspect" || path === "/oauth2/revoke" || path === "/auth") return path;
  // Envoy's HTTP ext_authz appends the original path: one route, not one per path.
  if (path.startsWith("/auth/")) return "/auth";
  return undefined;
}

function sampler(config: TracingConfig): Sampler {
  const ratio = () => new TraceIdRatioBasedSampler(config.otelTracesSamplerArg ?? 1);
  switch (config.otelTracesSampler) {
    case "always_on":
      return new AlwaysOnSampler();
    case "always_off":
      return new AlwaysOffSampler();
    case "traceidratio":
      return ratio();
    case "parentbased_always_on":
      return new ParentBasedSampler({ root: new AlwaysOnSampler() });
    case "parentbased_always_off":
      return new ParentBasedSampler({ root: new AlwaysOffSampler() });
    case "parentbased_traceidratio":
      return new ParentBasedSampler({ root: ratio() });
  }
}

/** Reads W3C trace context from grpc-js metadata (string values only). */
const METADATA_GETTER: TextMapGetter<Metadata> = {
  get: (carrier, key) => {
    const value = carrier.get(key)[0];
    return typeof value === "string" ? value : undefined;
  },
  keys: (carrier) => Object.keys(carrier.getMap()),
};

/** Reads W3C trace context from fetch `Headers` (the Connect request). */
const HEADERS_GETTER: TextMapGetter<Headers> = {
  get: (carrier, key) => carrier.get(key) ?? undefined,
  keys: (carrier) => [...carrier.keys()],
};

/** Reads W3C trace context from Node's incoming headers (lower-cased names). */
const NODE_HEADERS_GETTER: TextMapGetter<TracedRequest["headers"]> = {
  get: (carrier, key) => {
    const value = carrier[key];
    return Array.isArray(value) ? value[0] : value;
  },
  keys: (carrier) => Object.keys(carrier),
};
