import type { RevocationHub } from "./revocation-hub.js";

/** One event of a revocation stream. */
export type WatchEvent =
  | { readonly kind: "revocation"; readonly key: string; readonly tokenId: string; readonly position?: number | undefined }
  | { readonly kind: "heartbeat"; readonly atMs: number; readonly confirmedAgeMs: number; readonly position?: number }
  | { readonly kind: "reset" };

/** Most events held for a slow reader before the stream is reset instead. */
const MAX_QUEUED = 10_000;

/**
 * The revocation stream a gateway watches: every revocation this replica
 * hears of, a `reset` when it may have missed some, and a heartbeat every
 * `heartbeatMs` saying how far back completeness is proven. Starts with a
 * `reset`, so a gateway (re)connecting drops what it cached while away. A
 * reader too slow to keep up gets a `reset` rather than unbounded memory.
 * Ends when `signal` aborts.
 *
 * With `resumeAfter` (a revocation log position the gateway has seen), the
 * stream starts instead with every revocation after it, read from the log,
 * and a `reset` only when the log no longer reaches back that far. Heartbeats
 * carry the position this replica has applied.
 */
export async function* watchRevocations(hub: RevocationHub, heartbeatMs: number, signal: AbortSignal, now: () => number = Date.now, resumeAfter?: number): AsyncGenerator<WatchEvent> {
  let queue: WatchEvent[] = resumeAfter === undefined ? [{ kind: "reset" }] : [];
  let wake: (() => void) | undefined;
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
    revoked: (key, tokenId, position) => push({ kind: "revocation", key, tokenId, position }),
    confirmed: () => undefined, // reported by the heartbeat's age
    reset: () => push({ kind: "reset" }),
  });
  if (resumeAfter !== undefined) {
    // Subscribed first, so nothing committed after this read can fall between the two.
    const missed = await hub.since(resumeAfter, MAX_QUEUED).catch(() => undefined);
    const caughtUp: WatchEvent[] = missed === undefined ? [{ kind: "reset" }] : missed.flatMap((e) => (e.key === undefined ? [] : [{ kind: "revocation" as const, key: e.key, tokenId: e.id, position: e.position }]));
    queue = [...caughtUp, ...queue];
  }
  const timer = setInterval(heartbeat, heartbeatMs);
  const onAbort = () => wake?.();
  signal.addEventListener("abort", onAbort);
  heartbeat();
  try {
    while (!signal.aborted) {
      if (queue.length === 0) {
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
        continue;
      }
      const batch = queue;
      queue = [];
      for (const event of batch) yield event;
    }
  } finally {
    clearInterval(timer);
    signal.removeEventListener("abort", onAbort);
    unsubscribe();
  }
}
