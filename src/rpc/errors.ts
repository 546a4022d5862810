import { Code, ConnectError } from "@connectrpc/connect";
import { TokenError, type TokenErrorCode } from "../domain/errors.js";
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
 */
export function toConnectError(error: unknown, log: Logger, method: string): ConnectError {
  if (error instanceof TokenError) {
    const code = STATUS_OF[error.code];
    if (code === Code.Internal || code === Code.Unavailable) {
      log.error({ err: error.cause ?? error, method, code: error.code }, error.message);
    }
    return new ConnectError(error.message, code, undefined, undefined, error);
  }
  if (error instanceof ConnectError) {
    // Raised by the framework itself (e.g. a cancelled call): already caller-safe.
    return error;
  }
  log.error({ err: error, method }, "unexpected failure in handler");
  return new ConnectError("internal error", Code.Internal, undefined, undefined, error);
}
