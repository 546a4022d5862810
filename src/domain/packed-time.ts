/**
 * Times kept by the hundreds of thousands (cached tokens and cache entries)
 * as small integers. V8 (64-bit, no pointer compression) stores an integer
 * within ±2^31 in the field itself; any other number, a ms timestamp
 * included, is a separate 16-byte HeapNumber behind an 8-byte field. A ms
 * timestamp is split into whole seconds since 2020 (within ±2^31 until 2088)
 * and the milliseconds left over (0–999, ten bits, packed beside other small
 * values by the caller). Outside that range the numbers are still exact, only
 * larger in memory.
 */

/** 2020-01-01T00:00:00Z in seconds since the Unix epoch. */
const EPOCH_S = 1_577_836_800;

/** Whole seconds since 2020 of a ms timestamp (floor, so the ms part is 0–999). */
export function secondsOf(ms: number): number {
  return Math.floor(ms / 1000) - EPOCH_S;
}

/** The ms left over after {@link secondsOf}: 0–999. */
export function millisOf(ms: number): number {
  return ms - Math.floor(ms / 1000) * 1000;
}

/** The ms timestamp back from its two parts. */
export function msOf(seconds: number, millis: number): number {
  return (seconds + EPOCH_S) * 1000 + millis;
}
