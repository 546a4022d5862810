import { randomUUID } from "node:crypto";
import { DistinctCount, EXACT_LIMIT } from "./distinct-count.js";
import { TokenError } from "./errors.js";
import type { SecurityEvent, SecurityEventRow } from "./model.js";
import type { Clock, EventSink, Logger, SecurityEventMetrics, SecurityEventStore } from "./ports.js";

/** Bounds of the security event recorder; see the README's security events section. */
export interface SecurityEventLimits {
  /**
   * Distinct fold keys (rows) stored per window for info and warning events;
   * critical events have as many again of their own, so a flood of low
   * severity cannot crowd them out. Beyond it, events fold into one overflow
   * row per type and severity.
   */
  readonly maxRowsPerWindow: number;
  /**
   * Rows kept in memory while the store is unavailable. A tenth is reserved
   * for critical events; beyond it rows are dropped and counted.
   */
  readonly maxBufferedRows: number;
  /** Rows last seen longer ago than this are deleted; 0 keeps them forever. */
  readonly retentionMs: number;
  /** How often old rows are pruned. */
  readonly pruneIntervalMs: number;
  /** Rows deleted per statement, so no prune holds many locks or runs long. */
  readonly pruneBatchRows: number;
  /** Statements per prune run; what is left waits for the next run. */
  readonly maxPruneBatches: number;
}

/** The defaults, matching the configuration's. */
export const DEFAULT_SECURITY_EVENT_LIMITS: SecurityEventLimits = Object.freeze({
  maxRowsPerWindow: 1_000,
  maxBufferedRows: 10_000,
  retentionMs: 90 * 24 * 60 * 60 * 1000,
  pruneIntervalMs: 60 * 60 * 1000,
  pruneBatchRows: 1_000,
  maxPruneBatches: 100,
});

/** Distinct display hints or user agents kept as a sample per row. */
const SAMPLE_SIZE = 5;

/**
 * The event sink: the first event of each fold key in a window becomes a
 * structured log line with a `security_event` field at once, and every event
 * is counted into a row stored at the end of the window.
 *
 * Events fold by what identifies the actor (type, severity, message, peer,
 * caller, method, environments, token id), never by what the actor
 * presented: a flood of random bearers from one peer is one row and one log
 * line per window, with a sample and a distinct count of the display hints.
 * Rows per window are capped; a write that fails for an outage is kept
 * (bounded) for the next window, any other failure is logged once and
 * dropped, never retried forever.
 */
export class SecurityEventRecorder implements EventSink {
  private readonly limits: SecurityEventLimits;
  /** This window's rows by fold key. */
  private window = new Map<string, Fold>();
  /** This window's overflow rows, by type and severity. */
  private overflow = new Map<string, Fold>();
  /** Fold keys opened this window: [info and warning, critical]. */
  private opened = [0, 0];
  /** Rows of earlier windows that met an outage, to be written first. */
  private retained: SecurityEventRow[] = [];
  private flushing: Promise<void> | undefined;
  private pruning: Promise<number> | undefined;
  private flushTimer: NodeJS.Timeout | undefined;
  private pruneTimer: NodeJS.Timeout | undefined;

  /**
   * @param windowMs events with the same fold key within one window share a row (and a log line)
   * @param metrics counts every event raised, folded or not, and what overflowed or was dropped
   * @param limits bounds; unset ones take {@link DEFAULT_SECURITY_EVENT_LIMITS}
   */
  constructor(
    private readonly store: SecurityEventStore,
    private readonly log: Logger,
    private readonly clock: Clock,
    private readonly windowMs: number,
    private readonly metrics?: SecurityEventMetrics,
    limits: Partial<SecurityEventLimits> = {},
  ) {
    this.limits = { ...DEFAULT_SECURITY_EVENT_LIMITS, ...limits };
  }

  /** Raises an event: logged now if it is the first of its fold key in this window, stored at the next flush. Never throws, never waits. */
  record(event: SecurityEvent): void {
    this.metrics?.securityEvent(event);
    const now = this.clock.now();
    const key = foldKey(event);
    const fold = this.window.get(key);
    if (fold !== undefined) {
      fold.add(event, now);
      return; // a repeat within the window: counted in the row, not logged again
    }
    const budget = event.severity === "critical" ? 1 : 0;
    if (this.opened[budget]! < this.limits.maxRowsPerWindow) {
      this.opened[budget]!++;
      const opened = new Fold(event, now, undefined);
      opened.add(event, now);
      this.window.set(key, opened);
      this.logFirst(event);
      return;
    }
    this.metrics?.securityEventsOverflowed?.(1);
    const overflowKey = `${event.type}\u0000${event.severity}`;
    let aggregate = this.overflow.get(overflowKey);
    if (aggregate === undefined) {
      aggregate = new Fold(event, now, this.limits.maxRowsPerWindow);
      this.overflow.set(overflowKey, aggregate);
      // One line per type and severity per window, however many actors overflow.
      this.log.warn(
        { security_event: event.type, severity: event.severity, max_rows_per_window: this.limits.maxRowsPerWindow },
        "more distinct security event sources than the per-window row cap: further events of this type fold into one row",
      );
    }
    aggregate.add(event, now, key);
  }

  /** Stores everything pending. `ListSecurityEvents` calls it first, so a replica reads its own events. */
  async flush(): Promise<void> {
    // Flushes run one at a time; a caller arriving during one runs its own after it, so it sees its events stored.
    while (this.flushing) await this.flushing;
    this.flushing = this.writeWindow().finally(() => {
      this.flushing = undefined;
    });
    await this.flushing;
  }

  /**
   * Deletes rows last seen before the retention period, in bounded batches.
   * Concurrent runs (this replica's or others') skip each other's rows.
   * @returns how many rows were deleted
   */
  async prune(): Promise<number> {
    if (this.limits.retentionMs <= 0) return 0;
    if (this.pruning) return this.pruning;
    this.pruning = this.pruneBatches().finally(() => {
      this.pruning = undefined;
    });
    return this.pruning;
  }

  /** Starts the periodic flush and prune. The timers do not keep the process alive. */
  start(): void {
    if (this.flushTimer) return;
    this.flushTimer = setInterval(() => void this.flush(), this.windowMs);
    this.flushTimer.unref();
    if (this.limits.retentionMs <= 0) return;
    const prune = () =>
      void this.prune().catch((err: unknown) => this.log.warn({ err }, "old security events could not be pruned; will try again"));
    // The first run after one window, off the start-up path; then at the interval.
    const first = setTimeout(() => {
      prune();
      this.pruneTimer = setInterval(prune, this.limits.pruneIntervalMs);
      this.pruneTimer.unref();
    }, this.windowMs);
    first.unref();
    this.pruneTimer = first;
  }

  /** Stops the timers and stores what is left. */
  async stop(): Promise<void> {
    if (this.flushTimer) clearInterval(this.flushTimer);
    if (this.pruneTimer) clearTimeout(this.pruneTimer);
    this.flushTimer = undefined;
    this.pruneTimer = undefined;
    await this.pruning?.catch(() => undefined);
    await this.flush();
  }

  private logFirst(event: SecurityEvent): void {
    // The request id under the name the per-request log line uses, so one grep finds both.
    const { type, message, requestId, ...rest } = event;
    const fields = { security_event: type, ...rest, ...(requestId ? { request_id: requestId } : {}) };
    if (event.severity === "info") this.log.info(fields, message);
    else this.log.warn(fields, message);
  }

  private async writeWindow(): Promise<void> {
    const fresh: SecurityEventRow[] = [];
    for (const fold of this.window.values()) fresh.push(fold.toRow());
    for (const fold of this.overflow.values()) fresh.push(fold.toRow());
    this.window = new Map();
    this.overflow = new Map();
    this.opened = [0, 0];
    // Older rows first: when the buffer is full, they are the ones kept.
    const rows = this.retained.length === 0 ? fresh : [...this.retained, ...fresh];
    this.retained = [];
    if (rows.length === 0) return;
    try {
      await this.store.insertMany(rows);
    } catch (error) {
      if (error instanceof TokenError && error.code === "unavailable") {
        const dropped = this.retain(rows);
        if (dropped.events > 0) this.metrics?.securityEventsDropped?.("buffer_full", dropped.events);
        this.log.warn(
          { err: error, kept_rows: this.retained.length, dropped_rows: dropped.rows, dropped_events: dropped.events },
          "security events could not be stored: the store is unavailable; kept for the next window",
        );
      } else {
        // A refusal (a constraint, a protocol error) would fail the same way every time: retrying would wedge the trail.
        const events = rows.reduce((n, row) => n + row.count, 0);
        this.metrics?.securityEventsDropped?.("refused", events);
        this.log.error({ err: error, dropped_rows: rows.length, dropped_events: events }, "security events dropped: the store refused them (not an outage, so not retried)");
      }
    }
  }

  /**
   * Keeps rows for the next window within the buffer: critical rows first,
   * up to the whole buffer; the others up to the buffer less a tenth held in
   * reserve for critical ones. Within each, earlier rows win.
   */
  private retain(rows: readonly SecurityEventRow[]): { rows: number; events: number } {
    const max = this.limits.maxBufferedRows;
    const critical = rows.filter((row) => row.severity === "critical");
    const others = rows.filter((row) => row.severity !== "critical");
    const keptCritical = critical.slice(0, max);
    const room = Math.min(max - keptCritical.length, max - Math.ceil(max / 10));
    const keptOthers = others.slice(0, Math.max(0, room));
    this.retained = [...keptCritical, ...keptOthers];
    const lost = [...critical.slice(keptCritical.length), ...others.slice(keptOthers.length)];
    return { rows: lost.length, events: lost.reduce((n, row) => n + row.count, 0) };
  }

  private async pruneBatches(): Promise<number> {
    const cutoff = new Date(this.clock.now().getTime() - this.limits.retentionMs);
    let deleted = 0;
    for (let i = 0; i < this.limits.maxPruneBatches; i++) {
      const n = await this.store.pruneBefore(cutoff, this.limits.pruneBatchRows);
      deleted += n;
      if (n < this.limits.pruneBatchRows) break;
    }
    if (deleted > 0) this.log.info({ deleted_rows: deleted, last_seen_before: cutoff.toISOString() }, "old security events pruned");
    return deleted;
  }
}

/**
 * What makes two events one row: who acted and what happened, never what
 * was presented (the token's display hint) or what the client calls itself
 * (its user agent), which an attacker can vary at will. The request id is
 * left out too, else no two events would ever fold.
 */
function foldKey(event: SecurityEvent): string {
  return [
    event.type,
    event.severity,
    event.message,
    event.serviceEnvironment,
    event.tokenEnvironment,
    event.callerTokenId,
    event.callerSubject,
    event.peer,
    event.tokenId,
    event.method,
  ].join("\u0000");
}

/** The occurrences of one fold key (or, with a cap, of every overflowing key of a type and severity) in one window. */
class Fold {
  readonly id = randomUUID();
  count = 0;
  lastSeen: Date;
  readonly firstSeen: Date;
  private readonly hints = new DistinctCount(SAMPLE_SIZE);
  private readonly agents = new DistinctCount(SAMPLE_SIZE);
  private readonly sources: DistinctCount | undefined;

  /** @param overflowCap set for an overflow row: the cap that sent events here */
  constructor(
    private readonly first: SecurityEvent,
    now: Date,
    private readonly overflowCap: number | undefined,
  ) {
    this.firstSeen = now;
    this.lastSeen = now;
    this.sources = overflowCap === undefined ? undefined : new DistinctCount(0);
  }

  add(event: SecurityEvent, now: Date, key?: string): void {
    this.count++;
    this.lastSeen = now;
    if (event.tokenHint !== undefined) this.hints.add(event.tokenHint);
    if (event.userAgent !== undefined) this.agents.add(event.userAgent);
    if (key !== undefined) this.sources?.add(key);
  }

  toRow(): SecurityEventRow {
    const first = this.first;
    const hint = this.hints.sample[0];
    const agent = this.agents.sample[0];
    const common = {
      id: this.id,
      firstSeen: this.firstSeen,
      lastSeen: this.lastSeen,
      count: this.count,
      ...(hint !== undefined && { tokenHint: hint }),
      ...(agent !== undefined && { userAgent: agent }),
      ...(this.hints.size > 1 && { tokenHintSample: [...this.hints.sample], distinctTokenHints: this.hints.size }),
      ...(this.agents.size > 1 && { userAgentSample: [...this.agents.sample], distinctUserAgents: this.agents.size }),
    };
    if (this.overflowCap === undefined || this.sources === undefined) {
      const { requestId: _requestId, tokenHint: _tokenHint, userAgent: _userAgent, ...stored } = first;
      return { ...stored, ...common };
    }
    // An overflow row names no single actor: only what all its events share.
    return {
      type: first.type,
      severity: first.severity,
      serviceEnvironment: first.serviceEnvironment,
      message: `${first.type} events from more sources than the cap of ${this.overflowCap} rows per window, folded into this row; the first said: ${first.message}`,
      foldedSources: this.sources.size,
      ...common,
    };
  }
}

/**
 * How a folded row's presented values read in one text field (the API's
 * `token_hint` and `user_agent`): the value when there was one, else the
 * sample and how many more, e.g. `cf-…a1B2, cf-…x9Yz (+9,998 more)`;
 * `~` marks an estimate.
 */
export function foldedValues(first: string | undefined, sample: readonly string[] | undefined, distinct: number | undefined): string {
  if (sample === undefined || distinct === undefined || sample.length === 0) return first ?? "";
  const more = distinct - sample.length;
  if (more <= 0) return sample.join(", ");
  const approx = distinct > EXACT_LIMIT ? "~" : "";
  return `${sample.join(", ")} (+${approx}${more.toLocaleString("en-US")} more)`;
}
