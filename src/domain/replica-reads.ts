/**
 * Cache misses read from a streaming read replica (`DATABASE_READ_URL`),
 * without ever answering "active" for a token whose revocation this replica
 * of the service has already applied.
 *
 * The hazard: a revocation commits on the primary at log position P, its
 * notice reaches this process (the cache entry is evicted, the hub's
 * position becomes P), and then a miss for that token is read from a
 * standby whose replay is still before P: the standby shows the row
 * unrevoked. Cached or returned, that answer would undo the revocation.
 *
 * The revocation log makes it checkable. A replica read returns the row
 * together with the standby's own revocation log head (the counter row of
 * migration 0009), from the same statement and so the same snapshot; since
 * positions commit in order, that snapshot holds every revocation up to its
 * head. The answer is used only when that head is at or beyond the position
 * the hub has applied *after* the read returned, so it reflects every
 * revocation this process has acted on. Revocations the hub has not applied
 * yet are covered exactly as for a primary read: their eviction bumps the
 * cache's generation and the answer is not cached (`TokenCache.load`).
 *
 * Freshness: a primary read at time T reflects every revocation committed
 * before T. A replica read is only proven up to the hub's last confirmation
 * C (every revocation committed before C has been applied, and the standby
 * holds all of those), so the answer is handed to the cache as of C
 * (`provenAt`), and refused (read from the primary instead) when C is
 * already older than the staleness bound. So cached answers age exactly as
 * before: never served past `CACHE_STALENESS` since the last proof.
 *
 * No row on the replica is read again from the primary: a token issued a
 * moment ago may not have been replayed yet, and "unknown" is cached.
 * A replica that fails is left alone (misses go to the primary) until a
 * background probe reaches it again. The highest log head any replica read
 * has shown is remembered: while the hub's position is beyond it (a
 * revocation applied here that the replica has not been seen to hold), at
 * most one miss per `lagRetryMs` tries the replica and the rest go straight
 * to the primary, so a standby that stays behind costs a few wasted reads a
 * second, not one per miss; the first read that shows it caught up sends
 * every miss back to it.
 */
import type { TokenRecord } from "./model.js";
import type { Logger, TokenStore } from "./ports.js";
import type { RevocationMark } from "./revocation-hub.js";

/** What a read replica answers for one digest. */
export interface ReplicaLookup {
  /** The token, if the replica has it. */
  readonly record: TokenRecord | undefined;
  /** The revocation log head in the replica's snapshot of that same read. */
  readonly position: number;
}

/** Digest lookups on a streaming read replica (`storage/replica-reads.ts`). Failures are `TokenError`s. */
export interface ReplicaReads {
  findByDigest(digest: Uint8Array): Promise<ReplicaLookup>;
  /** Resolves when the replica answers a trivial query. */
  ping(): Promise<void>;
}

/** What became of one miss, for metrics: `served` by the replica, anything else read from the primary. */
export type ReplicaReadOutcome = "served" | "lagging" | "unconfirmed" | "not_found" | "failed" | "skipped";

/** All outcomes, for metrics. */
export const REPLICA_READ_OUTCOMES: readonly ReplicaReadOutcome[] = Object.freeze(["served", "lagging", "unconfirmed", "not_found", "failed", "skipped"]);

/** Options of {@link ReplicaReadRouter}. */
export interface ReplicaReadOptions {
  /** `CACHE_STALENESS`: a replica answer must be proven within it. */
  readonly stalenessMs: number;
  /** How often an unreachable replica is probed (default 1 s). */
  readonly probeMs?: number;
  /** While the replica is not known to hold every revocation applied here, at most one miss per this tries it (default 100 ms). */
  readonly lagRetryMs?: number;
}

/**
 * Routes digest lookups: to the replica when its answer can be proven
 * current, else to the primary. Never answers UNAVAILABLE while the primary
 * answers.
 */
export class ReplicaReadRouter {
  private readonly counts = new Map<ReplicaReadOutcome, number>(REPLICA_READ_OUTCOMES.map((o) => [o, 0]));
  private down = false;
  private probe: NodeJS.Timeout | undefined;
  /** The highest revocation log head a replica read has shown: the replica holds every revocation up to it. */
  private replicaHead = 0;
  /** When a miss last tried the replica while it was not known to be caught up. */
  private lastBehindTry = Number.NEGATIVE_INFINITY;
  private stopped = false;

  /**
   * @param replica the replica's digest lookups
   * @param primary the primary's digest lookup
   * @param revocations the hub: the position applied and its last confirmation
   */
  constructor(
    private readonly replica: ReplicaReads,
    private readonly primary: (digest: Uint8Array) => Promise<TokenRecord | undefined>,
    private readonly revocations: { mark(): RevocationMark },
    private readonly options: ReplicaReadOptions,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** Misses by outcome since start, for metrics. */
  stats(): Readonly<Record<ReplicaReadOutcome, number>> {
    return Object.fromEntries(this.counts) as Record<ReplicaReadOutcome, number>;
  }

  /** Whether the replica is being avoided as unreachable. */
  get replicaDown(): boolean {
    return this.down;
  }

  /**
   * The token with this digest, read from the replica when provably
   * current, else from the primary. `provenAt` is told how far back (ms) a
   * replica answer is proven (see the file comment); a primary answer is
   * current, so it is not called.
   */
  async findByDigest(digest: Uint8Array, provenAt?: (atMs: number) => void): Promise<TokenRecord | undefined> {
    const startedAt = this.now();
    if (this.down) return this.fromPrimary(digest, "skipped");
    const before = this.revocations.mark();
    // Checked before as well as after: no replica read when its answer could not be used anyway.
    if (startedAt - before.confirmedAt > this.options.stalenessMs) return this.fromPrimary(digest, "unconfirmed");
    if (before.position > this.replicaHead) {
      // Not known to hold a revocation applied here: one miss at a time finds out.
      if (startedAt - this.lastBehindTry < (this.options.lagRetryMs ?? 100)) return this.fromPrimary(digest, "skipped");
      this.lastBehindTry = startedAt;
    }
    let read: ReplicaLookup;
    try {
      read = await this.replica.findByDigest(digest);
    } catch (error) {
      this.lost(error);
      return this.fromPrimary(digest, "failed");
    }
    if (read.position > this.replicaHead) this.replicaHead = read.position;
    if (read.record === undefined) return this.fromPrimary(digest, "not_found");
    // After the read: the position now covers every notice this process has acted on.
    const mark = this.revocations.mark();
    if (read.position < mark.position) return this.fromPrimary(digest, "lagging");
    if (this.now() - mark.confirmedAt > this.options.stalenessMs) return this.fromPrimary(digest, "unconfirmed");
    provenAt?.(mark.confirmedAt);
    this.count("served");
    return read.record;
  }

  /** Stops probing an unreachable replica. */
  stop(): void {
    this.stopped = true;
    if (this.probe) clearTimeout(this.probe);
    this.probe = undefined;
  }

  private fromPrimary(digest: Uint8Array, outcome: Exclude<ReplicaReadOutcome, "served">): Promise<TokenRecord | undefined> {
    this.count(outcome);
    return this.primary(digest);
  }

  private count(outcome: ReplicaReadOutcome): void {
    this.counts.set(outcome, (this.counts.get(outcome) ?? 0) + 1);
  }

  /** The replica failed: misses go to the primary until a probe reaches it again. */
  private lost(error: unknown): void {
    if (this.down || this.stopped) return;
    this.down = true;
    this.log.warn({ err: error }, "read replica unreachable; cache misses are read from the primary until it answers again");
    const tick = () => {
      this.probe = setTimeout(() => {
        this.replica.ping().then(
          () => {
            if (this.stopped) return;
            this.down = false;
            this.probe = undefined;
            this.log.info({}, "read replica reachable again; cache misses are read from it");
          },
          () => {
            if (!this.stopped) tick();
          },
        );
      }, this.options.probeMs ?? 1_000);
      this.probe.unref();
    };
    tick();
  }
}

/**
 * The token store with its digest lookups routed through `router`; every
 * other method (every write, every other read) goes to `store`, the primary.
 * A proxy, as the tracing wrapper, so methods added to the port later pass
 * straight through.
 */
export function withReplicaReads(store: TokenStore, router: ReplicaReadRouter): TokenStore {
  const findByDigest = (digest: Uint8Array, provenAt?: (atMs: number) => void) => router.findByDigest(digest, provenAt);
  return new Proxy(store, {
    get: (target, property) => {
      if (property === "findByDigest") return findByDigest;
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === "function" ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
}
