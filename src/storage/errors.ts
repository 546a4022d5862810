/**
 * Turns driver failures into domain errors, so that an outage is reported as
 * `unavailable` (retry) and never mistaken for "no such token", and so that no
 * driver text (SQL, parameters, host names) ever reaches a caller.
 */
import { TokenError } from "../domain/errors.js";

/** The caller-facing message of every outage. */
export const UNAVAILABLE_MESSAGE = "the token store is unavailable; try again";

/** The caller-facing message of every other store failure. */
export const INTERNAL_MESSAGE = "internal error";

/** Socket-level error codes meaning the database cannot be reached right now. */
const NETWORK_CODES: ReadonlySet<string> = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "EHOSTDOWN",
  "ENETUNREACH",
  "ENETDOWN",
  "ENOTFOUND",
  "EAI_AGAIN",
]);

/**
 * SQLSTATEs, outside the classes matched by prefix, that mean "try again":
 * shutdowns (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03
 * cannot_connect_now), 57014 query_canceled (statement_timeout),
 * 40001 serialization_failure, 40P01 deadlock_detected and 55P03
 * lock_not_available (lock_timeout). The last three are transient by
 * definition: the same statement succeeds when retried.
 */
const RETRYABLE_SQLSTATES: ReadonlySet<string> = new Set(["57P01", "57P02", "57P03", "57014", "40001", "40P01", "55P03"]);

/**
 * SQLSTATE classes meaning "try again": 08 connection exception,
 * 53 insufficient resources (too many connections, out of memory or disk).
 */
const RETRYABLE_SQLSTATE_CLASSES: readonly string[] = ["08", "53"];

/**
 * SQLSTATEs inside those classes that are not outages: 08P01
 * protocol_violation is what the server answers a statement it cannot take
 * (e.g. more than 65,535 bind parameters); sending it again fails the same
 * way, so it must not be retried as if the store were away.
 */
const NOT_RETRYABLE_SQLSTATES: ReadonlySet<string> = new Set(["08P01"]);

/**
 * Messages of errors that `pg`, `pg-pool`, Kysely and PGlite raise without a
 * code when a connection is lost, cannot be made in time, or the pool or
 * database has been closed. Matching on text is the only way to tell these
 * apart; they are compared exactly, never shown.
 */
const UNAVAILABLE_MESSAGES: ReadonlySet<string> = new Set([
  // pg Client
  "Connection terminated unexpectedly",
  "Connection terminated",
  "timeout expired",
  "Query read timeout",
  "Client has encountered a connection error and is not queryable",
  "Client was closed and is not queryable",
  // pg-pool
  "timeout exceeded when trying to connect",
  "Connection terminated due to connection timeout",
  "Cannot use a pool after calling end on the pool",
  // Kysely, after `destroy()`
  "driver has already been destroyed",
  // PGlite, after `close()`
  "PGlite is closed",
  "PGlite is closing",
]);

/** How deep to follow `cause` and `AggregateError.errors` chains. */
const MAX_DEPTH = 4;

function isUnavailable(err: unknown, depth: number): boolean {
  if (depth > MAX_DEPTH || typeof err !== "object" || err === null) return false;
  const { code, message } = err as { code?: unknown; message?: unknown };
  if (typeof code === "string") {
    if (NETWORK_CODES.has(code) || RETRYABLE_SQLSTATES.has(code)) return true;
    if (NOT_RETRYABLE_SQLSTATES.has(code)) return false;
    // SQLSTATEs are five characters; a class prefix must not match a Node code such as "08…".
    if (code.length === 5 && RETRYABLE_SQLSTATE_CLASSES.some((cls) => code.startsWith(cls))) return true;
  }
  if (typeof message === "string" && UNAVAILABLE_MESSAGES.has(message)) return true;
  // Node's happy-eyeballs connect (net.autoSelectFamily) reports one AggregateError for all addresses tried.
  if (err instanceof AggregateError && err.errors.some((inner) => isUnavailable(inner, depth + 1))) return true;
  // pg-pool wraps the socket error of a timed-out connect in `cause`.
  return "cause" in err && isUnavailable((err as { cause?: unknown }).cause, depth + 1);
}

/**
 * Maps any failure of a store call to a {@link TokenError}.
 *
 * A `TokenError` passes through unchanged. Connection refused, reset or
 * terminated, pool connect timeouts, a closed pool or database, and the
 * SQLSTATEs of outages (classes 08 and 53 except 08P01, 57P01-57P03, 57014 statement
 * timeout) and of transient conflicts (40001, 40P01, 55P03) become
 * `unavailable`; anything else becomes `internal`. The message is fixed text;
 * the driver error is kept only as `cause`, for logs.
 */
export function translateStoreError(err: unknown): TokenError {
  if (err instanceof TokenError) return err;
  if (isUnavailable(err, 0)) return new TokenError("unavailable", UNAVAILABLE_MESSAGE, { cause: err });
  return new TokenError("internal", INTERNAL_MESSAGE, { cause: err });
}

/**
 * Runs a store operation, translating whatever it throws with
 * {@link translateStoreError}.
 */
export async function translatingErrors<T>(operation: () => Promise<T>): Promise<T> {
  try {
    return await operation();
  } catch (err) {
    throw translateStoreError(err);
  }
}
