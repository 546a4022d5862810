import { PeriodicBatcher } from "./batcher.js";
import type { LegacyJwtStore, LegacyUsage, Logger, TokenStore, UsageRecorder } from "./ports.js";

/**
 * Batches `last_used_at` updates: introspection only notes the time in a Map;
 * one statement per interval writes them all, and `stop()` writes the rest on
 * a clean shutdown.
 */
export class LastUsedRecorder extends PeriodicBatcher<Date> implements UsageRecorder {
  constructor(store: TokenStore, log: Logger, intervalMs: number) {
    super({
      intervalMs,
      maxPending: 100_000,
      write: (batch) => store.touchLastUsed(batch),
      merge: (pending, next) => (next.getTime() > pending.getTime() ? next : pending),
      onError: (error, detail) => log.warn({ err: error, ...detail }, "last-used times could not be written yet; will retry"),
    });
  }

  /** Notes a use. */
  note(tokenId: string, at: Date): void {
    this.add(tokenId, at);
  }
}

/**
 * Counts legacy JWT introspections per subject, batched like last-use times,
 * so operators can see who still has to migrate.
 */
export class LegacyUsageRecorder extends PeriodicBatcher<LegacyUsage> {
  constructor(store: LegacyJwtStore, log: Logger, intervalMs: number) {
    super({
      intervalMs,
      maxPending: 100_000,
      write: (batch) => store.recordUsage([...batch.values()]),
      merge: (a, b) => ({ subject: a.subject, count: a.count + b.count, firstSeen: a.firstSeen < b.firstSeen ? a.firstSeen : b.firstSeen, lastSeen: a.lastSeen > b.lastSeen ? a.lastSeen : b.lastSeen }),
      onError: (error, detail) => log.warn({ err: error, ...detail }, "legacy JWT usage could not be written yet; will retry"),
    });
  }

  /** Notes one legacy introspection. */
  note(subject: string, at: Date): void {
    this.add(subject, { subject, count: 1, firstSeen: at, lastSeen: at });
  }
}
