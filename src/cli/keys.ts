/**
 * `tokenctl keys`: the stored backend JWT signing keys and the key-encryption
 * key (KEK) that wraps them. Works on the store directly, as the server does,
 * with the server's configuration (DATABASE_URL or DATA_DIR, KEY_ENCRYPTION_KEY…).
 * Never prints key material: kids, algorithms, dates and KEK ids only.
 */
import { parseArgs } from "node:util";
import { loadConfig } from "../config.js";
import type { SigningKey } from "../domain/ports.js";
import type { KeyEncryptionKeys } from "../keys/key-wrap.js";
import type { CliIo } from "./api-commands.js";
import { UsageError } from "./usage.js";

/** Usage of `tokenctl keys`, for the tokenctl help. */
export const KEYS_USAGE = `Signing keys at rest (on the store directly, with the server's configuration):
  keys status
      List the stored backend JWT signing keys (kid, algorithm, created,
      activates) and which key-encryption key wraps each: "current",
      "previous", "unknown KEK <id>" or "PLAINTEXT" (a row from before keys
      were encrypted). Exit 0 when every key is under the current KEK, 1 if not.
  keys rewrap
      Re-wrap every stored key under the current KEY_ENCRYPTION_KEY (keys
      under KEY_ENCRYPTION_KEY_PREVIOUS, and plaintext rows) in one
      transaction with the rows locked: safe while replicas run, and running
      it again changes nothing. Prints how many keys were re-wrapped. Fails,
      changing nothing, if any key cannot be decrypted with the configured KEKs.
`;

/**
 * Runs `tokenctl keys <status|rewrap>`; returns the exit code.
 */
export async function keysCommand(args: readonly string[], env: Readonly<Record<string, string | undefined>>, io: CliIo): Promise<number> {
  const { positionals } = parseArgs({ args: [...args], options: {}, strict: true, allowPositionals: true });
  const [sub, ...extra] = positionals;
  if ((sub !== "status" && sub !== "rewrap") || extra.length > 0) throw new UsageError("keys needs one subcommand: keys status, or keys rewrap");

  const config = loadConfig(env);
  // Loaded here, not at the top: they pull in both database drivers (as tokenctl's other store commands do).
  const [{ createLogger }, { openDeps }, { KyselySigningKeyStore }] = await Promise.all([import("../logger.js"), import("../main.js"), import("../storage/signing-key-store.js")]);
  const log = createLogger(config.logLevel, io.stderr);
  const { database, keks } = await openDeps(config, log);
  try {
    const store = new KyselySigningKeyStore(database.db);
    if (sub === "status") return status(await store.list(), keks, io);
    const rewrapped = await store.reseal((key) => keks.rewrap(key));
    const total = (await store.list()).length;
    log.info({ count: rewrapped, kek_id: keks.current.id }, "signing keys re-wrapped under the current key-encryption key");
    io.stdout.write(`re-wrapped ${rewrapped} of ${total} signing key${total === 1 ? "" : "s"} under key-encryption key ${keks.current.id}${rewrapped < total ? ` (${total - rewrapped} already were)` : ""}\n`);
    return 0;
  } finally {
    await database.close();
  }
}

function status(keys: readonly SigningKey[], keks: KeyEncryptionKeys, io: CliIo): number {
  const previous = new Set(keks.previousIds);
  const rows = keys.map((k) => {
    const id = k.privateKey.kekId;
    const state = id === undefined ? "PLAINTEXT" : id === keks.current.id ? `current ${id}` : previous.has(id) ? `previous ${id}` : `unknown KEK ${id}`;
    return [k.kid, k.alg, k.createdAt.toISOString(), k.activatesAt.toISOString(), state] as const;
  });
  const header = ["KID", "ALG", "CREATED", "ACTIVATES", "WRAPPED UNDER"] as const;
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: readonly string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd();
  io.stdout.write([line(header), ...rows.map(line)].join("\n") + "\n");
  const behind = keys.filter((k) => !keks.isCurrent(k)).length;
  if (behind > 0) io.stderr.write(`tokenctl: ${behind} of ${keys.length} signing keys are not under the current key-encryption key ${keks.current.id}; run: tokenctl keys rewrap\n`);
  return behind === 0 ? 0 : 1;
}
