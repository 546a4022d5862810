/**
 * Preloaded into the service whose memory is measured
 * (`node --expose-gc --import dist/bench/gc-signal.js dist/src/main.js`):
 * on SIGUSR2 it runs a full garbage collection, waits for memory to settle,
 * and prints one line, `{"benchGc": process.memoryUsage(), "spaces": …}`,
 * so the runner reads RSS (and the JS heap, per V8 space) without garbage
 * that merely has not been collected yet. It adds nothing else to the process.
 *
 * Settling: V8 sweeps and hands freed pages back to the OS on background
 * threads after the GC returns, so RSS read at once still counts memory
 * already given back (tens of MiB after a 100,000-token fill). The hook
 * collects again every half second until RSS stops falling (by under 1 MiB)
 * or ten seconds pass. `spaces` (used and committed bytes per V8 heap space)
 * is the evidence of where RSS above the live heap sits.
 */
import { getHeapSpaceStatistics } from "node:v8";

const gc = (globalThis as { gc?: () => void }).gc;

async function settledReport(): Promise<void> {
  gc?.();
  gc?.();
  let rss = process.memoryUsage.rss();
  for (let waited = 0; gc !== undefined && waited < 10_000; waited += 500) {
    await new Promise((resolve) => setTimeout(resolve, 500));
    gc();
    const now = process.memoryUsage.rss();
    const fell = rss - now;
    rss = now;
    if (fell < 1 << 20) break;
  }
  const spaces: Record<string, { used: number; committed: number }> = {};
  for (const space of getHeapSpaceStatistics()) spaces[space.space_name] = { used: space.space_used_size, committed: space.physical_space_size };
  process.stdout.write(`${JSON.stringify({ benchGc: process.memoryUsage(), spaces })}\n`);
}

process.on("SIGUSR2", () => {
  void settledReport();
});
