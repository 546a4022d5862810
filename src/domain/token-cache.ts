import { millisOf, msOf, secondsOf } from "./packed-time.js";


/** Cache limits and freshness rules. */
export interface TokenCacheOptions<V> {
  /** Most positive entries held; beyond it the least recently used go first. */
  readonly maxEntries: number;
  /** Most estimated bytes of positive entries held (records vary: metadata and lists are bounded but not tiny). */
  readonly maxBytes: number;
  /**
   * How old an answer may be when nothing has confirmed it since: an entry is
   * served only while `now - max(fetchedAt, channelVerifiedAt) <= stalenessMs`.
   * With the revocation channel alive, its heartbeat keeps confirming every
   * entry; with it cut, entries age out within this bound and lookups read
   * through to the store.
   */
  readonly stalenessMs: number;
  /** How long "no such token" is remembered, so garbage does not reach the store on every call. */
  readonly negativeTtlMs: number;
  /**
   * Most negative answers held, in a segment of their own (oldest first out; expired ones leave as new ones come),
   * so a flood of unknown tokens only ever evicts other unknown tokens, never
   * a known one. Default: a tenth of `maxEntries`, at least 1. Not counted in
   * `maxEntries` or `maxBytes` (each costs a few hundred bytes).
   */
  readonly negativeMaxEntries?: number;
  /** Which values are negative answers (kept only `negativeTtlMs`). Default: null. */
  readonly isNegative?: (value: V) => boolean;
  /**
   * Estimated bytes of an entry, for the memory bound. Must give the same
   * answer for the same key and value every time: it is asked again when the
   * entry leaves (entries do not carry their size, to stay small).
   */
  readonly sizeOf: (key: string, value: V) => number;
  /**
   * Called when an entry leaves the cache one by one (evicted, replaced, or
   * pushed out by the bounds), not on `clear()`: lets an owner keep a
   * secondary index (legacy JWTs by `jti`) exactly as large as the cache.
   */
  readonly onDrop?: (key: string, value: V) => void;
}

/** One cached answer (null, by default, for "no such token"). */
export interface CacheEntry<V> {
  readonly record: V;
  /** Kept only `negativeTtlMs`. */
  readonly negative: boolean;
  /** When it was read from the store (ms since the epoch). */
  readonly fetchedAt: number;
}

const USED = 1;
const NEGATIVE = 2;
/** The ms part of `fetchedAt` sits above the two flag bits. */
const MILLIS_SHIFT = 2;

/**
 * An entry as held, one per cached token: three fields, each a pointer or an
 * integer V8 keeps in the field itself (see `packed-time.ts`), so an entry is
 * 48 bytes and no HeapNumber. Its size estimate is not kept: `sizeOf` is
 * asked again when it leaves.
 */
class Entry<V> implements CacheEntry<V> {
  /** `fetchedAt`'s whole seconds since 2020. */
  readonly atS: number;
  /** USED | NEGATIVE | `fetchedAt`'s ms part << MILLIS_SHIFT. */
  bits: number;

  constructor(
    readonly record: V,
    fetchedAt: number,
    negative: boolean,
  ) {
    this.atS = secondsOf(fetchedAt);
    this.bits = (millisOf(fetchedAt) << MILLIS_SHIFT) | (negative ? NEGATIVE : 0);
  }

  get negative(): boolean {
    return (this.bits & NEGATIVE) !== 0;
  }

  get fetchedAt(): number {
    return msOf(this.atS, this.bits >>> MILLIS_SHIFT);
  }
}

/**
 * A cache of introspection answers keyed by token digest: the replica's own
 * (see `createIntrospectionCache`) and the gateway client's.
 *
 * - Bounded: at most `maxEntries`, evicting with a second-chance clock over
 *   the Map's insertion order, so a hit only sets a bit (no reordering, no
 *   allocation) and eviction is amortised O(1).
 * - Push-invalidated: `evict(key)` on a revocation notice.
 * - Fenced: `fence()` before a store read and `put(…, fence)` after it; any
 *   eviction or flush in between bumps the generation and the result is not
 *   cached, so a lookup that started before a revocation can never put the
 *   revoked token back.
 * - Bounded staleness: see `TokenCacheOptions.stalenessMs`.
 * - Segmented: negative answers live in their own bounded map (see
 *   `negativeMaxEntries`), so unknown tokens cannot push known ones out.
 * - Coalescing: `load` shares one store read among identical concurrent misses.
 */
export class TokenCache<V> {
  /** Positive answers: the second-chance clock runs over these alone. */
  private readonly entries = new Map<string, Entry<V>>();
  /** Negative answers, oldest first: a flood of garbage evicts only garbage. */
  private readonly negatives = new Map<string, Entry<V>>();
  /** Store reads in flight by key, with the generation they started in. */
  private readonly loading = new Map<string, { readonly generation: number; readonly promise: Promise<V> }>();
  private readonly negativeMax: number;
  private negativeBytes = 0;
  private coalesced = 0;
  private readonly isNegative: (value: V) => boolean;
  private readonly sizeOf: (key: string, value: V) => number;
  private bytes = 0;
  private generation = 0;
  /** Until when (ms) every revocation is known to have been received. */
  private channelVerifiedAt = 0;
  private hits = 0;
  private misses = 0;
  private evictions = 0;

  constructor(private readonly options: TokenCacheOptions<V>) {
    this.isNegative = options.isNegative ?? ((value) => value === null);
    this.sizeOf = options.sizeOf;
    this.negativeMax = Math.max(1, options.negativeMaxEntries ?? Math.floor(options.maxEntries / 10));
  }

  /** The entry for a digest if it may be served at `nowMs`; undefined means "ask the store". */
  get(key: string, nowMs: number): CacheEntry<V> | undefined {
    const entry = this.entries.get(key) ?? this.negatives.get(key);
    if (entry !== undefined) {
      const fetchedAt = entry.fetchedAt;
      const confirmed = fetchedAt > this.channelVerifiedAt ? fetchedAt : this.channelVerifiedAt;
      const fresh = entry.negative ? nowMs - fetchedAt <= this.options.negativeTtlMs : nowMs - confirmed <= this.options.stalenessMs;
      if (fresh) {
        entry.bits |= USED;
        this.hits++;
        return entry;
      }
    }
    this.misses++;
    return undefined;
  }

  /** The value `get` would serve at `nowMs`, without counting a hit or a miss or marking it used. */
  peek(key: string, nowMs: number): V | undefined {
    const entry = this.entries.get(key) ?? this.negatives.get(key);
    if (entry === undefined) return undefined;
    const fetchedAt = entry.fetchedAt;
    const confirmed = fetchedAt > this.channelVerifiedAt ? fetchedAt : this.channelVerifiedAt;
    const fresh = entry.negative ? nowMs - fetchedAt <= this.options.negativeTtlMs : nowMs - confirmed <= this.options.stalenessMs;
    return fresh ? entry.record : undefined;
  }

  /** The generation to hand back to `put` after reading the store. */
  fence(): number {
    return this.generation;
  }

  /**
   * Caches a store answer read under `fence`. Does nothing when anything was
   * evicted or flushed since (the answer may predate a revocation).
   */
  put(key: string, record: V, fence: number, fetchedAt: number): void {
    if (fence !== this.generation) return;
    const bytes = this.sizeOf(key, record);
    this.remove(key);
    if (this.isNegative(record)) {
      // Expired answers are never served again, and an unknown token is
      // rarely asked about twice: drop them from the front as new ones come,
      // so the segment holds what the last `negativeTtlMs` brought, not
      // `negativeMax` dead entries (a flood of random tokens filled it to the
      // cap and kept it there). Safe: `fetchedAt` is at most now, so an entry
      // that old is expired by now.
      for (const [oldKey, old] of this.negatives) {
        if (fetchedAt - old.fetchedAt <= this.options.negativeTtlMs) break;
        this.remove(oldKey);
        this.evictions++;
      }
      // Oldest out first: negative answers live briefly, recency says little.
      while (this.negatives.size >= this.negativeMax) {
        const oldest = this.negatives.keys().next().value!;
        this.remove(oldest);
        this.evictions++;
      }
      this.negatives.set(key, new Entry(record, fetchedAt, true));
      this.negativeBytes += bytes;
      return;
    }
    while (this.entries.size > 0 && (this.entries.size >= this.options.maxEntries || this.bytes + bytes > this.options.maxBytes)) this.evictOne();
    this.entries.set(key, new Entry(record, fetchedAt, false));
    this.bytes += bytes;
  }

  /**
   * The answer for a key that `get` did not serve: read by `loader` and cached
   * under a fence taken now. Identical misses while that read is in flight
   * share it (one store read for a burst of the same unknown token), unless an
   * eviction or flush happened since it started: a read that may predate a
   * revocation is never handed to a request that arrived after it. The
   * loader may say its answer is proven only up to an earlier time (a read
   * replica's, see domain/replica-reads.ts): it is cached as of then.
   */
  load(key: string, fetchedAt: number, loader: (provenAt: (atMs: number) => void) => Promise<V>): Promise<V> {
    const pending = this.loading.get(key);
    if (pending !== undefined && pending.generation === this.generation) {
      this.coalesced++;
      return pending.promise;
    }
    const fence = this.generation;
    const settled = () => {
      if (this.loading.get(key)?.promise === promise) this.loading.delete(key);
    };
    // Callbacks run later, so `promise` is assigned by the time they read it.
    let asOf = fetchedAt;
    const provenAt = (atMs: number) => {
      if (atMs < asOf) asOf = atMs;
    };
    const promise: Promise<V> = Promise.resolve()
      .then(() => loader(provenAt))
      .then(
        (value) => {
          settled();
          this.put(key, value, fence, asOf);
          return value;
        },
        (error: unknown) => {
          settled();
          throw error;
        },
      );
    this.loading.set(key, { generation: fence, promise });
    return promise;
  }

  /** Drops one digest (a revocation notice) and fences in-flight lookups. */
  evict(key: string): void {
    this.generation++;
    if (this.remove(key)) this.evictions++;
  }

  /**
   * Drops one entry that can no longer be served (expired), without fencing
   * lookups in flight: nothing was revoked.
   */
  drop(key: string): void {
    if (this.remove(key)) this.evictions++;
  }

  /** Drops everything (the revocation channel was lost or came back) and fences in-flight lookups. */
  clear(): void {
    this.generation++;
    this.evictions += this.entries.size + this.negatives.size;
    this.entries.clear();
    this.negatives.clear();
    this.bytes = 0;
    this.negativeBytes = 0;
  }

  /** Records that every revocation committed before `atMs` has been received (a heartbeat came back). */
  confirmUntil(atMs: number): void {
    if (atMs > this.channelVerifiedAt) this.channelVerifiedAt = atMs;
  }

  /** Counters for metrics and the benchmark. */
  stats(): { size: number; bytes: number; hits: number; misses: number; evictions: number; negatives: number; coalesced: number; loading: number } {
    return {
      size: this.entries.size + this.negatives.size,
      bytes: this.bytes + this.negativeBytes,
      hits: this.hits,
      misses: this.misses,
      evictions: this.evictions,
      negatives: this.negatives.size,
      coalesced: this.coalesced,
      loading: this.loading.size,
    };
  }

  private remove(key: string): boolean {
    const entry = this.entries.get(key);
    if (entry !== undefined) {
      this.entries.delete(key);
      this.bytes -= this.sizeOf(key, entry.record);
      this.options.onDrop?.(key, entry.record);
      return true;
    }
    const negative = this.negatives.get(key);
    if (negative === undefined) return false;
    this.negatives.delete(key);
    this.negativeBytes -= this.sizeOf(key, negative.record);
    this.options.onDrop?.(key, negative.record);
    return true;
  }

  private evictOne(): void {
    for (const [key, entry] of this.entries) {
      this.entries.delete(key);
      if ((entry.bits & USED) === 0) {
        this.bytes -= this.sizeOf(key, entry.record);
        this.evictions++;
        this.options.onDrop?.(key, entry.record);
        return;
      }
      // Second chance: recently used, so it goes to the back of the line.
      entry.bits &= ~USED;
      this.entries.set(key, entry);
    }
  }
}
