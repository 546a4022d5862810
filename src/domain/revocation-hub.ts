import type { Logger } from "./ports.js";

/** Someone who wants to hear of revocations: the replica's cache, each WatchRevocations stream. */
export interface RevocationListener {
  /**
   * A token was revoked: its digest key (base64), id, and its position in
   * the revocation log (undefined from a writer that predates the log).
   */
  revoked(key: string, tokenId: string, position?: number): void;
  /**
   * A legacy JWT's `jti` was revoked, at `position` in the log: drop the
   * answers kept for it. Its notice carries only the position, so the hub
   * reads the jti from the log before calling this.
   */
  legacyRevoked?(jti: string, position: number): void;
  /** Every revocation committed before `atMs` has been heard. */
  confirmed(atMs: number): void;
  /** Revocations may have been missed: drop everything cached. */
  reset(): void;
}

/** One entry of the revocation log. */
export interface RevocationLogEntry {
  /** Strictly increasing, gapless, in commit order. */
  readonly position: number;
  /** An opaque token or a legacy `jti`: both cached, both evicted. */
  readonly kind: "token" | "legacy_jti";
  /** The token's id, or the legacy jti. */
  readonly id: string;
  /** The token's digest key (base64); undefined for a legacy jti. */
  readonly key: string | undefined;
}

/** What one read of the log returned, all from one snapshot. */
export interface RevocationLogPage {
  /** Entries after the position asked for, in order, at most the limit asked for. */
  readonly entries: readonly RevocationLogEntry[];
  /** The highest position committed in that snapshot (0: none yet). */
  readonly head: number;
  /** Positions up to this one have been pruned and can no longer be read. */
  readonly prunedThrough: number;
}

/** The revocation log in the store (`storage/revocation-log.ts`). */
export interface RevocationLog {
  /** Entries after `position` (at most `limit`), with the head and the pruning mark of the same snapshot. */
  readAfter(position: number, limit: number): Promise<RevocationLogPage>;
  /** Deletes at most `limit` entries logged before `cutoff`; returns how many went. */
  prune(cutoff: Date, limit: number): Promise<number>;
}

/** The position and freshness a replica answers with. */
export interface RevocationMark {
  /** Every revocation up to this log position has been applied to this replica's cache. */
  readonly position: number;
  /** Every revocation committed before this time (ms) has been applied; 0 if never confirmed. */
  readonly confirmedAt: number;
}

/** Entries read per query while catching up. */
const PAGE = 1000;

/**
 * Fans the store's revocation notices out to every listener in this process:
 * the introspection cache and every gateway's WatchRevocations stream. One
 * mechanism for both, so a gateway's cache is exactly as fresh as ours.
 *
 * It also keeps this replica's place in the revocation log: `position` is
 * the highest log position such that every revocation up to it has been
 * applied. Notices arrive in commit order, which the log makes position
 * order (migration 0009), so a notice one past the position simply moves it
 * on. When the channel comes back after a blip, or a notice skips a
 * position, the hub reads the log from its position and evicts just those
 * tokens (`catchUp`); only when its position is older than the log keeps
 * does it tell every listener to reset. Until a catch-up has succeeded,
 * confirmations are held back: a heartbeat proves only what the new
 * session heard, not what happened while deaf.
 *
 * With the polling transport there are no notices: each poll is a catch-up,
 * and a successful one confirms everything committed before it began.
 */
export class RevocationHub {
  private readonly listeners = new Set<RevocationListener>();
  private confirmed = 0;
  private applied = 0;
  /** False until the first look at the log: the position means nothing yet. */
  private placed = false;
  /** The log is ahead of `applied` (a blip or a skipped notice): confirmations wait for a catch-up. */
  private behind = false;
  private syncing: Promise<boolean> | undefined;
  /** Highest position noticed while a catch-up was in flight. */
  private noticedDuringSync = 0;
  /**
   * Highest legacy-jti position noticed and not yet read from the log: the
   * applied position may not pass it until a catch-up has read its jti.
   */
  private legacyUnread = 0;
  /** Highest confirmation held back while behind. */
  private heldConfirmation = 0;
  /** The last read of the log failed (logged once per streak). */
  private failing = false;

  /**
   * @param log the store's revocation log; without one (tests with fakes, old
   *   wiring) a blip resets every listener, as before the log existed
   */
  constructor(
    private readonly log?: RevocationLog,
    private readonly logger?: Logger,
  ) {}

  /** Until when (ms) every revocation is known to have been heard; 0 if never. */
  get confirmedAt(): number {
    return this.confirmed;
  }

  /** The log position applied: every revocation up to it has reached every listener. */
  get position(): number {
    return this.applied;
  }

  /**
   * Position and freshness together, read before answering from the cache or
   * the store. The same frozen object until either changes, so answers
   * stamped with it can be reused (and their encoding with them).
   */
  mark(): RevocationMark {
    const current = this.currentMark;
    if (current.position === this.applied && current.confirmedAt === this.confirmed) return current;
    return (this.currentMark = Object.freeze({ position: this.applied, confirmedAt: this.confirmed }));
  }

  private currentMark: RevocationMark = Object.freeze({ position: 0, confirmedAt: 0 });

  /** Adds a listener; returns the function that removes it. */
  subscribe(listener: RevocationListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** A notice: a token was revoked, at `position` in the log (if the writer said). */
  revoked(key: string, tokenId: string, position?: number): void {
    for (const l of this.listeners) l.revoked(key, tokenId, position);
    if (position !== undefined) this.advance(position);
  }

  /**
   * A notice of a log position that names nothing to evict: a legacy jti,
   * whose notice (`l:<position>`, migration 0009) carries no jti. Its
   * answers are cached, so the jti is read from the log (a catch-up, with
   * confirmations held back until it succeeds) before the position counts
   * as applied. Without a log there is nothing to read: the position moves on.
   */
  noticed(position: number): void {
    if (this.log === undefined || !this.placed) {
      this.advance(position);
      return;
    }
    if (position <= this.applied) return;
    if (position > this.legacyUnread) this.legacyUnread = position;
    if (position > this.noticedDuringSync) this.noticedDuringSync = position;
    this.behind = true;
    void this.catchUp();
  }

  /** A token notice's position: applied at once (its listeners already ran), or read from the log if one was skipped. */
  private advance(position: number): void {
    if (this.syncing !== undefined || this.behind) {
      if (position > this.noticedDuringSync) this.noticedDuringSync = position;
      return;
    }
    if (position <= this.applied) return;
    if (position === this.applied + 1 || this.log === undefined || !this.placed) {
      this.applied = position;
      return;
    }
    // A notice skipped a position: one was missed. Read it from the log.
    this.noticedDuringSync = position;
    this.behind = true;
    void this.catchUp();
  }

  /** Tells every listener nothing was missed until `atMs` (held back while behind). */
  confirm(atMs: number): void {
    if (this.behind || this.syncing !== undefined) {
      if (atMs > this.heldConfirmation) this.heldConfirmation = atMs;
      // Behind after a failed catch-up: every heartbeat tries again.
      if (this.syncing === undefined) void this.catchUp();
      return;
    }
    this.release(atMs);
  }

  /** Tells every listener something may have been missed. */
  reset(): void {
    for (const l of this.listeners) l.reset();
  }

  /**
   * The channel is listening (again): catch up from the log, or, without a
   * log, reset. Call it once the new session listens, so that everything
   * committed after the read is noticed on it.
   */
  restored(): void {
    if (this.log === undefined) {
      this.reset();
      return;
    }
    this.behind = true;
    void this.catchUp();
  }

  /**
   * Reads the log after the applied position and applies what it finds.
   * Resolves true when the replica is caught up (releasing any held
   * confirmation), false when the store could not be read (still behind;
   * the next confirmation or poll tries again). One at a time.
   */
  catchUp(): Promise<boolean> {
    if (this.log === undefined) return Promise.resolve(true);
    this.syncing ??= this.readLog(this.log).finally(() => (this.syncing = undefined));
    return this.syncing;
  }

  /**
   * One poll of the polling transport: catch up, then confirm everything
   * committed before `startedAtMs` (the read's snapshot is taken after it).
   */
  async poll(startedAtMs: number): Promise<boolean> {
    // A catch-up already in flight may have read before `startedAtMs`: wait for it, then read again.
    if (this.syncing !== undefined) await this.syncing;
    this.behind = true;
    const ok = await this.catchUp();
    if (ok) this.release(startedAtMs);
    return ok;
  }

  /**
   * Every revocation after `position`, read from the log, for a watcher
   * resuming its stream; undefined when they cannot all be given (no log,
   * the log no longer reaches back that far, a position the log never had,
   * or more than `max` of them): the watcher must reset instead.
   */
  async since(position: number, max: number): Promise<RevocationLogEntry[] | undefined> {
    if (this.log === undefined) return undefined;
    const out: RevocationLogEntry[] = [];
    let after = position;
    for (;;) {
      const page = await this.log.readAfter(after, PAGE);
      if (position < page.prunedThrough || position > page.head) return undefined;
      out.push(...page.entries);
      if (out.length > max) return undefined;
      if (page.entries.length < PAGE) return out;
      after = page.entries[page.entries.length - 1]!.position;
    }
  }

  private async readLog(log: RevocationLog): Promise<boolean> {
    try {
      if (!this.placed) {
        // First look: nothing is cached yet, so nothing before the head matters.
        const page = await log.readAfter(Number.MAX_SAFE_INTEGER, 1);
        this.applied = Math.max(page.head, this.noticedDuringSync);
        this.placed = true;
      } else {
        let after = this.applied;
        let evicted = 0;
        for (;;) {
          const page = await log.readAfter(after, PAGE);
          if (after < page.prunedThrough) {
            // Older than the log keeps: what was missed cannot be known.
            this.logger?.warn({ applied: after, pruned_through: page.prunedThrough }, "revocation log no longer reaches back to this replica's position; resetting caches");
            this.reset();
            after = page.head;
            break;
          }
          for (const entry of page.entries) {
            if (entry.key !== undefined) {
              for (const l of this.listeners) l.revoked(entry.key, entry.id, entry.position);
              evicted++;
            } else if (entry.kind === "legacy_jti") {
              // Every legacy revocation comes this way (its notice names no jti): not worth a log line each.
              for (const l of this.listeners) l.legacyRevoked?.(entry.id, entry.position);
            }
            after = entry.position;
          }
          if (page.entries.length < PAGE) {
            after = Math.max(after, page.head);
            break;
          }
        }
        if (this.legacyUnread > after) {
          // A legacy notice arrived after this read's snapshot: its jti is
          // still unread. Stay behind (token notices above `after` may be
          // dispatched twice; evicting twice is harmless) and read again.
          this.applied = Math.max(after, this.applied);
          return this.readLog(log);
        }
        this.legacyUnread = 0;
        this.applied = Math.max(after, this.noticedDuringSync, this.applied);
        if (evicted > 0) this.logger?.info({ evicted, position: this.applied }, "caught up from the revocation log");
      }
      this.noticedDuringSync = 0;
      this.behind = false;
      this.failing = false;
      const held = this.heldConfirmation;
      this.heldConfirmation = 0;
      if (held > 0) this.release(held);
      return true;
    } catch (error) {
      // Once per failing streak: polls and heartbeats retry every few hundred milliseconds.
      if (!this.failing) this.logger?.warn({ err: error }, "reading the revocation log failed; confirmations held back until it succeeds");
      this.failing = true;
      return false;
    }
  }

  private release(atMs: number): void {
    if (atMs <= this.confirmed) return;
    this.confirmed = atMs;
    for (const l of this.listeners) l.confirmed(atMs);
  }
}
