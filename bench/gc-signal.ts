/**
 * Preloaded into the service whose memory is measured
 * (`node --expose-gc --import dist/bench/gc-signal.js dist/src/main.js`):
 * on SIGUSR2 it runs a full garbage collection and prints one line,
 * `{"benchGc": process.memoryUsage()}`, so the runner reads RSS (and the
 * JS heap) without garbage that merely has not been collected yet. It adds
 * nothing else to the process.
 */
const gc = (globalThis as { gc?: () => void }).gc;

process.on("SIGUSR2", () => {
  gc?.();
  gc?.();
  process.stdout.write(`${JSON.stringify({ benchGc: process.memoryUsage() })}\n`);
});
