import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextValues, encodeBinaryHeader } from "@connectrpc/connect";
import type { ContextValues, HandlerContext } from "@connectrpc/connect";
import type { Deadline, Metadata } from "@grpc/grpc-js";
import { peerKey } from "./context.js";
import { requestIdKey } from "./request-id.js";

/** What the context needs from a grpc-js server call (any kind). */
export interface GrpcCallSurface {
  readonly metadata: Metadata;
  readonly cancelled: boolean;
  getPeer(): string;
  getDeadline(): Deadline;
  getHost(): string;
  getPath(): string;
  once(event: "cancelled", listener: () => void): unknown;
}

const noTimeout = (): undefined => undefined;

/**
 * The connect `HandlerContext` of one call on the grpc-js server: the same
 * contract `createHandlerContext` fulfils (the signal aborts on cancellation,
 * at the deadline, on server shutdown and when the call completes), built
 * lazily because this is the product's hot path.
 *
 * `createHandlerContext` eagerly makes two AbortControllers, a deadline timer,
 * three `Headers` and a context-values map per call; measured on the unary
 * path that was about a fifth of the server's CPU per call, mostly for a
 * signal most handlers never read. Here each piece is made on first use: a
 * handler that reads only the request header and peer pays for those alone.
 */
export class GrpcHandlerContext implements HandlerContext {
  readonly protocolName = "grpc";
  readonly requestMethod = "POST";
  /** Remaining time before the deadline, in ms; undefined without one. */
  readonly timeoutMs: () => number | undefined;

  readonly #call: GrpcCallSurface;
  readonly #shutdownSignal: AbortSignal | undefined;
  /** Epoch ms, or Infinity when the client set no deadline. */
  readonly #deadline: number;
  #reason: unknown = undefined;
  #controller: AbortController | undefined;
  #timer: NodeJS.Timeout | undefined;
  #onShutdown: (() => void) | undefined;
  #requestHeader: Headers | undefined;
  #responseHeader: Headers | undefined;
  #responseTrailer: Headers | undefined;
  #values: ContextValues | undefined;

  constructor(
    readonly service: DescService,
    readonly method: DescMethod,
    call: GrpcCallSurface,
    shutdownSignal: AbortSignal | undefined,
    /** The call's request id (see server/request-id.ts), also under `requestIdKey` in `values`. */
    readonly requestId: string,
  ) {
    this.#call = call;
    this.#shutdownSignal = shutdownSignal;
    const deadline = call.getDeadline();
    const deadlineMs = typeof deadline === "number" ? deadline : deadline.getTime();
    this.#deadline = deadlineMs;
    this.timeoutMs = Number.isFinite(deadlineMs) ? () => deadlineMs - Date.now() : noTimeout;
  }

  /** Aborts on cancellation, deadline, shutdown or completion, like connect's. */
  get signal(): AbortSignal {
    let controller = this.#controller;
    if (controller === undefined) {
      controller = this.#controller = new AbortController();
      const reason = this.abortReason();
      if (reason !== undefined) {
        controller.abort(reason);
      } else {
        // grpc-js also emits "cancelled" just after a call ends normally, when
        // the context is already done: check first, a ConnectError is not free.
        this.#call.once("cancelled", () => {
          if (this.#reason === undefined) this.abort(cancelledError());
        });
        if (Number.isFinite(this.#deadline)) {
          this.#timer = setTimeout(() => this.abort(deadlineError()), this.#deadline - Date.now());
        }
        const shutdown = this.#shutdownSignal;
        if (shutdown !== undefined) {
          this.#onShutdown = () => this.abort(shutdown.reason);
          shutdown.addEventListener("abort", this.#onShutdown);
        }
      }
    }
    return controller.signal;
  }

  /**
   * Why the call is over, if it is (cancelled, past its deadline, server
   * shutting down, completed), without creating the signal.
   */
  abortReason(): unknown {
    if (this.#reason !== undefined) return this.#reason;
    if (this.#call.cancelled) return cancelledError();
    if (this.#deadline <= Date.now()) return deadlineError();
    if (this.#shutdownSignal?.aborted === true) return this.#shutdownSignal.reason;
    return undefined;
  }

  /** Ends the context: aborts the signal (if anyone made it) and stops its timer. */
  abort(reason: unknown): void {
    if (this.#reason !== undefined) return;
    this.#reason = reason;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    if (this.#onShutdown !== undefined) this.#shutdownSignal?.removeEventListener("abort", this.#onShutdown);
    this.#controller?.abort(reason);
  }

  /**
   * Request metadata as headers. Binary (`-bin`) values come back as base64,
   * the form connect-node hands a handler, so handlers read headers the same
   * way on both servers.
   */
  get requestHeader(): Headers {
    if (this.#requestHeader === undefined) {
      const headers = new Headers();
      const map = this.#call.metadata.toJSON(); // the internal arrays, no copies
      for (const key in map) {
        for (const value of map[key] ?? []) {
          headers.append(key, typeof value === "string" ? value : encodeBinaryHeader(value));
        }
      }
      this.#requestHeader = headers;
    }
    return this.#requestHeader;
  }

  /**
   * One request header, read straight from the metadata without building a
   * `Headers` (see `requestHeaderValue` in server/context.ts): the hot path
   * reads only `authorization`.
   */
  header(name: string): string | undefined {
    if (this.#requestHeader !== undefined) return this.#requestHeader.get(name) ?? undefined;
    const value = this.#call.metadata.get(name)[0];
    return typeof value === "string" ? value : undefined;
  }

  get responseHeader(): Headers {
    return (this.#responseHeader ??= new Headers());
  }

  get responseTrailer(): Headers {
    return (this.#responseTrailer ??= new Headers());
  }

  /** The response headers, if the handler set any (undefined if it never asked). */
  get responseHeaderIfSet(): Headers | undefined {
    return this.#responseHeader;
  }

  /** The response trailers, if the handler set any (undefined if it never asked). */
  get responseTrailerIfSet(): Headers | undefined {
    return this.#responseTrailer;
  }

  /** Carries the caller's address under {@link peerKey} and the request id under {@link requestIdKey}. */
  get values(): ContextValues {
    return (this.#values ??= createContextValues().set(peerKey, peerAddress(this.#call.getPeer())).set(requestIdKey, this.requestId));
  }

  get url(): string {
    return `http://${this.#call.getHost()}${this.#call.getPath()}`;
  }
}

/**
 * grpc-js formats the peer as `address:port` (IPv6 without brackets), or
 * "unknown". Keep only the address, matching `req.socket.remoteAddress` on
 * the HTTP server.
 */
function peerAddress(peer: string): string | undefined {
  if (peer === "unknown") return undefined;
  const colon = peer.lastIndexOf(":");
  return colon > 0 && colon < peer.length - 1 ? peer.slice(0, colon) : peer;
}

// Made per use rather than shared: a ConnectError carries mutable metadata,
// so one handler's change to it must not reach another call.
function cancelledError(): ConnectError {
  return new ConnectError("the client cancelled the call", Code.Canceled);
}

function deadlineError(): ConnectError {
  return new ConnectError("the operation timed out", Code.DeadlineExceeded);
}
