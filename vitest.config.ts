import { defineConfig } from "vitest/config";

/** One config for every test tier; each integration file starts its own servers. */
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Sums and prints the generated cases the property tests ran.
    globalSetup: ["test/property/count-cases.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: "forks",
  },
});
