import { ConcurrencyLimit, type LimitName } from "./rate-limit.js";
import type { CascadeOutcome, NewToken, RevokeOutcome, TokenListQuery, TokenStore } from "./ports.js";
import type { TokenRecord } from "./model.js";

/**
 * A `TokenStore` whose slow work (issue, revoke, list, lookups by id, the
 * last-used batch) runs at most `maxConcurrent` at a time, leaving the rest
 * of the connection pool to the hot path's digest lookups (and `ping`, which
 * readiness probes use), which pass straight through.
 *
 * Why: an issue holds a pooled connection for its whole statement, including
 * the wait on its subject's advisory lock, so 60 concurrent issues for one
 * subject held all 10 connections and introspection misses timed out waiting
 * for one (UNAVAILABLE). With the gate below the pool size, at most that
 * many connections ever serve writes; the excess waits here, in order, in a
 * bounded queue, and beyond it is refused with RESOURCE_EXHAUSTED.
 */
export class GatedTokenStore implements TokenStore {
  private readonly gate: ConcurrencyLimit;

  /**
   * @param maxConcurrent slow operations running at once; keep it below the pool size
   * @param maxQueued more waiting; beyond it, RESOURCE_EXHAUSTED
   */
  constructor(
    private readonly inner: TokenStore,
    options: { readonly maxConcurrent: number; readonly maxQueued: number; readonly onRefused?: (limit: LimitName) => void },
  ) {
    this.gate = new ConcurrencyLimit({
      maxRunning: options.maxConcurrent,
      maxQueued: options.maxQueued,
      limit: "store_writes",
      message: "the service is busy with other writes; retry shortly",
      retryAfterMs: 1000,
      ...(options.onRefused ? { onRefused: options.onRefused } : {}),
    });
  }

  /** Slow operations running and waiting now. */
  stats(): { running: number; queued: number } {
    const { running, queued } = this.gate.stats();
    return { running, queued };
  }

  insert(token: NewToken, limits: { readonly maxActivePerSubject: number; readonly now: Date }): Promise<TokenRecord> {
    return this.gate.run("", () => this.inner.insert(token, limits));
  }

  /** The hot path: never gated. */
  findByDigest(digest: Uint8Array, provenAt?: (atMs: number) => void): Promise<TokenRecord | undefined> {
    return this.inner.findByDigest(digest, provenAt);
  }

  findById(id: string): Promise<TokenRecord | undefined> {
    return this.gate.run("", () => this.inner.findById(id));
  }

  revoke(id: string, revocation: { readonly by: string; readonly reason: string; readonly at: Date }): Promise<RevokeOutcome | undefined> {
    return this.gate.run("", () => this.inner.revoke(id, revocation));
  }

  revokeCascade(id: string, revocation: { readonly by: string; readonly reason: string; readonly at: Date }): Promise<CascadeOutcome | undefined> {
    return this.gate.run("", () => this.inner.revokeCascade(id, revocation));
  }

  list(query: TokenListQuery): Promise<TokenRecord[]> {
    return this.gate.run("", () => this.inner.list(query));
  }

  touchLastUsed(entries: ReadonlyMap<string, Date>): Promise<void> {
    return this.gate.run("", () => this.inner.touchLastUsed(entries));
  }

  count(): Promise<number> {
    return this.gate.run("", () => this.inner.count());
  }

  /** Readiness must see the store, not the queue: never gated. */
  ping(): Promise<void> {
    return this.inner.ping();
  }
}
