/**
 * The periodic work around the revocation log: the polling transport (for
 * stores without LISTEN/NOTIFY) and the pruning of old entries.
 */
import type { Logger } from "./ports.js";
import type { RevocationHub, RevocationLog } from "./revocation-hub.js";

/** What the metrics and readiness probe read of a revocation transport. */
export interface RevocationTransportStats {
  up: boolean;
  reconnects: number;
  losses: number;
}

/**
 * `REVOCATION_TRANSPORT=poll`: read the log every interval. Each successful
 * read confirms everything committed before it began (its snapshot is taken
 * after), so the cache's staleness bound holds exactly as with heartbeats;
 * a failed read confirms nothing, and cached answers age out within
 * `CACHE_STALENESS`. Revocations take effect within one interval plus one read.
 */
export class RevocationPoller {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private lastSuccess = 0;
  private failing = false;
  private losses = 0;
  private recoveries = 0;

  constructor(
    private readonly hub: RevocationHub,
    private readonly intervalMs: number,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** Whether the last poll succeeded recently (within three intervals). */
  get up(): boolean {
    return !this.failing && this.now() - this.lastSuccess <= 3 * this.intervalMs;
  }

  /** No LISTEN session: there is no backend pid. */
  get backendPid(): number | undefined {
    return undefined;
  }

  /** For metrics, shaped as the channel's: polls that failed after success count as losses. */
  stats(): RevocationTransportStats {
    return { up: this.up, reconnects: this.recoveries, losses: this.losses };
  }

  /** Places the replica in the log (first poll), then polls every interval. */
  async start(): Promise<void> {
    await this.tick();
  }

  /** Stops polling. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    const startedAt = this.now();
    const ok = await this.hub.poll(startedAt);
    if (ok) {
      if (this.failing) {
        this.recoveries++;
        this.log.info({}, "revocation log readable again");
      }
      this.failing = false;
      this.lastSuccess = startedAt;
    } else if (!this.failing) {
      this.failing = true;
      this.losses++;
    }
    if (this.stopped) return;
    // Measured from the end of a read, so a slow store is not piled onto.
    this.timer = setTimeout(() => void this.tick(), this.intervalMs);
    this.timer.unref();
  }
}

/** Entries deleted per statement: bounded, so pruning never holds many locks or runs long. */
const PRUNE_BATCH = 1000;
/** Most batches per run; what is left waits for the next run. */
const PRUNE_BATCHES = 20;

/**
 * Deletes log entries older than the retention, a bounded batch at a time,
 * about once a minute (jittered, so replicas started together spread out).
 * Every replica runs it; concurrent prunes are safe (the function moves the
 * pruning mark with GREATEST, and a row deleted twice is deleted once).
 */
export class RevocationLogPruner {
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly store: RevocationLog,
    private readonly retentionMs: number,
    private readonly log: Logger,
    private readonly everyMs = 60_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** Starts the periodic pruning. */
  start(): void {
    const schedule = () => {
      this.timer = setTimeout(() => void this.run().finally(schedule), this.everyMs * (0.5 + Math.random()));
      this.timer.unref();
    };
    schedule();
  }

  /** Stops it. */
  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** One run: up to {@link PRUNE_BATCHES} batches of entries older than the retention. Returns how many went. */
  async run(): Promise<number> {
    const cutoff = new Date(this.now() - this.retentionMs);
    let total = 0;
    try {
      for (let i = 0; i < PRUNE_BATCHES; i++) {
        const removed = await this.store.prune(cutoff, PRUNE_BATCH);
        total += removed;
        if (removed < PRUNE_BATCH) break;
      }
      if (total > 0) this.log.debug({ removed: total }, "revocation log pruned");
    } catch (error) {
      this.log.warn({ err: error }, "pruning the revocation log failed; it will be tried again");
    }
    return total;
  }
}
