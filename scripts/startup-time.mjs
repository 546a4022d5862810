// Start-up time of `node dist/src/main.js` on embedded PGlite: a fresh data directory (initdb +
// migrations + first-start bootstrap) and the same directory again. Run after `npm run build`:
//   node scripts/startup-time.mjs
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
async function once(dataDir, port) {
  const t0 = performance.now();
  const child = spawn("node", ["dist/src/main.js"], { env: { ...process.env, DATA_DIR: dataDir, GRPC_PORT: String(port), HTTP_PORT: String(port + 1), LOG_LEVEL: "info" }, stdio: ["ignore", "ignore", "pipe"] });
  await new Promise((resolve) => { let buf = ""; child.stderr.on("data", (d) => { buf += d; if (buf.includes("token service listening")) resolve(); }); });
  const ms = performance.now() - t0;
  child.kill("SIGTERM");
  await new Promise((r) => child.on("exit", r));
  return ms;
}
const fresh = [], warm = [];
for (let i = 0; i < 5; i++) {
  const dir = mkdtempSync(join(tmpdir(), "tis-start-"));
  fresh.push(await once(join(dir, "data"), 52000 + i * 2));
  warm.push(await once(join(dir, "data"), 52100 + i * 2));
  rmSync(dir, { recursive: true, force: true });
}
const med = (a) => a.sort((x, y) => x - y)[Math.floor(a.length / 2)];
console.log(JSON.stringify({ freshMedianMs: Math.round(med(fresh)), warmMedianMs: Math.round(med(warm)), fresh: fresh.map(Math.round), warm: warm.map(Math.round) }));
