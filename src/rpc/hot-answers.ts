/**
 * Built answers kept for the hottest tokens, keyed by the object the cache
 * hands out on every hit (a cached token's claims, or a shared inactive
 * result), so a repeat call re-sends a message built once.
 *
 * Weakly keyed: an answer lives no longer than its key. A token's claims
 * live as long as its cache entry, so when the cache lets a token go
 * (evicted, revoked, pushed out by newer ones) its answer, its stamped copy
 * and its encoded bytes go with it. A strong Map here held every token's
 * ~2 KB answer until `max` newer ones pushed it out: the soak's heap grew by
 * that much per token issued, whatever the cache's own bound.
 *
 * Also bounded: at most `max` answers, oldest out first (a token that is
 * still hot comes straight back), so a cache far larger than the hot set
 * does not mean an answer per cached token.
 */
export class HotAnswers<K extends object, V> {
  private readonly answers = new WeakMap<K, V>();
  /** Insertion order as a ring of weak references: the oldest is overwritten. */
  private readonly order: (WeakRef<K> | undefined)[];
  private next = 0;

  constructor(private readonly max: number) {
    this.order = new Array<WeakRef<K> | undefined>(Math.max(1, max));
  }

  /** The answer kept for `key`, if any. */
  get(key: K): V | undefined {
    return this.answers.get(key);
  }

  /** Keeps `value` for `key`, dropping the oldest kept answer when full. */
  set(key: K, value: V): void {
    const oldest = this.order[this.next]?.deref();
    if (oldest !== undefined) this.answers.delete(oldest);
    this.order[this.next] = new WeakRef(key);
    this.next = (this.next + 1) % this.order.length;
    this.answers.set(key, value);
  }

  /** How many answers are kept now (their keys still alive): for tests and metrics. */
  size(): number {
    let held = 0;
    for (const ref of this.order) {
      const key = ref?.deref();
      if (key !== undefined && this.answers.has(key)) held++;
    }
    return held;
  }
}
