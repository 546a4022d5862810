/**
 * Folds writes that can wait (last-use times, legacy JWT usage) into one
 * batch per interval, so the request path only touches a Map. Security
 * events have their own recorder (`security-events.ts`), which also caps
 * rows per window and tells outages from refusals. Entries with
 * the same key are merged. A failed write is merged back and retried on the
 * next flush; `flush()` on shutdown writes whatever is left.
 */
export class PeriodicBatcher<V> {
  private pending = new Map<string, V>();
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;
  private dropped = 0;

  /**
   * @param options.intervalMs how often to write
   * @param options.write writes one batch; must be a single statement where it can
   * @param options.merge folds a new value into a pending one with the same key
   * @param options.maxPending distinct keys held at most; beyond it new keys are dropped (and counted) rather than growing without bound
   * @param options.onError told about a failed write and about drops; never throws
   */
  constructor(
    private readonly options: {
      readonly intervalMs: number;
      readonly write: (batch: ReadonlyMap<string, V>) => Promise<void>;
      readonly merge: (pending: V, next: V) => V;
      readonly maxPending: number;
      readonly onError: (error: unknown, detail: { readonly pending: number; readonly dropped: number }) => void;
    },
  ) {}

  /**
   * Adds or merges an entry. O(1), never throws, never waits.
   * @returns true when no entry with this key was pending (the first of a batch)
   */
  add(key: string, value: V): boolean {
    const pending = this.pending.get(key);
    if (pending !== undefined) {
      this.pending.set(key, this.options.merge(pending, value));
      return false;
    }
    if (this.pending.size < this.options.maxPending) this.pending.set(key, value);
    else this.dropped++;
    return true;
  }

  /** Entries waiting to be written. */
  get size(): number {
    return this.pending.size;
  }

  /** Starts the periodic flush. The timer does not keep the process alive. */
  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.flush(), this.options.intervalMs);
    this.timer.unref();
  }

  /** Stops the timer and writes what is pending. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.flush();
  }

  /** Writes everything pending now. Concurrent calls share one write, then run again if more arrived. */
  async flush(): Promise<void> {
    while (this.flushing) await this.flushing;
    if (this.pending.size === 0 && this.dropped === 0) return;
    this.flushing = this.writePending().finally(() => {
      this.flushing = undefined;
    });
    await this.flushing;
  }

  private async writePending(): Promise<void> {
    const batch = this.pending;
    this.pending = new Map();
    if (this.dropped > 0) {
      this.options.onError(new Error("batch buffer full"), { pending: batch.size, dropped: this.dropped });
      this.dropped = 0;
    }
    if (batch.size === 0) return;
    try {
      await this.options.write(batch);
    } catch (error) {
      // Put the batch back so that nothing is lost while the store is away.
      for (const [key, value] of batch) this.add(key, value);
      this.options.onError(error, { pending: this.pending.size, dropped: this.dropped });
    }
  }
}
