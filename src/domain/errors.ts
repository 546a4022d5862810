/**
 * The failures the domain can report. Each has a stable `code`; `rpc/errors.ts`
 * is the single table that turns a code into a gRPC/Connect status.
 *
 * The message is shown to the caller, so it must be actionable and must never
 * hold a token, a digest or an internal detail; put those in `cause`.
 */
export type TokenErrorCode =
  | "invalid_argument"
  | "unauthenticated"
  | "permission_denied"
  | "not_found"
  | "resource_exhausted"
  | "failed_precondition"
  | "unavailable"
  | "deadline_exceeded"
  | "internal";

/** A domain failure with a stable code and a caller-safe message. */
export class TokenError extends Error {
  override readonly name = "TokenError";

  /**
   * @param code what kind of failure it is
   * @param message what the caller can act on; no secrets, no internals
   * @param options.cause the underlying error, for logs only
   * @param options.field the request field at fault, for invalid_argument
   */
  constructor(
    readonly code: TokenErrorCode,
    message: string,
    options: { cause?: unknown; field?: string } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.field = options.field;
  }

  /** The request field at fault, when there is one. */
  readonly field: string | undefined;
}

/** Shorthand for an invalid_argument error naming the field and the rule. */
export function invalidArgument(field: string, rule: string): TokenError {
  return new TokenError("invalid_argument", `${field}: ${rule}`, { field });
}
