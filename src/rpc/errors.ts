import { Code, ConnectError } from "@connectrpc/connect";
import { TokenError, type TokenErrorCode } from "../domain/errors.js";
import { RateLimitedError, retryAfterSeconds } from "../domain/rate-limit.js";
import type { Logger } from "../domain/ports.js";

/** The single table from domain error codes to gRPC/Connect status codes. */
export const STATUS_OF: Readonly<Record<TokenErrorCode, Code>> = Object.freeze({
  invalid_argument: Code.InvalidArgument,
  unauthenticated: Code.Unauthenticated,
  permission_denied: Code.PermissionDenied,
  not_found: Code.NotFound,
  resource_exhausted: Code.ResourceExhausted,
  failed_precondition: Code.FailedPrecondition,
  unavailable: Code.Unavailable,
  deadline_exceeded: Code.DeadlineExceeded,
  internal: Code.Internal,
});

/**
 * Turns anything a handler threw into a `ConnectError` a caller may see. A
 * `TokenError` keeps its caller-safe message; anything else is logged with
 * its detail and answered as a bare `INTERNAL`, so no internals leak.
 *
 * A rate-limit refusal (RESOURCE_EXHAUSTED) says when to come back in two
 * response metadata entries, trailers on gRPC and headers on Connect:
 * `retry-after` (whole seconds, as HTTP's `Retry-After`, RFC 9110 §10.2.3)
 * and `grpc-retry-pushback-ms` (milliseconds), the server pushback that
 * gRPC clients with a retry policy honour (gRFC A6). Plain metadata rather
 * than `google.rpc.RetryInfo` in the status details: both servers pass
 * metadata through unchanged (the grpc-js adapter does not encode status
 * details), and any client reads it without the `google.rpc` protos.
 */
export function toConnectError(error: unknown, log: Logger, method: string): ConnectError {
  if (error instanceof TokenError) {
    const code = STATUS_OF[error.code];
    if (code === Code.Internal || code === Code.Unavailable) {
      log.error({ err: error.cause ?? error, method, code: error.code }, error.message);
    }
    if (error instanceof RateLimitedError) return new ConnectError(error.message, code, retryMetadata(error.retryAfterMs), undefined, error);
    return new ConnectError(error.message, code, undefined, undefined, error);
  }
  if (error instanceof ConnectError) {
    // Raised by the framework itself (e.g. a cancelled call): already caller-safe.
    return error;
  }
  log.error({ err: error, method }, "unexpected failure in handler");
  return new ConnectError("internal error", Code.Internal, undefined, undefined, error);
}

/** The metadata of a refusal that can be retried later (see {@link toConnectError}). */
export function retryMetadata(retryAfterMs: number): Headers {
  return new Headers({ "retry-after": String(retryAfterSeconds(retryAfterMs)), "grpc-retry-pushback-ms": String(Math.max(1, Math.ceil(retryAfterMs))) });
}
