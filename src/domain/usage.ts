import { PeriodicBatcher } from "./batcher.js";
import type { Logger, TokenStore, UsageRecorder } from "./ports.js";

/**
 * Batches `last_used_at` updates: introspection only notes the time in a Map;
 * one statement per interval writes them all, and `stop()` writes the rest on
 * a clean shutdown.
 */
export class LastUsedRecorder implements UsageRecorder {
  private readonly batcher: PeriodicBatcher<Date>;

  constructor(store: TokenStore, log: Logger, intervalMs: number) {
    this.batcher = new PeriodicBatcher<Date>({
      intervalMs,
      maxPending: 100_000,
      write: (batch) => store.touchLastUsed(batch),
      merge: (pending, next) => (next.getTime() > pending.getTime() ? next : pending),
      onError: (error, detail) => log.warn({ err: error, ...detail }, "last-used times could not be written yet; will retry"),
    });
  }

  /** Notes a use. */
  note(tokenId: string, at: Date): void {
    this.batcher.add(tokenId, at);
  }

  /** Writes what is pending now. */
  flush(): Promise<void> {
    return this.batcher.flush();
  }

  /** Starts the periodic flush. */
  start(): void {
    this.batcher.start();
  }

  /** Stops and writes what is left. */
  stop(): Promise<void> {
    return this.batcher.stop();
  }
}
