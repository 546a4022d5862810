/**
 * Counts distinct strings in bounded memory, for folded security events:
 * exact (a Set of 32-bit hashes, so collisions are negligible at this size)
 * up to {@link EXACT_LIMIT} values, then a HyperLogLog sketch
 * of 256 one-byte registers (Flajolet et al., 2007), whose standard error is
 * 1.04 / √256 ≈ 6.5 %. Either way it never holds more than a few kilobytes,
 * however many values an attacker sends.
 */

/** Values counted exactly before switching to the sketch. */
export const EXACT_LIMIT = 64;

/** log2 of the register count. */
const P = 8;
const M = 1 << P;
/** α·m² of the raw HyperLogLog estimate, α for m ≥ 128. */
const ALPHA_MM = (0.7213 / (1 + 1.079 / M)) * M * M;

/** A distinct counter that also keeps the first few values it saw. */
export class DistinctCount {
  /** 32-bit hashes of the values seen, while exact: a few bytes each, whatever the values' length. */
  private exact: Set<number> | undefined = new Set();
  private registers: Uint8Array | undefined;
  private readonly sampled: string[] = [];

  /** @param sampleSize how many of the first distinct values to keep as a sample */
  constructor(private readonly sampleSize: number) {}

  /** Counts a value. A few integer operations once the sketch is in use. */
  add(value: string): void {
    const h = hash32(value);
    const exact = this.exact;
    if (exact !== undefined) {
      if (exact.has(h)) return;
      if (this.sampled.length < this.sampleSize) this.sampled.push(value);
      exact.add(h);
      if (exact.size <= EXACT_LIMIT) return;
      this.registers = new Uint8Array(M);
      for (const seen of exact) this.observe(seen);
      this.exact = undefined;
      return;
    }
    this.observe(h);
  }

  /** The number of distinct values: exact up to {@link EXACT_LIMIT}, estimated above. */
  get size(): number {
    if (this.exact !== undefined) return this.exact.size;
    const registers = this.registers!;
    let sum = 0;
    let zeros = 0;
    for (const r of registers) {
      sum += 2 ** -r;
      if (r === 0) zeros++;
    }
    let estimate = ALPHA_MM / sum;
    // Small-range correction: linear counting while registers are still empty.
    if (estimate <= 2.5 * M && zeros > 0) estimate = M * Math.log(M / zeros);
    // Never report fewer than were counted exactly before the switch.
    return Math.max(EXACT_LIMIT + 1, Math.round(estimate));
  }

  /** The first distinct values seen, in order. */
  get sample(): readonly string[] {
    return this.sampled;
  }

  private observe(h: number): void {
    const index = h >>> (32 - P);
    // Rank: position of the first 1 bit in the remaining 24 bits (1-based), 25 when all are 0.
    const rest = (h << P) >>> 0;
    const rank = rest === 0 ? 32 - P + 1 : Math.clz32(rest) + 1;
    if (rank > this.registers![index]!) this.registers![index] = rank;
  }
}

/** FNV-1a over UTF-16 code units, finished with MurmurHash3's fmix32 so every bit depends on every input bit. */
function hash32(value: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < value.length; i++) {
    h ^= value.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
