import { ConcurrencyLimit, type LimitName } from "./rate-limit.js";
import type { BulkRevocation, CascadeOutcome, LifecycleStore, NewToken, Revocation, RevokeOneOutcome, RevokeOutcome, RevokeTarget, TokenListQuery, TokenSelector, TokenStore } from "./ports.js";
import type { Environment } from "./environment.js";
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

  revokeOne(target: RevokeTarget, revocation: { readonly by: string; readonly reason: string; readonly at: Date }): Promise<RevokeOneOutcome> {
    return this.gate.run("", () => this.inner.revokeOne(target, revocation));
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

  /**
   * The rotation and bulk-revocation store behind the same gate: each call
   * (one bulk batch, one scheduler pass) takes a slot like any write, so a
   * 100,000-token revocation interleaves with issues and revokes instead of
   * holding the pool, and the hot path's lookups never wait for it.
   */
  lifecycle(inner: LifecycleStore): LifecycleStore {
    const gate = this.gate;
    return {
      linkRotation: (oldId: string, successorId: string, link: { readonly scheduledRevokeAt: Date | null; readonly revokeOnSuccessorUse: boolean }) =>
        gate.run("", () => inner.linkRotation(oldId, successorId, link)),
      dueRevocations: (environment: Environment, now: Date, limit: number) => gate.run("", () => inner.dueRevocations(environment, now, limit)),
      revokeMany: (ids: readonly string[], revocation: Revocation, options?: { readonly dueBy?: Date }) => gate.run("", () => inner.revokeMany(ids, revocation, options)),
      usedRotations: (environment: Environment, limit: number) => gate.run("", () => inner.usedRotations(environment, limit)),
      markSuccessorUsed: (predecessorId: string, successorId: string, at: Date) => gate.run("", () => inner.markSuccessorUsed(predecessorId, successorId, at)),
      matching: (environment: Environment, selector: TokenSelector, limit: number) => gate.run("", () => inner.matching(environment, selector, limit)),
      createBulkRevocation: (operation: BulkRevocation, leaseUntil: Date) => gate.run("", () => inner.createBulkRevocation(operation, leaseUntil)),
      bulkRevokeBatch: (id: string, at: Date, limit: number, leaseUntil: Date) => gate.run("", () => inner.bulkRevokeBatch(id, at, limit, leaseUntil)),
      finishBulkRevocation: (id: string, at: Date) => gate.run("", () => inner.finishBulkRevocation(id, at)),
      claimBulkRevocation: (environment: Environment, now: Date, leaseUntil: Date) => gate.run("", () => inner.claimBulkRevocation(environment, now, leaseUntil)),
    };
  }
}
