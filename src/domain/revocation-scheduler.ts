/**
 * Every replica runs one: it carries out rotated tokens' scheduled
 * revocations when their grace period ends, drops cached answers of rotated
 * tokens whose successor has been used (so reuse of an old copy is seen),
 * and resumes bulk revocations whose runner stopped (its lease ran out). Both survive restarts because
 * they live in the store, and both happen exactly once whichever replicas
 * are alive: a due token is revoked by the store's conditional UPDATE (rows
 * locked, re-read, skipped when revoked meanwhile), so when two replicas
 * pick the same due row one revokes it and the other finds nothing to do;
 * an operation is taken over with `FOR UPDATE SKIP LOCKED` and a
 * conditional lease. Each revocation is announced like any other (the
 * store's NOTIFY), so every replica's and gateway's cache drops it.
 */
import { BULK_LEASE_MS, runBulkRevocation, type BulkRunnerParts } from "./bulk-revoke.js";
import { ROTATION_ACTOR, recordRevoked } from "./rotate.js";
import { keyOfDigest } from "./token-format.js";

/** Due revocations handled per pass. */
const DUE_BATCH = 500;
/** Rotated tokens whose successor was used, refreshed per pass; and how many this replica remembers. */
const USED_BATCH = 1000;
const MAX_REFRESHED = 10_000;

/** The periodic scheduler of one replica. */
export class RevocationScheduler {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  /** Rotated tokens whose cached answer this replica has already dropped once. */
  private readonly refreshed = new Set<string>();

  /**
   * @param parts the lifecycle store and what revocations tell
   * @param intervalMs time between passes: the most a revocation is late
   */
  constructor(
    private readonly parts: BulkRunnerParts,
    private readonly intervalMs: number,
  ) {}

  /** Starts the passes; the timer does not keep the process alive. */
  start(): void {
    this.stopped = false;
    this.schedule();
  }

  /** Stops after the pass in flight, if any. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
  }

  /** One pass: every due revocation, then at most one abandoned bulk operation. Never throws. */
  async tick(): Promise<void> {
    try {
      await this.revokeDue();
      await this.refreshUsedRotations();
      await this.resumeBulk();
    } catch (error) {
      this.parts.log.warn({ err: error }, "revocation scheduler pass failed; retrying at the next");
    }
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.tick().finally(() => {
        this.running = undefined;
        this.schedule();
      });
    }, this.intervalMs);
    this.timer.unref();
  }

  private async revokeDue(): Promise<void> {
    const { store, clock, environment } = this.parts;
    for (;;) {
      const now = clock.now();
      const due = await store.dueRevocations(environment, now, DUE_BATCH);
      if (due.length === 0) return;
      const revoked = await store.revokeMany(due, { by: ROTATION_ACTOR, reason: "rotation grace period ended", at: now }, { dueBy: now });
      for (const record of revoked) {
        this.parts.cache.evict(keyOfDigest(record.digest));
        recordRevoked(this.parts.events, environment, record, "rotated token revoked: grace period ended", { method: "revocation scheduler" });
      }
      this.parts.log.info({ revoked_count: revoked.length }, "scheduled revocations carried out");
      if (due.length < DUE_BATCH) return;
    }
  }

  /**
   * A replica may hold an old token's answer from before its rotation, which
   * knows nothing of the successor: once the successor has been used, that
   * answer is dropped (once per token), so the next use of an old copy loads
   * the link and raises `rotated_token_reused`.
   */
  private async refreshUsedRotations(): Promise<void> {
    const used = await this.parts.store.usedRotations(this.parts.environment, USED_BATCH);
    for (const record of used) {
      if (this.refreshed.has(record.id)) continue;
      if (this.refreshed.size >= MAX_REFRESHED) this.refreshed.clear();
      this.refreshed.add(record.id);
      this.parts.cache.evict(keyOfDigest(record.digest));
    }
  }

  private async resumeBulk(): Promise<void> {
    const now = this.parts.clock.now();
    const operation = await this.parts.store.claimBulkRevocation(this.parts.environment, now, new Date(now.getTime() + BULK_LEASE_MS));
    if (operation === undefined) return;
    this.parts.log.warn({ operation_id: operation.id, revoked_so_far: operation.revokedCount }, "resuming a bulk revocation whose runner stopped");
    await runBulkRevocation(this.parts, operation);
  }
}
