import { TokenError } from "./errors.js";
import type { RevocationHub } from "./revocation-hub.js";

/** One event of a revocation stream. */
export type WatchEvent =
  | { readonly kind: "revocation"; readonly key: string; readonly tokenId: string; readonly position?: number | undefined }
  /** A legacy JWT's `jti` was revoked: a gateway drops the answers it keeps for that jti. */
  | { readonly kind: "legacy_revocation"; readonly jti: string; readonly position: number }
  | { readonly kind: "heartbeat"; readonly atMs: number; readonly confirmedAgeMs: number; readonly position?: number }
  | { readonly kind: "reset" };

/** Most events held for a slow reader before the stream is reset instead. */
const MAX_QUEUED = 10_000;

/**
 * Who a stream serves, so it ends when they no longer may watch: the
 * caller's credential is revoked (here or on any replica: the revocation
 * notice names it), or expires, or is otherwise refused on a re-check.
 */
export interface StreamOwner {
  /** The id of the caller's token: a revocation notice naming it ends the stream at once. */
  readonly tokenId: string;
  /** How often to re-check the credential (catches expiry, and revocation while the channel is down). */
  readonly recheckMs: number;
  /**
   * Authenticates the caller again. Throws `TokenError("unauthenticated")`
   * when the credential no longer holds; other failures (a store outage) are
   * ignored: the stream's notices do not need the store, and it is re-checked
   * on the next tick.
   */
  readonly recheck: () => Promise<void>;
}

/**
 * The revocation stream a gateway watches: every revocation this replica
 * hears of, a `reset` when it may have missed some, and a heartbeat every
 * `heartbeatMs` saying how far back completeness is proven. Starts with a
 * `reset`, so a gateway (re)connecting drops what it cached while away. A
 * reader too slow to keep up gets a `reset` rather than unbounded memory.
 * Ends when `signal` aborts, and with `owner`, throws `unauthenticated`
 * once the owner's credential is revoked or expires (after delivering what
 * was queued, the owner's own revocation included).
 *
 * With `resumeAfter` (a revocation log position the gateway has seen), the
 * stream starts instead with every revocation after it, read from the log,
 * and a `reset` only when the log no longer reaches back that far. Heartbeats
 * carry the position this replica has applied.
 */
export async function* watchRevocations(
  hub: RevocationHub,
  heartbeatMs: number,
  signal: AbortSignal,
  now: () => number = Date.now,
  owner?: StreamOwner,
  resumeAfter?: number,
): AsyncGenerator<WatchEvent> {
  let queue: WatchEvent[] = resumeAfter === undefined ? [{ kind: "reset" }] : [];
  let wake: (() => void) | undefined;
  let ended: TokenError | undefined;
  const end = (error: TokenError) => {
    ended ??= error;
    wake?.();
  };
  const push = (event: WatchEvent) => {
    if (queue.length >= MAX_QUEUED) queue = [{ kind: "reset" }];
    else queue.push(event);
    wake?.();
  };
  const heartbeat = () => {
    const at = now();
    // Never confirmed yet: nothing is proven, so the age covers all time.
    push({ kind: "heartbeat", atMs: at, confirmedAgeMs: hub.confirmedAt === 0 ? at : Math.max(0, at - hub.confirmedAt), position: hub.position });
  };
  const unsubscribe = hub.subscribe({
    revoked: (key, tokenId, position) => {
      push({ kind: "revocation", key, tokenId, position });
      if (tokenId === owner?.tokenId) end(new TokenError("unauthenticated", "caller credential refused: The token has been revoked."));
    },
    // Never the owner's own credential: a legacy JWT cannot authenticate a caller.
    legacyRevoked: (jti, position) => push({ kind: "legacy_revocation", jti, position }),
    confirmed: () => undefined, // reported by the heartbeat's age
    reset: () => push({ kind: "reset" }),
  });
  if (resumeAfter !== undefined) {
    // Subscribed first, so nothing committed after this read can fall between the two.
    const missed = await hub.since(resumeAfter, MAX_QUEUED).catch(() => undefined);
    const caughtUp: WatchEvent[] =
      missed === undefined
        ? [{ kind: "reset" }]
        : missed.map((e): WatchEvent => (e.key === undefined ? { kind: "legacy_revocation", jti: e.id, position: e.position } : { kind: "revocation", key: e.key, tokenId: e.id, position: e.position }));
    queue = [...caughtUp, ...queue];
  }
  const timer = setInterval(heartbeat, heartbeatMs);
  let checking = false;
  const recheck = () => {
    if (owner === undefined || checking || ended !== undefined) return;
    checking = true;
    owner.recheck().then(
      () => (checking = false),
      (error: unknown) => {
        checking = false;
        if (error instanceof TokenError && error.code === "unauthenticated") end(error);
      },
    );
  };
  const recheckTimer = owner === undefined ? undefined : setInterval(recheck, owner.recheckMs);
  const stop = () => {
    clearInterval(timer);
    if (recheckTimer !== undefined) clearInterval(recheckTimer);
    signal.removeEventListener("abort", onAbort);
    unsubscribe();
  };
  // Stops the timers and the subscription at once, even if the consumer
  // never resumes this generator (it may be suspended at a yield).
  const onAbort = () => {
    stop();
    wake?.();
  };
  signal.addEventListener("abort", onAbort);
  heartbeat();
  try {
    while (!signal.aborted) {
      if (queue.length === 0) {
        if (ended !== undefined) throw ended;
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
        continue;
      }
      const batch = queue;
      queue = [];
      for (const event of batch) yield event;
    }
  } finally {
    stop();
  }
}

/**
 * Open streams per caller, capped: each stream holds a timer, a queue and a
 * hub subscription, so one credential must not open them without bound.
 */
export class StreamQuota {
  private readonly open = new Map<string, number>();

  /** @param maxPerCaller most streams one caller (token id) may hold open on this replica */
  constructor(private readonly maxPerCaller: number) {}

  /**
   * Takes a stream slot for `tokenId`, or throws `resource_exhausted`. The
   * returned function gives it back (once; later calls do nothing).
   */
  acquire(tokenId: string): () => void {
    const held = this.open.get(tokenId) ?? 0;
    if (held >= this.maxPerCaller) {
      throw new TokenError("resource_exhausted", `this caller already holds ${this.maxPerCaller} revocation streams on this replica, the most allowed; close one first`);
    }
    this.open.set(tokenId, held + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const now = (this.open.get(tokenId) ?? 1) - 1;
      if (now <= 0) this.open.delete(tokenId);
      else this.open.set(tokenId, now);
    };
  }

  /** Streams open now, over every caller. */
  get size(): number {
    let total = 0;
    for (const n of this.open.values()) total += n;
    return total;
  }
}
