import { defineConfig } from "vitest/config";

/** One config for every test tier; each integration file starts its own servers. */
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: "forks",
  },
});
