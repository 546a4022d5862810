/** Limits and freshness rules of an {@link AnswerCache}. */
export interface AnswerCacheOptions<V> {
  /** Most positive answers held; beyond it the least recently used go first. */
  readonly maxEntries: number;
  /**
   * How old a positive answer may be when nothing has confirmed it since: it
   * is served only while `now - max(fetchedAt, confirmedUntil) <= stalenessMs`.
   */
  readonly stalenessMs: number;
  /** How long a negative answer is reused (counted from when it was fetched). */
  readonly negativeTtlMs: number;
  /** Most negative answers held, oldest first out. Default: a tenth of `maxEntries`, at least 1. */
  readonly negativeMaxEntries?: number;
  /** Which answers are negative (kept only `negativeTtlMs`, in their own segment). */
  readonly isNegative: (value: V) => boolean;
}

interface Entry<V> {
  readonly record: V;
  readonly fetchedAt: number;
  /** Second-chance bit for the eviction clock: set on every hit. */
  used: boolean;
}

/**
 * The gateway client's cache of introspection answers, keyed by token digest.
 * The client's own (it must not depend on the service's code), and small:
 *
 * - Bounded: at most `maxEntries` positive answers, evicted with a
 *   second-chance clock over the Map's insertion order (a hit only sets a bit).
 *   Negative answers live in a segment of their own, so a flood of unknown
 *   tokens never pushes a known one out.
 * - Push-invalidated: `evict(key)` on a revocation, `clear()` on a reset.
 * - Fenced: take `fence()` before asking the service and pass it to `put`;
 *   any eviction or clear in between bumps the generation and the answer is
 *   not cached, so a call that started before a revocation arrived can never
 *   put the revoked token back.
 * - Bounded staleness: see {@link AnswerCacheOptions.stalenessMs};
 *   `confirmUntil` moves the proof forward when a heartbeat arrives.
 */
export class AnswerCache<V> {
  private readonly positives = new Map<string, Entry<V>>();
  private readonly negatives = new Map<string, Entry<V>>();
  private readonly negativeMax: number;
  private generation = 0;
  /** Until when (ms since the epoch) every revocation is known to have been heard. */
  private confirmedUntil = 0;
  private hits = 0;
  private misses = 0;
  private evictions = 0;

  constructor(private readonly options: AnswerCacheOptions<V>) {
    this.negativeMax = Math.max(1, options.negativeMaxEntries ?? Math.floor(options.maxEntries / 10));
  }

  /** The answer for a digest if it may be served at `nowMs`; undefined means "ask the service". */
  get(key: string, nowMs: number): V | undefined {
    const positive = this.positives.get(key);
    if (positive !== undefined) {
      const confirmed = positive.fetchedAt > this.confirmedUntil ? positive.fetchedAt : this.confirmedUntil;
      if (nowMs - confirmed <= this.options.stalenessMs) {
        positive.used = true;
        this.hits++;
        return positive.record;
      }
    } else {
      const negative = this.negatives.get(key);
      if (negative !== undefined && nowMs - negative.fetchedAt <= this.options.negativeTtlMs) {
        this.hits++;
        return negative.record;
      }
    }
    this.misses++;
    return undefined;
  }

  /** The generation to hand back to `put` after asking the service. */
  fence(): number {
    return this.generation;
  }

  /** Caches an answer fetched under `fence`; does nothing if anything was evicted or cleared since. */
  put(key: string, record: V, fence: number, fetchedAt: number): void {
    if (fence !== this.generation) return;
    this.positives.delete(key);
    this.negatives.delete(key);
    if (this.options.isNegative(record)) {
      while (this.negatives.size >= this.negativeMax) {
        this.negatives.delete(this.negatives.keys().next().value!);
        this.evictions++;
      }
      this.negatives.set(key, { record, fetchedAt, used: false });
      return;
    }
    while (this.positives.size >= this.options.maxEntries) this.evictOne();
    this.positives.set(key, { record, fetchedAt, used: false });
  }

  /** Drops one digest (a revocation) and fences calls in flight. */
  evict(key: string): void {
    this.generation++;
    if (this.positives.delete(key) || this.negatives.delete(key)) this.evictions++;
  }

  /** Drops everything (a reset: what was missed is unknown) and fences calls in flight. */
  clear(): void {
    this.generation++;
    this.evictions += this.positives.size + this.negatives.size;
    this.positives.clear();
    this.negatives.clear();
  }

  /** Records that every revocation committed before `atMs` has been heard (a heartbeat came). */
  confirmUntil(atMs: number): void {
    if (atMs > this.confirmedUntil) this.confirmedUntil = atMs;
  }

  /** Counters for metrics. */
  stats(): { size: number; negatives: number; hits: number; misses: number; evictions: number } {
    return { size: this.positives.size + this.negatives.size, negatives: this.negatives.size, hits: this.hits, misses: this.misses, evictions: this.evictions };
  }

  private evictOne(): void {
    for (const [key, entry] of this.positives) {
      this.positives.delete(key);
      if (!entry.used) {
        this.evictions++;
        return;
      }
      // Second chance: recently used, so it goes to the back of the line.
      entry.used = false;
      this.positives.set(key, entry);
    }
  }
}
