import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import * as tls from "node:tls";
import { Code, ConnectError, createConnectRouter, createContextValues } from "@connectrpc/connect";
import type { ConnectRouter, Interceptor } from "@connectrpc/connect";
import { compressionBrotli, compressionGzip, universalRequestFromNodeRequest, universalResponseToNodeResponse } from "@connectrpc/connect-node";
import type { UniversalHandler } from "@connectrpc/connect/protocol";
import { errorToJsonBytes, codeToHttpStatus } from "@connectrpc/connect/protocol-connect";
import { checkGetRequest, guardRequest, internalOnBadCompression } from "./connect-request-guard.js";
import { observeCalls, type CallObserver } from "./call-observer.js";
import { peerKey } from "./context.js";
import { assignHttpRequestId, requestIdKey, httpRequestId } from "./request-id.js";
import type { ServiceRegistration } from "./context.js";
import { procedureOf } from "./grpc-adapter.js";
import { STATUS_FLUSH_MS } from "./grpc-server.js";
import type { RunningServer } from "./grpc-server.js";
import type { HttpTlsOptions } from "./tls.js";

/** A request on the HTTP port, from either HTTP/1.1 or HTTP/2. */
export type HttpRequest = http.IncomingMessage | http2.Http2ServerRequest;
/** The matching response. */
export type HttpResponse = http.ServerResponse | http2.Http2ServerResponse;

/** Options for {@link startHttpServer}. */
export interface HttpServerOptions {
  /** Address to listen on, e.g. "127.0.0.1", "0.0.0.0" or "::". */
  readonly host: string;
  /** Port to listen on; 0 picks a free one. */
  readonly port: number;
  /** Registers the RPC services; {@link routeServices} builds this from a list. */
  readonly routes: (router: ConnectRouter) => void;
  /** Largest request message, in bytes (connect's `readMaxBytes`); larger ones get RESOURCE_EXHAUSTED. */
  readonly maxMessageBytes: number;
  /** Largest response message (connect's `writeMaxBytes`); a larger answer fails with RESOURCE_EXHAUSTED. Default: unbounded. */
  readonly maxResponseBytes?: number;
  /**
   * How long a request body may take to arrive completely (never longer than
   * the call's own deadline); past it the call is answered DEADLINE_EXCEEDED
   * and the connection dropped. Also bounds HTTP/1.1 headers and whole
   * requests (Node's `headersTimeout` and `requestTimeout`). Default: unbounded
   * but for the deadline.
   */
  readonly requestBodyTimeoutMs?: number;
  /**
   * How long a connection may sit idle: HTTP/1.1 keep-alive between requests
   * (Node's `keepAliveTimeout`) and HTTP/2 sessions without traffic (closed
   * gracefully with GOAWAY). Default: Node's 5 s keep-alive, sessions unbounded.
   */
  readonly connectionIdleMs?: number;
  /** Longest timeout a client may ask for; a longer one is refused with INVALID_ARGUMENT. */
  readonly maxTimeoutMs: number;
  /**
   * Receives handler errors that are not ConnectErrors, with the procedure.
   * connect-node already answers INTERNAL "internal error" without detail;
   * this is where the detail gets logged. Defaults to `console.error`.
   */
  readonly onInternalError?: (err: unknown, procedure: string) => void;
  /**
   * Sees every request first; returns true if it answered (plain HTTP paths
   * such as `/healthz`), false to pass it on to the RPC router.
   */
  readonly extraHandler?: (req: HttpRequest, res: HttpResponse) => boolean;
  /** How long a new connection may stay silent before it is dropped. Default 10 s. */
  readonly firstByteTimeoutMs?: number;
  /**
   * Told about every finished RPC and plain HTTP request (metrics, the debug
   * request log); see {@link CallObserver}. Every request gets an
   * `x-request-id` response header either way (server/request-id.ts).
   */
  readonly observer?: CallObserver;
  /**
   * Terminate TLS (and, with `clientCa`, require client certificates) on
   * this port; cleartext when absent. See {@link startHttpServer}.
   */
  readonly tls?: HttpTlsOptions;
  /**
   * Interceptors run before all others on the RPCs, e.g. tracing's (which
   * must see the code the client gets). Absent: none.
   */
  readonly interceptors?: readonly Interceptor[];
}

/** The first bytes of every HTTP/2 connection (RFC 9113 §3.4). */
const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

/**
 * Mounts a list of services on a connect router: the `routes` option of
 * {@link startHttpServer}, from the same list `startGrpcServer` takes.
 */
export function routeServices(services: readonly ServiceRegistration[]): (router: ConnectRouter) => void {
  return (router) => {
    for (const { service, impl } of services) {
      // The erased registration pairs any service with any object; the typed
      // form was checked where the registration was built.
      router.service(service, impl as Parameters<ConnectRouter["service"]>[1]);
    }
  };
}

/**
 * Starts the HTTP server: Connect, gRPC-Web and gRPC on one port, over
 * HTTP/1.1 and cleartext HTTP/2 (prior knowledge, as `buf curl
 * --http2-prior-knowledge` and gRPC clients speak it).
 *
 * `http2.createServer({ allowHTTP1: true })` only negotiates HTTP/1.1 through
 * TLS ALPN, so a plain `net.Server` accepts each connection, reads until the
 * first bytes either match the HTTP/2 preface or cannot, puts them back, and
 * hands the socket to an `http2` or an `http` server.
 *
 * With `tls`, a `tls.Server` offers ALPN `h2` and `http/1.1` and hands each
 * decrypted socket to the same dispatch (the preface decides, as ALPN
 * already did), rather than `http2.createSecureServer({ allowHTTP1: true })`:
 * one accept path, one set of tracked sockets and one close() for both modes.
 */
export async function startHttpServer(options: HttpServerOptions): Promise<RunningServer> {
  const onInternalError =
    options.onInternalError ??
    ((err: unknown, procedure: string) => console.error(`internal error in ${procedure}`, err));
  const shutdown = new AbortController();
  // connect-node's defaults, answering INTERNAL for a body that does not decompress.
  const compressions = [internalOnBadCompression(compressionGzip), internalOnBadCompression(compressionBrotli)];
  const router = createConnectRouter({
    readMaxBytes: options.maxMessageBytes,
    ...(options.maxResponseBytes !== undefined ? { writeMaxBytes: options.maxResponseBytes } : {}),
    maxTimeoutMs: options.maxTimeoutMs,
    shutdownSignal: shutdown.signal,
    interceptors: [...(options.interceptors ?? []), ...(options.observer ? [observeCalls(options.observer)] : []), reportInternalErrors(onInternalError)],
    acceptCompression: compressions,
  });
  options.routes(router);
  const handlers = new Map<string, UniversalHandler>();
  for (const handler of router.handlers) handlers.set(handler.requestPath, handler);
  // connect-node's connectNodeAdapter, plus guardRequest between the Node
  // request and the protocol handler: connect-node offers no hook there.
  const rpc = (req: HttpRequest, res: HttpResponse): void => {
    const handler = handlers.get((req.url ?? "").split("?", 1)[0] ?? "");
    if (handler === undefined) {
      res.writeHead(404);
      res.end();
      return;
    }
    const values = createContextValues().set(peerKey, req.socket?.remoteAddress).set(requestIdKey, httpRequestId(req));
    const uReq = guardRequest(universalRequestFromNodeRequest(req, res, undefined, values), handler.method, {
      maxMessageBytes: options.maxMessageBytes,
      requestBodyTimeoutMs: options.requestBodyTimeoutMs,
      maxTimeoutMs: options.maxTimeoutMs,
      compressions,
      // A body that stalls would hold the connection after the answer: cut it then.
      onSlowBody: () => {
        if (res.writableFinished) req.destroy();
        else res.once("finish", () => req.destroy());
      },
    });
    const serve = (): void => {
      handler(uReq)
        .then((uRes) => universalResponseToNodeResponse(uRes, res))
        .catch((reason: unknown) => {
          if (ConnectError.from(reason).code === Code.Aborted) return; // the client went away
          onInternalError(reason, procedureOf(handler.method));
        });
    };
    if (req.method !== "GET") {
      serve();
      return;
    }
    // A Connect GET carries its message in the query, which guardRequest does not see.
    void checkGetRequest(req.url ?? "", handler.method, { maxMessageBytes: options.maxMessageBytes, compressions }).then((refusal) => {
      if (refusal === undefined) {
        serve();
      } else if (!res.headersSent) {
        res.writeHead(codeToHttpStatus(refusal.code), { "content-type": "application/json" });
        res.end(errorToJsonBytes(refusal, {}));
      }
    }, (err: unknown) => onInternalError(err, procedureOf(handler.method)));
  };

  let closing = false;
  const extra = options.extraHandler;
  const observer = options.observer;
  const onRequest = (req: HttpRequest, res: HttpResponse): void => {
    const requestId = assignHttpRequestId(req, res);
    // While draining, ask HTTP/1.1 clients not to reuse the connection.
    if (closing && res instanceof http.ServerResponse && !res.headersSent) res.shouldKeepAlive = false;
    if (extra !== undefined) {
      // Undefined unless the observer wants plain HTTP requests (their debug line).
      const record = observer?.httpRequest?.();
      if (extra(req, res)) {
        if (record !== undefined) {
          // A plain HTTP endpoint: report it once answered (some answer later).
          const done = () => record(req.method ?? "", (req.url ?? "").split("?", 1)[0] ?? "", res.statusCode, requestId, req.socket?.remoteAddress);
          if (res.writableFinished) done();
          else res.once("finish", done);
        }
        return;
      }
    }
    rpc(req, res);
  };

  const bodyMs = options.requestBodyTimeoutMs;
  const h1 = http.createServer(
    {
      // The guard answers a slow body first (with a status); Node's own
      // limits then close what is left. Checked every second rather than
      // Node's default 30 s, so they hold to within a second.
      ...(bodyMs !== undefined ? { headersTimeout: bodyMs, requestTimeout: bodyMs + 1000, connectionsCheckingInterval: 1000 } : {}),
      ...(options.connectionIdleMs !== undefined ? { keepAliveTimeout: options.connectionIdleMs } : {}),
    },
    onRequest,
  );
  const h2 = http2.createServer(onRequest);
  // http.Server starts its header/request timeout checks and its connection
  // list on "listening", which it never sees because it never listens itself.
  h1.emit("listening");

  const sockets = new Set<net.Socket>();
  const waiting = new Set<net.Socket>(); // accepted, protocol not known yet
  const sessions = new Set<http2.Http2Session>();
  const idleMs = options.connectionIdleMs;
  h2.on("session", (session: http2.Http2Session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
    // No frames for this long: GOAWAY, letting streams still open finish.
    if (idleMs !== undefined) session.setTimeout(idleMs, () => session.close());
  });

  const firstByteTimeoutMs = options.firstByteTimeoutMs ?? 10_000;
  const accept = (socket: net.Socket): void => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    if (closing) {
      socket.destroy();
      return;
    }
    waiting.add(socket);
    let head: Buffer | undefined;
    const timer = setTimeout(() => socket.destroy(), firstByteTimeoutMs);
    const stopWaiting = () => {
      clearTimeout(timer);
      waiting.delete(socket);
      socket.off("data", onData);
      socket.off("error", onError);
      socket.off("close", stopWaiting);
    };
    const onError = () => socket.destroy(); // reset before a request: nothing to report
    const onData = (chunk: Buffer) => {
      head = head === undefined ? chunk : Buffer.concat([head, chunk]);
      const n = Math.min(head.length, H2_PREFACE.length);
      const h2Prefix = head.compare(H2_PREFACE, 0, n, 0, n) === 0;
      if (h2Prefix && n < H2_PREFACE.length) return; // could still be HTTP/2
      stopWaiting();
      socket.pause();
      socket.unshift(head);
      if (h2Prefix) {
        // Http2Session reads what is buffered on the socket itself; leave it paused.
        h2.emit("connection", socket);
      } else {
        h1.emit("connection", socket);
        socket.resume();
      }
    };
    socket.on("data", onData);
    socket.on("error", onError);
    socket.once("close", stopWaiting);
  };
  const tcp = options.tls === undefined ? net.createServer({ noDelay: true }, accept) : tlsServer(options.tls, firstByteTimeoutMs, accept);
  if (options.tls !== undefined) {
    // Track sockets still in their handshake too, so close() can cut them.
    tcp.on("connection", (raw: net.Socket) => {
      sockets.add(raw);
      raw.once("close", () => sockets.delete(raw));
      if (closing) raw.destroy();
    });
  }

  const port = await new Promise<number>((resolve, reject) => {
    tcp.once("error", reject);
    tcp.listen(options.port, options.host, () => {
      tcp.off("error", reject);
      resolve((tcp.address() as net.AddressInfo).port);
    });
  });
  // Once listening, an error here is a failed accept (e.g. EMFILE): worth a
  // log line, not a crash, which an "error" event without a listener would be.
  tcp.on("error", (err) => onInternalError(err, "accept"));

  let closed: Promise<void> | undefined;
  const close = (graceMs: number): Promise<void> =>
    (closed ??= new Promise<void>((resolve) => {
      closing = true;
      // Keep-alive HTTP/1.1 connections go as soon as they fall idle.
      const idleSweep = setInterval(() => h1.closeIdleConnections(), 50);
      let timer = setTimeout(() => {
        clearInterval(idleSweep);
        // Long-lived streams end with UNAVAILABLE; once their statuses had a
        // moment to reach the wire, cut what is left.
        shutdown.abort(new ConnectError("the server is shutting down", Code.Unavailable));
        timer = setTimeout(() => {
          for (const session of sessions) session.destroy();
          for (const socket of sockets) socket.destroy();
        }, STATUS_FLUSH_MS);
      }, graceMs);
      // Calls back when every accepted socket has closed.
      tcp.close(() => {
        clearTimeout(timer);
        clearInterval(idleSweep);
        resolve();
      });
      for (const socket of waiting) socket.destroy();
      // GOAWAY: in-flight streams finish, then Node closes the session.
      for (const session of sessions) session.close();
      h1.close();
    }));

  return { port, close };
}

/**
 * A TLS listener for the HTTP port. ALPN offers HTTP/2 first, then HTTP/1.1
 * (RFC 9113 §3.2, RFC 7301); under mutual TLS a client without a certificate
 * from `clientCa` fails the handshake, before any HTTP is read.
 */
function tlsServer(options: HttpTlsOptions, handshakeTimeout: number, accept: (socket: net.Socket) => void): tls.Server {
  return tls.createServer(
    {
      noDelay: true,
      cert: options.cert,
      key: options.key,
      ALPNProtocols: ["h2", "http/1.1"],
      handshakeTimeout,
      ...(options.clientCa ? { ca: options.clientCa, requestCert: true, rejectUnauthorized: true } : {}),
    },
    accept,
  );
}

/**
 * connect-node already hides the detail of an unexpected error (the client
 * gets INTERNAL "internal error"); this interceptor reports that detail, and
 * reports an error caused by the call's own abort (cancel, deadline, shutdown)
 * as that abort rather than as a failure, the way the gRPC server does.
 */
function reportInternalErrors(onInternalError: (err: unknown, procedure: string) => void): Interceptor {
  const mapError = (err: unknown, signal: AbortSignal, procedure: string): ConnectError => {
    if (err instanceof ConnectError) return err;
    if (signal.aborted) return ConnectError.from(signal.reason, Code.Canceled);
    onInternalError(err, procedure);
    return new ConnectError("internal error", Code.Internal, undefined, undefined, err);
  };
  return (next) => async (req) => {
    try {
      const res = await next(req);
      if (!res.stream) return res;
      const messages = res.message;
      const procedure = procedureOf(req.method);
      return {
        ...res,
        message: (async function* () {
          try {
            yield* messages;
          } catch (err) {
            throw mapError(err, req.signal, procedure);
          }
        })(),
      };
    } catch (err) {
      throw mapError(err, req.signal, procedureOf(req.method));
    }
  };
}
