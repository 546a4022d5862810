import { Code, ConnectError } from "@connectrpc/connect";
import { Server, ServerCredentials } from "@grpc/grpc-js";
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
  /** Largest request and response message, in bytes; larger requests get RESOURCE_EXHAUSTED. */
  readonly maxMessageBytes: number;
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
  const server = new Server({
    "grpc.max_receive_message_length": options.maxMessageBytes,
    "grpc.max_send_message_length": options.maxMessageBytes,
  });
  for (const { service, impl } of options.services) {
    const { definition, implementation } = grpcServiceDefinition(service, impl, {
      onInternalError: options.onInternalError,
      shutdownSignal: shutdown.signal,
      ...(options.observer ? { observer: options.observer } : {}),
      ...(options.tracing ? { tracing: options.tracing } : {}),
    });
    server.addService(definition, implementation);
  }

  const credentials = options.credentials ?? ServerCredentials.createInsecure();
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${hostForUri(options.host)}:${options.port}`, credentials, (err, bound) => {
      if (err) reject(err);
      else resolve(bound);
    });
  });

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
 * How long, after aborting the streams still open at the end of the grace
 * period, the servers wait for their final statuses to be written before
 * dropping the connections.
 */
export const STATUS_FLUSH_MS = 250;

/** An IPv6 literal needs brackets in a "host:port" target. */
export function hostForUri(host: string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}
