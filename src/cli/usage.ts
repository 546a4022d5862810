/**
 * A mistake in how tokenctl was called: a missing or bad option or argument.
 * tokenctl answers it with exit code 64 (EX_USAGE). Its message must never
 * quote a token: callers build it from option names, not from values that
 * could be secrets.
 */
export class UsageError extends Error {
  override readonly name = "UsageError";
}
