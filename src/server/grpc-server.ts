import * as http2 from "node:http2";
import { performance } from "node:perf_hooks";
import { Code, ConnectError } from "@connectrpc/connect";
import { Server, ServerCredentials, status as GrpcStatus } from "@grpc/grpc-js";
import { EnvelopeCheck, declaresCompression } from "./envelope-check.js";
import { grpcServiceDefinition } from "./grpc-adapter.js";
import type { ServiceRegistration } from "./context.js";
import type { CallObserver } from "./call-observer.js";
import type { GrpcCallTracing } from "./grpc-adapter.js";

/** Options for {@link startGrpcServer}. */
export interface GrpcServerOptions {
  /** Address to listen on, e.g. "127.0.0.1", "0.0.0.0" or "::". */
  readonly host: string;
  /** Port to listen on; 0 picks a free one (see {@link RunningServer.port}). */
  readonly port: number;
  /** The services to mount, each with its connect-style implementation. */
  readonly services: readonly ServiceRegistration[];
  /** Largest request message, in bytes; larger requests get RESOURCE_EXHAUSTED. */
  readonly maxMessageBytes: number;
  /** Transport limits (see {@link GrpcTransportLimits}); absent ones keep grpc-js's defaults. */
  readonly limits?: GrpcTransportLimits;
  /** Receives handler errors that are not ConnectErrors (the client sees INTERNAL "internal error"). */
  readonly onInternalError: (err: unknown, procedure: string) => void;
  /** Told about every finished call (metrics, the debug request log); see {@link CallObserver}. */
  readonly observer?: CallObserver;
  /** Traces every call; see {@link GrpcCallTracing}. Absent: tracing is off. */
  readonly tracing?: GrpcCallTracing;
  /**
   * Transport security. Defaults to cleartext HTTP/2 (`createInsecure()`), for
   * a service behind a mesh or on a private network; pass
   * `ServerCredentials.createSsl(...)` to terminate TLS here.
   */
  readonly credentials?: ServerCredentials;
}

/**
 * What the gRPC port bounds besides message size. Each maps onto a grpc-js
 * server option (`grpc.max_connection_idle_ms` and friends, gRPC proposal
 * A9 "Server-side Connection Management") or onto the frame guard below.
 */
export interface GrpcTransportLimits {
  /** Largest response message, in bytes; a larger answer fails with RESOURCE_EXHAUSTED. */
  readonly maxResponseBytes?: number;
  /**
   * How long the request body of a unary or server-streaming call may take
   * to arrive completely; past it the call is answered DEADLINE_EXCEEDED.
   * Streaming requests (reflection) are not bounded this way.
   */
  readonly requestBodyTimeoutMs?: number;
  /** A connection without calls for this long is sent GOAWAY and closed. */
  readonly connectionIdleMs?: number;
  /** A connection is sent GOAWAY once this old (calls in flight may finish within the grace). */
  readonly connectionMaxAgeMs?: number;
  /** How long calls may still run on a connection past its maximum age before it is cut. */
  readonly connectionMaxAgeGraceMs?: number;
  /** How often the server pings a connection to find dead peers (HTTP/2 PING). */
  readonly keepaliveTimeMs?: number;
  /** How long a ping may go unanswered before the connection is dropped. */
  readonly keepaliveTimeoutMs?: number;
}

/** A listening server, as both `startGrpcServer` and `startHttpServer` return it. */
export interface RunningServer {
  /** The port actually bound (useful when asked for port 0). */
  readonly port: number;
  /**
   * Stops accepting calls, lets in-flight calls finish for up to `graceMs`,
   * then aborts what is left (streams see their signal abort with
   * UNAVAILABLE) and drops the connections. Safe to call more than once.
   */
  close(graceMs: number): Promise<void>;
}

/**
 * Starts the @grpc/grpc-js server: the hot path for gRPC clients (it costs a
 * fraction of what connect-node does per call; see MEASURED.md). Every
 * service is mounted through {@link grpcServiceDefinition}, so it runs the same
 * implementation the HTTP server runs.
 */
export async function startGrpcServer(options: GrpcServerOptions): Promise<RunningServer> {
  const shutdown = new AbortController();
  const limits = options.limits ?? {};
  const server = new Server({
    "grpc.max_receive_message_length": options.maxMessageBytes,
    // Answers have their own limit: a full page of a list is far larger than
    // any request may be (issue 8: 500 security events are ~110 kB).
    "grpc.max_send_message_length": limits.maxResponseBytes ?? options.maxMessageBytes,
    ...(limits.connectionIdleMs !== undefined ? { "grpc.max_connection_idle_ms": limits.connectionIdleMs } : {}),
    ...(limits.connectionMaxAgeMs !== undefined ? { "grpc.max_connection_age_ms": limits.connectionMaxAgeMs } : {}),
    ...(limits.connectionMaxAgeGraceMs !== undefined ? { "grpc.max_connection_age_grace_ms": limits.connectionMaxAgeGraceMs } : {}),
    ...(limits.keepaliveTimeMs !== undefined ? { "grpc.keepalive_time_ms": limits.keepaliveTimeMs } : {}),
    ...(limits.keepaliveTimeoutMs !== undefined ? { "grpc.keepalive_timeout_ms": limits.keepaliveTimeoutMs } : {}),
  });
  const streamingRequests = new Set<string>();
  for (const { service, impl } of options.services) {
    const { definition, implementation } = grpcServiceDefinition(service, impl, {
      onInternalError: options.onInternalError,
      shutdownSignal: shutdown.signal,
      ...(options.observer ? { observer: options.observer } : {}),
      ...(options.tracing ? { tracing: options.tracing } : {}),
    });
    server.addService(definition, implementation);
    for (const method of service.methods) {
      if (method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming") {
        streamingRequests.add(`/${service.typeName}/${method.name}`);
      }
    }
  }

  const credentials = options.credentials ?? ServerCredentials.createInsecure();
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${hostForUri(options.host)}:${options.port}`, credentials, (err, bound) => {
      if (err) reject(err);
      else resolve(bound);
    });
  });

  guardFrames(server, { streamingRequests, requestBodyTimeoutMs: limits.requestBodyTimeoutMs });

  let closing: Promise<void> | undefined;
  const close = (graceMs: number): Promise<void> =>
    (closing ??= new Promise<void>((resolve) => {
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        resolve();
      };
      // Past the grace period, end long-lived streams (health Watch,
      // reflection) with UNAVAILABLE, give those statuses a moment to reach
      // the wire, then cut whatever is still open.
      let timer = setTimeout(() => {
        shutdown.abort(new ConnectError("the server is shutting down", Code.Unavailable));
        timer = setTimeout(() => {
          server.forceShutdown();
          finish();
        }, STATUS_FLUSH_MS);
      }, graceMs);
      // tryShutdown stops accepting and calls back once in-flight calls end.
      server.tryShutdown(finish);
    }));

  return { port, close };
}

/**
 * Puts a frame guard in front of grpc-js on every HTTP/2 stream: the first
 * listener of each of its HTTP/2 servers' "stream" event, so it sees each
 * chunk of a request body before grpc-js does (see {@link StreamGuard}).
 *
 * grpc-js offers no public hook below its decoder, so this reaches its
 * `http2Servers` map (present from 1.10 to at least 1.14.7). Should an
 * upgrade remove it, start-up fails here rather than silently serving
 * without the guard; test/integration/malformed-frames.test.ts fails too.
 */
function guardFrames(server: Server, options: StreamGuardOptions): void {
  const servers = (server as unknown as { http2Servers?: unknown }).http2Servers;
  if (!(servers instanceof Map) || servers.size === 0) {
    throw new Error("@grpc/grpc-js internals changed: cannot guard the gRPC port's frames (check grpc-server.ts)");
  }
  const bodyTimeoutMs = options.requestBodyTimeoutMs;
  const deadlines = bodyTimeoutMs === undefined ? undefined : new BodyDeadlines(bodyTimeoutMs);
  for (const h2 of servers.keys() as Iterable<http2.Http2Server | http2.Http2SecureServer>) {
    h2.prependListener("stream", (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => {
      const path = headers[":path"];
      const timed = deadlines !== undefined && !(typeof path === "string" && options.streamingRequests.has(path));
      const encoding = headers["grpc-encoding"];
      const guard = new StreamGuard(stream, declaresCompression(typeof encoding === "string" ? encoding : undefined));
      (stream as GuardedStream)[GUARD] = guard;
      (stream as unknown as { emit: Emit }).emit = guardedEmit;
      if (timed) deadlines.add(guard);
    });
  }
}

interface StreamGuardOptions {
  /** Paths of methods whose requests are streams (no body time limit). */
  readonly streamingRequests: ReadonlySet<string>;
  readonly requestBodyTimeoutMs: number | undefined;
}

type Emit = (this: http2.ServerHttp2Stream, event: string | symbol, ...args: unknown[]) => boolean;

/** Where a guarded stream keeps its guard, read by the shared {@link guardedEmit}. */
const GUARD: unique symbol = Symbol("gRPC frame guard");

type GuardedStream = http2.ServerHttp2Stream & { [GUARD]?: StreamGuard };

/**
 * Checks one request's framing as grpc-js reads it ({@link EnvelopeCheck}:
 * flag byte 0 or 1, a compressed flag only with a declared grpc-encoding,
 * no body ending inside a frame) and, through {@link BodyDeadlines}, bounds
 * how long its body may take. A refused call is answered with the status
 * PROTOCOL-HTTP2.md prescribes (INTERNAL for corrupt framing,
 * DEADLINE_EXCEEDED for a body too slow) and grpc-js sees neither the
 * offending bytes nor the end of the body, so the handler never runs: no
 * half-decoded request reaches the service.
 *
 * One object per stream, with no closures and no timer of its own: this runs
 * for every call on the gRPC port, the product's hot path.
 */
class StreamGuard {
  refused = false;
  /** When the body must be complete (`performance.now()` ms); set by BodyDeadlines. */
  deadline = 0;
  readonly check: EnvelopeCheck;
  /** The stream's own emit (EventEmitter's), called for everything that passes. */
  readonly emit: Emit;
  /**
   * The stream while its body is still to come; undefined once it is
   * complete, refused or closed (nothing left to time), so that a settled
   * guard waiting in {@link BodyDeadlines} does not keep its stream alive.
   */
  stream: http2.ServerHttp2Stream | undefined;

  constructor(stream: http2.ServerHttp2Stream, compressionDeclared: boolean) {
    this.stream = stream;
    this.check = new EnvelopeCheck(compressionDeclared);
    this.emit = stream.emit as Emit;
  }

  /** Nothing left to time. */
  get settled(): boolean {
    return this.stream === undefined;
  }

  /** Answers the call with `code` and keeps grpc-js from seeing any more of its body. */
  refuse(stream: http2.ServerHttp2Stream, code: GrpcStatus, message: string): void {
    this.refused = true;
    this.stream = undefined;
    if (stream.destroyed || stream.closed) return;
    try {
      if (!stream.headersSent) {
        // Trailers-Only (PROTOCOL-HTTP2.md "Responses"), then RST_STREAM
        // NO_ERROR as its "Early Server Closure" asks, since the client may
        // still be sending. Closing marks the stream closed at once, so
        // grpc-js treats its call as cancelled and never runs the handler.
        stream.respond(
          { ":status": 200, "content-type": "application/grpc+proto", "grpc-status": String(code), "grpc-message": encodeURIComponent(message) },
          { endStream: true },
        );
        stream.close(http2.constants.NGHTTP2_NO_ERROR);
      } else {
        // Headers are out, trailers belong to grpc-js: reset the stream; the
        // client maps PROTOCOL_ERROR to INTERNAL (PROTOCOL-HTTP2.md, "Errors").
        stream.close(http2.constants.NGHTTP2_PROTOCOL_ERROR);
      }
    } catch {
      // The session went away under us (this runs from a timer too, where a
      // throw would end the process): nothing left to answer.
      stream.destroy();
    }
  }
}

/**
 * The emit of every guarded stream, shared rather than a closure per stream:
 * every "data" and "end" passes through it before grpc-js's listeners, at
 * the cost of a few comparisons per chunk. Arguments are passed on exactly
 * as given (no rest array on the common one-argument events).
 */
function guardedEmit(this: GuardedStream, event: string | symbol, arg?: unknown): boolean {
  const guard = this[GUARD]!;
  if (event === "data") {
    if (guard.refused) return false;
    const problem = guard.check.write(arg as Buffer);
    if (problem !== undefined) {
      guard.refuse(this, GrpcStatus.INTERNAL, problem);
      return false;
    }
  } else if (event === "end") {
    if (guard.refused) return false;
    guard.stream = undefined;
    const problem = guard.check.end();
    if (problem !== undefined) {
      guard.refuse(this, GrpcStatus.INTERNAL, problem);
      return false;
    }
  } else if (event === "close") {
    guard.stream = undefined;
  }
  return arguments.length === 2 ? guard.emit.call(this, event, arg) : (Reflect.apply(guard.emit, this, arguments) as boolean);
}

/**
 * The request-body time limit of every guarded stream on one server, with
 * one timer rather than one per call (a timer set and cleared per call was
 * about a microsecond and two objects on the hot path). Every stream gets
 * the same limit, so deadlines arrive in the order streams do: a FIFO queue
 * whose head is the next to expire. Streams whose bodies are complete are
 * dropped from the head as new ones arrive and when the timer fires; a
 * stream still waiting at its deadline is refused with DEADLINE_EXCEEDED,
 * at the same moment its own timer would have fired.
 */
/** Smallest queue {@link BodyDeadlines} sweeps (a sweep copies the queue). */
const SWEEP_MIN = 4096;

class BodyDeadlines {
  #queue: (StreamGuard | undefined)[] = [];
  #head = 0;
  /** Queue length past which settled guards behind a waiting head are swept out. */
  #sweepAt = SWEEP_MIN;
  #timer: NodeJS.Timeout | undefined;
  readonly #message: string;

  constructor(private readonly timeoutMs: number) {
    this.#message = `the request body did not arrive within ${timeoutMs} ms`;
  }

  /** Starts timing a stream's body from now. */
  add(guard: StreamGuard): void {
    guard.deadline = performance.now() + this.timeoutMs;
    this.#dropSettled();
    const queue = this.#queue;
    if (queue.length >= this.#sweepAt) {
      // A slow body at the head holds back everything behind it: sweep the
      // settled ones out so the queue stays about as long as the waiting set.
      const waiting = queue.filter((g, i) => i >= this.#head && !g!.settled);
      this.#queue = waiting;
      this.#head = 0;
      this.#sweepAt = Math.max(SWEEP_MIN, waiting.length * 2);
    }
    this.#queue.push(guard);
    if (this.#timer === undefined) this.#arm(this.timeoutMs);
  }

  /** Drops settled streams from the head, so finished calls are not kept alive. */
  #dropSettled(): void {
    const queue = this.#queue;
    let head = this.#head;
    while (head < queue.length && queue[head]!.settled) queue[head++] = undefined;
    if (head === queue.length) {
      queue.length = 0;
      head = 0;
    } else if (head > 1024 && head * 2 > queue.length) {
      queue.splice(0, head);
      head = 0;
    }
    this.#head = head;
  }

  #arm(ms: number): void {
    this.#timer = setTimeout(() => this.#expire(), Math.max(0, ms));
    this.#timer.unref();
  }

  /** Refuses every stream past its deadline, then waits for the next one. */
  #expire(): void {
    this.#timer = undefined;
    const now = performance.now();
    const queue = this.#queue;
    for (;;) {
      this.#dropSettled();
      const next = queue[this.#head];
      if (next === undefined) return;
      if (next.deadline > now) {
        this.#arm(next.deadline - now);
        return;
      }
      next.refuse(next.stream!, GrpcStatus.DEADLINE_EXCEEDED, this.#message);
    }
  }
}

/**
 * How long, after aborting the streams still open at the end of the grace
 * period, the servers wait for their final statuses to be written before
 * dropping the connections.
 */
export const STATUS_FLUSH_MS = 250;

/** An IPv6 literal needs brackets in a "host:port" target. */
export function hostForUri(host: string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}
