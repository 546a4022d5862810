import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { ConfigError, loadConfig } from "../config.js";
import { TokenError } from "../domain/errors.js";
import { bootstrapAdmin } from "../domain/issue.js";
import { createLogger } from "../logger.js";
import { openDeps } from "../main.js";

const USAGE = `tokenctl: operate the token service

Usage:
  npm run tokenctl -- migrate
      Apply database migrations (the server also does this at start-up).
  npm run tokenctl -- bootstrap --subject <email>
      Create an admin token directly in the store and print only the token
      on stdout. Records a platform_admin_bootstrap security event.

The store is chosen as the server chooses it: DATABASE_URL, else PGlite in
DATA_DIR. Logs go to stderr; stdout carries only what a command returns.
`;

/**
 * The tokenctl entry point. Returns the exit code instead of exiting, so
 * tests can run it in-process.
 */
export async function run(argv: readonly string[], env: Readonly<Record<string, string | undefined>>, stdout: NodeJS.WritableStream): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "help" || command === "--help" || command === "-h") {
    process.stderr.write(USAGE);
    return command === undefined ? 64 : 0;
  }
  const config = loadConfig(env);
  const log = createLogger(config.logLevel);
  switch (command) {
    case "migrate": {
      parseArgs({ args: [...rest], options: {}, strict: true });
      const { database } = await openDeps(config, log);
      await database.close();
      return 0;
    }
    case "bootstrap": {
      const { values } = parseArgs({ args: [...rest], options: { subject: { type: "string" } }, strict: true });
      if (!values.subject) throw new UsageError("bootstrap needs --subject <email>");
      const { database, deps, events } = await openDeps(config, log);
      try {
        const { token, record } = await bootstrapAdmin(deps, values.subject, "cli");
        log.info({ token_id: record.id, token_hint: record.displayHint, subject: record.subject }, "bootstrap admin token created");
        await events.flush();
        stdout.write(`${token}\n`);
      } finally {
        await database.close();
      }
      return 0;
    }
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}

/** A mistake in how tokenctl was called. */
class UsageError extends Error {}

async function main(): Promise<void> {
  try {
    process.exitCode = await run(process.argv.slice(2), process.env, process.stdout);
  } catch (error) {
    if (error instanceof UsageError || (error as { code?: string }).code?.startsWith("ERR_PARSE_ARGS")) {
      process.stderr.write(`tokenctl: ${(error as Error).message}\n\n${USAGE}`);
      process.exitCode = 64; // EX_USAGE
    } else if (error instanceof ConfigError) {
      process.stderr.write(`tokenctl: ${error.message}\n`);
      process.exitCode = 78; // EX_CONFIG
    } else if (error instanceof TokenError) {
      process.stderr.write(`tokenctl: ${error.message}\n`);
      process.exitCode = 1;
    } else {
      process.stderr.write(`tokenctl: ${error instanceof Error ? error.message : String(error)}\n`);
      process.exitCode = 1;
    }
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
