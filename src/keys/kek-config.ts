/**
 * Where the key-encryption keys come from: configuration (a value or a file),
 * or, in development only, a file the service makes in DATA_DIR.
 */
import { randomBytes } from "node:crypto";
import { link, mkdir, readFile, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ConfigError, type Config } from "../config.js";
import type { Logger } from "../domain/ports.js";
import { KEK_BYTES, KeyEncryptionKeys, decodeKek, type Kek } from "./key-wrap.js";

/** Name of the development KEK file in DATA_DIR. */
export const DEV_KEK_FILE = "key-encryption-key";

/** How to make a KEK, quoted wherever one is missing. */
export const MAKE_KEK = "make one with `openssl rand -base64 32` and set KEY_ENCRYPTION_KEY to it (from your secret store), or write it to a file (mode 0600) named by KEY_ENCRYPTION_KEY_FILE";

/** The KEKs and where the current one came from (for `tokenctl config check`). */
export interface LoadedKeks {
  readonly keys: KeyEncryptionKeys;
  readonly source: string;
}

/**
 * Reads the current and previous KEKs named by configuration.
 *
 * Staging and production refuse to run without one: the signing keys would
 * otherwise sit in the database in a form anyone who reads it can use.
 * Development without one uses `DATA_DIR/key-encryption-key`, made on first
 * use (mode 0600) with a warning; with DATA_DIR `memory://` and the embedded
 * store, a KEK that lives as long as the process (the keys do not outlive it).
 *
 * @throws ConfigError naming the key at fault (never its value)
 */
export async function loadKeyEncryptionKeys(config: Config, log: Logger): Promise<LoadedKeks> {
  return (await resolveKeks(config, log, true))!;
}

/**
 * What `loadKeyEncryptionKeys` would use, for `tokenctl config check`: reads
 * and validates the configured KEKs but makes no development key file.
 *
 * @returns a description without key material
 * @throws ConfigError as `loadKeyEncryptionKeys`
 */
export async function describeKeyEncryptionKeys(config: Config, log: Logger): Promise<string> {
  const loaded = await resolveKeks(config, log, false);
  if (loaded === undefined) {
    const dir = onDiskDir(config.dataDir);
    if (dir === undefined) return "none configured; development with an in-memory store generates one per process";
    const path = join(dir, DEV_KEK_FILE);
    const existing = await readFile(path, "utf8").then(decodeKek, () => undefined);
    return existing ? `none configured; development uses ${existing.id} from ${path}` : `none configured; development uses ${path} (made on first start)`;
  }
  const previous = loaded.keys.previousIds;
  return `current ${loaded.keys.current.id} from ${loaded.source}${previous.length > 0 ? `, previous ${previous.join(", ")} (decrypt only)` : ""}`;
}

/** `create`: whether development may make (or generate) a key when none is configured. */
async function resolveKeks(config: Config, log: Logger, create: boolean): Promise<LoadedKeks | undefined> {
  const problems: string[] = [];
  const read = async (key: string, value: string | undefined, file: string | undefined): Promise<Kek | undefined> => {
    try {
      if (value !== undefined) return decodeKek(value);
      if (file !== undefined) return decodeKek(await readFile(file, "utf8"));
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      problems.push(file !== undefined && value === undefined ? `${key}_FILE: cannot use ${file} as a key-encryption key (${code ?? (error as Error).message})` : `${key}: ${(error as Error).message}`);
    }
    return undefined;
  };
  const current = await read("KEY_ENCRYPTION_KEY", config.keyEncryptionKey, config.keyEncryptionKeyFile);
  const previous = await read("KEY_ENCRYPTION_KEY_PREVIOUS", config.keyEncryptionKeyPrevious, config.keyEncryptionKeyPreviousFile);
  if (problems.length > 0) throw new ConfigError(problems);

  if (current !== undefined) {
    const source = config.keyEncryptionKey !== undefined ? "KEY_ENCRYPTION_KEY" : `KEY_ENCRYPTION_KEY_FILE ${config.keyEncryptionKeyFile}`;
    return { keys: new KeyEncryptionKeys(current, previous ? [previous] : []), source };
  }
  if (previous !== undefined) throw new ConfigError([`KEY_ENCRYPTION_KEY: must be set when KEY_ENCRYPTION_KEY_PREVIOUS is (the previous key only decrypts; ${MAKE_KEK})`]);
  if (config.environment !== "development") {
    throw new ConfigError([`KEY_ENCRYPTION_KEY: required in ${config.environment}: the key-encryption key that encrypts the stored signing keys, kept outside the database; ${MAKE_KEK}`]);
  }

  const dir = onDiskDir(config.dataDir);
  if (dir === undefined) {
    if (config.databaseUrl !== undefined) {
      throw new ConfigError([`KEY_ENCRYPTION_KEY: not set, and DATA_DIR is ${config.dataDir}, so a development key could not outlive this process while the signing keys it encrypts stay in PostgreSQL; ${MAKE_KEK}, or set DATA_DIR to a directory`]);
    }
    if (!create) return undefined;
    log.warn({ data_dir: config.dataDir }, "KEY_ENCRYPTION_KEY not set: development with an in-memory store uses a key-encryption key that lives as long as this process");
    return { keys: new KeyEncryptionKeys(decodeKek(randomBytes(KEK_BYTES).toString("base64"))), source: "generated for this process (development, in-memory store)" };
  }
  const path = join(dir, DEV_KEK_FILE);
  if (!create) return undefined;
  const { kek, created } = await readOrCreate(path);
  log.warn(
    { path, kek_id: kek.id },
    created
      ? "KEY_ENCRYPTION_KEY not set: development made a key-encryption key in DATA_DIR, next to the data it protects; staging and production refuse to start without KEY_ENCRYPTION_KEY"
      : "KEY_ENCRYPTION_KEY not set: development uses the key-encryption key in DATA_DIR, next to the data it protects; staging and production refuse to start without KEY_ENCRYPTION_KEY",
  );
  return { keys: new KeyEncryptionKeys(kek), source: `${path} (development)` };
}

/** The directory a DATA_DIR names on disk (as `openDatabase` reads it), or undefined for `memory://` and other schemes. */
export function onDiskDir(dataDir: string): string | undefined {
  if (dataDir.startsWith("file://")) return dataDir.slice("file://".length);
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(dataDir) ? undefined : dataDir;
}

/**
 * Reads the development KEK file, or makes it. The new key is written to a
 * private temporary file and linked into place, which fails if another
 * process (a second replica, tokenctl) made one first: then that one is read,
 * so every process ends up with the same key and none sees a half-written file.
 */
async function readOrCreate(path: string): Promise<{ kek: Kek; created: boolean }> {
  try {
    return { kek: decodeKek(await readFile(path, "utf8")), created: false };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw devFileProblem(path, error);
  }
  try {
    await mkdir(join(path, ".."), { recursive: true });
    const temporary = `${path}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
    await writeFile(temporary, `${randomBytes(KEK_BYTES).toString("base64")}\n`, { mode: 0o600, flag: "wx" });
    try {
      await link(temporary, path);
      return { kek: decodeKek(await readFile(path, "utf8")), created: true };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      return { kek: decodeKek(await readFile(path, "utf8")), created: false };
    } finally {
      await unlink(temporary).catch(() => undefined);
    }
  } catch (error) {
    throw devFileProblem(path, error);
  }
}

function devFileProblem(path: string, error: unknown): ConfigError {
  return new ConfigError([`KEY_ENCRYPTION_KEY: not set, and the development key file ${path} cannot be used (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}); ${MAKE_KEK}`]);
}
