import { randomUUID } from "node:crypto";
import { PeriodicBatcher } from "./batcher.js";
import type { SecurityEvent, SecurityEventRow } from "./model.js";
import type { Clock, DomainMetrics, EventSink, Logger, SecurityEventStore } from "./ports.js";

/**
 * The event sink: every event becomes a structured log line with a
 * `security_event` field at once (the first of a burst; repeats are counted),
 * and a stored row shortly after. Identical events within one window fold
 * into one row with a count, so a flood of bad tokens is a handful of writes.
 */
export class SecurityEventRecorder implements EventSink {
  private readonly batcher: PeriodicBatcher<SecurityEventRow>;

  /**
   * @param windowMs events identical in every field within this window share a row
   * @param metrics counts every event raised, folded or not
   */
  constructor(
    private readonly store: SecurityEventStore,
    private readonly log: Logger,
    private readonly clock: Clock,
    windowMs: number,
    private readonly metrics?: Pick<DomainMetrics, "securityEvent">,
  ) {
    this.batcher = new PeriodicBatcher<SecurityEventRow>({
      intervalMs: windowMs,
      maxPending: 10_000,
      write: (batch) => this.store.insertMany([...batch.values()]),
      merge: (pending, next) => ({ ...pending, lastSeen: next.lastSeen, count: pending.count + next.count }),
      onError: (error, detail) => this.log.error({ err: error, ...detail }, "security events could not be stored yet; will retry"),
    });
  }

  /** Raises an event: logged now if it is the first of its kind in this window, stored at the next flush. */
  record(event: SecurityEvent): void {
    this.metrics?.securityEvent(event);
    const key = fingerprint(event);
    const now = this.clock.now();
    const first = this.batcher.add(key, { ...event, id: randomUUID(), firstSeen: now, lastSeen: now, count: 1 });
    if (!first) return; // a repeat within the window: counted in the row, not logged again
    // The request id under the name the per-request log line uses, so one grep finds both.
    const { type, message, requestId, ...rest } = event;
    const fields = { security_event: type, ...rest, ...(requestId ? { request_id: requestId } : {}) };
    if (event.severity === "info") this.log.info(fields, message);
    else this.log.warn(fields, message);
  }

  /** Stores everything pending. `ListSecurityEvents` calls it first, so a replica reads its own events. */
  async flush(): Promise<void> {
    await this.batcher.flush();
  }

  /** Starts the periodic flush. */
  start(): void {
    this.batcher.start();
  }

  /** Stops the periodic flush and stores what is left. */
  async stop(): Promise<void> {
    await this.batcher.stop();
  }
}

function fingerprint(event: SecurityEvent): string {
  return [
    event.type,
    event.severity,
    event.message,
    event.serviceEnvironment,
    event.tokenEnvironment,
    event.callerTokenId,
    event.callerSubject,
    event.peer,
    event.userAgent,
    event.tokenHint,
    event.tokenId,
    event.method,
  ].join("\u0000");
}
