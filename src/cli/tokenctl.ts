import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { ConfigError, loadConfig } from "../config.js";
import { TokenError } from "../domain/errors.js";
import { DEFAULT_ADDR, isApiCommand, runApiCommand, runCommand, type CliIo } from "./api-commands.js";
import { LIFECYCLE, LIFECYCLE_USAGE, isLifecycleCommand } from "./lifecycle-commands.js";
import { KEYS_USAGE } from "./keys.js";
import { UsageError } from "./usage.js";

const USAGE = `tokenctl: operate the token service

Usage:
  npm run tokenctl -- <command> [options]      (or: node dist/src/cli/tokenctl.js …)

Commands that call the running service's API (Connect port):
  issue --name <name> [--subject <s>] [--full-name <n>] [--admin]
        [--teams a,b] [--scopes a,b] [--namespaces a,b] [--ttl 30d|12h|90m|3600s]
        [--metadata k=v]... [--networks cidr,cidr] [--rate-limit 600/1m] [--json]
      Issue a token and print only the token on stdout (with --json the whole
      answer, token included: it is shown this once). Lists are split on
      commas and sent as typed; the service decides the claims. Warns on
      stderr when the token is an admin token or has any scope that is not a
      read scope (one ending in .read or :read).
  list [--subject <s>] [--team <t>] [--issued-by <token id>] [--include-revoked]
       [--include-expired] [--page-size <n>] [--page-token <t>] [--all] [--json]
      List tokens, newest first: a table, or one JSON object per line with
      --json. --issued-by shows only tokens issued by that token. --all
      follows every page.
  revoke (<token> | - | --id <uuid> | --legacy-jti <jti>) [--cascade] [--reason <r>] [--json]
      Revoke a token by value, by id, or a legacy JWT by its jti. --cascade
      also revokes every token it issued, and theirs, all the way down.
  introspect (<token> | -) [--json]
      Show whether a token is active (or why not) and its claims.
${LIFECYCLE_USAGE}
  A token argument of - is read from stdin, which keeps it out of shell
  history and ps:   tokenctl revoke - < leaked.txt

  Every API command takes:
    --addr <url>        service address; else TOKENCTL_ADDR; else ${DEFAULT_ADDR}.
                        http:// and https:// speak Connect over HTTP/1.1;
                        h2c:// cleartext HTTP/2, h2:// HTTP/2 over TLS.
    --token-file <path> file holding your own (caller) token; else TOKENCTL_TOKEN.
                        There is no --token option: it would show in ps and history.
  Exit codes: 0 done, 1 the service refused or could not be reached
  ("tokenctl: <code>: <message>" on stderr), 64 bad usage or no caller token.

Commands that work on the store directly:
  migrate
      Apply database migrations (the server also does this at start-up).
  bootstrap --subject <email>
      Create an admin token directly in the store and print only the token
      on stdout. Records a platform_admin_bootstrap security event.
  The store is chosen as the server chooses it: DATABASE_URL, else PGlite in
  DATA_DIR. Logs go to stderr.

${KEYS_USAGE}
Configuration:
  config check
      Validate the configuration in the environment exactly as the server
      does at start-up (every key, the legacy JWT key files, the TLS files),
      without opening the store or a port. Prints "configuration OK" and the
      effective values, secrets redacted; or names every bad key on stderr
      and exits 78.

stdout carries only what a command returns; everything else goes to stderr.
`;

/**
 * The tokenctl entry point. Returns the exit code instead of exiting, so
 * tests can run it in-process.
 */
export async function run(argv: readonly string[], env: Readonly<Record<string, string | undefined>>, io: CliIo): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "help" || command === "--help" || command === "-h") {
    io.stderr.write(USAGE);
    return command === undefined ? 64 : 0;
  }
  // API commands are clients: they need neither the server's configuration
  // nor its store, so they skip both (and the cost of loading them).
  if (isApiCommand(command)) return runApiCommand(command, rest, env, io);
  if (isLifecycleCommand(command)) return runCommand(LIFECYCLE[command], rest, env, io);
  // Loaded on demand, like the store modules: it pulls in the TLS and JWT key loaders.
  if (command === "config") return (await import("./config-check.js")).configCommand(rest, env, io);
  if (command === "keys") return (await import("./keys.js")).keysCommand(rest, env, io);

  const config = loadConfig(env);
  switch (command) {
    case "migrate": {
      parseArgs({ args: [...rest], options: {}, strict: true });
      const { log, openDeps } = await storeModules(config.logLevel);
      const { database } = await openDeps(config, log);
      await database.close();
      return 0;
    }
    case "bootstrap": {
      const { values } = parseArgs({ args: [...rest], options: { subject: { type: "string" } }, strict: true });
      if (!values.subject) throw new UsageError("bootstrap needs --subject <email>");
      const { log, openDeps, bootstrapAdmin } = await storeModules(config.logLevel);
      const { database, deps, events } = await openDeps(config, log);
      try {
        const { token, record } = await bootstrapAdmin(deps, values.subject, "cli");
        log.info({ token_id: record.id, token_hint: record.displayHint, subject: record.subject }, "bootstrap admin token created");
        await events.flush();
        io.stdout.write(`${token}\n`);
      } finally {
        await database.close();
      }
      return 0;
    }
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}

/**
 * The store side of tokenctl, loaded only by the commands that use it: it
 * pulls in both database drivers and the servers, which would add about
 * half a second to every API command.
 */
async function storeModules(level: Parameters<typeof import("../logger.js").createLogger>[0]) {
  const [{ createLogger }, { openDeps }, { bootstrapAdmin }] = await Promise.all([import("../logger.js"), import("../main.js"), import("../domain/issue.js")]);
  return { log: createLogger(level), openDeps, bootstrapAdmin };
}

async function main(): Promise<void> {
  try {
    process.exitCode = await run(process.argv.slice(2), process.env, { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr });
  } catch (error) {
    if (error instanceof UsageError || (error as { code?: string }).code?.startsWith("ERR_PARSE_ARGS")) {
      // The message first and alone: the full help would bury it.
      process.stderr.write(`tokenctl: ${(error as Error).message}\nRun \`tokenctl help\` for usage.\n`);
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
