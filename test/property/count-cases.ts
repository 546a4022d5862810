/**
 * Vitest global setup: gives property test files a folder to report their
 * case counts in, and prints the total when the run ends, so every run
 * (`npm test`, `npm run fuzz`) states how many generated cases it checked.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestProject } from "vitest/node";

/** Creates the tally folder and hands it to the test files. */
export default function setup(project: TestProject): () => void {
  const dir = mkdtempSync(join(tmpdir(), "property-cases-"));
  project.provide("propertyCaseDir" as never, dir as never);
  return () => {
    let total = 0;
    let files = 0;
    try {
      for (const line of readFileSync(join(dir, "counts"), "utf8").split("\n")) {
        if (line === "") continue;
        total += Number(line);
        files++;
      }
    } catch {
      // No property file ran.
    }
    rmSync(dir, { recursive: true, force: true });
    if (files > 0) console.log(`\nproperty-based cases run: ${total} in ${files} files (FUZZ_SCALE=${process.env["FUZZ_SCALE"] ?? "1"})\n`);
  };
}
