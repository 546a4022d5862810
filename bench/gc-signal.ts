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
 * and `mappings` (RSS by kind of mapping) are the evidence of where RSS
 * above the live heap sits.
 */
import { readFileSync } from "node:fs";
import { getHeapSpaceStatistics } from "node:v8";

/**
 * RSS by kind of mapping (/proc/self/smaps), in bytes: `brk` is the C
 * allocator's main arena ([heap]), `anonymous` every other anonymous
 * mapping (V8's heap pages, other allocator arenas, thread stacks), `file`
 * code and data mapped from files. Says whether RSS above V8's committed
 * heap is V8's or the C allocator's.
 */
function rssByMapping(): { brk: number; anonymous: number; file: number } {
  const parts = { brk: 0, anonymous: 0, file: 0 };
  let kind: keyof typeof parts = "anonymous";
  for (const line of readFileSync("/proc/self/smaps", "utf8").split("\n")) {
    const header = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (header) kind = header[1] === "[heap]" ? "brk" : header[1] === "" || header[1]!.startsWith("[") ? "anonymous" : "file";
    else if (line.startsWith("Rss:")) parts[kind] += Number(line.split(/\s+/)[1]) * 1024;
  }
  return parts;
}

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
  process.stdout.write(`${JSON.stringify({ benchGc: process.memoryUsage(), spaces, mappings: rssByMapping() })}\n`);
}

process.on("SIGUSR2", () => {
  void settledReport();
});
