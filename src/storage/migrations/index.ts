/**
 * Every migration, listed in code rather than found by scanning a folder, so
 * the built service (dist/) and the tests run the same set.
 */
import type { Migration, MigrationProvider } from "kysely";
import * as m0001 from "./0001_initial.js";
import * as m0002 from "./0002_legacy_jwt.js";
import * as m0003 from "./0003_signing_keys.js";
import * as m0004 from "./0004_capped_insert.js";
import * as m0005 from "./0005_wrapped_signing_keys.js";
import * as m0006 from "./0006_issued_by.js";
import * as m0007 from "./0007_server_secrets.js";
import * as m0008 from "./0008_security_event_folding.js";
import * as m0009 from "./0009_revocation_log.js";
import * as m0010 from "./0010_rotation_and_bulk_revocation.js";
import * as m0011 from "./0011_usage_binding.js";
import * as m0012 from "./0012_token_last_used.js";
import * as m0014 from "./0014_revoke_in_one_call.js";

/**
 * The migrations by name. Kysely applies them in name order and refuses to
 * start when an applied one is missing, so names never change once released.
 */
export const MIGRATIONS: Readonly<Record<string, Migration>> = Object.freeze({
  "0001_initial": m0001,
  "0002_legacy_jwt": m0002,
  "0003_signing_keys": m0003,
  "0004_capped_insert": m0004,
  "0005_wrapped_signing_keys": m0005,
  "0006_issued_by": m0006,
  "0007_server_secrets": m0007,
  "0008_security_event_folding": m0008,
  "0009_revocation_log": m0009,
  "0010_rotation_and_bulk_revocation": m0010,
  "0011_usage_binding": m0011,
  "0012_token_last_used": m0012,
  "0014_revoke_in_one_call": m0014,
});

/** A Kysely `MigrationProvider` serving {@link MIGRATIONS}. */
export const migrationProvider: MigrationProvider = Object.freeze({
  getMigrations: async (): Promise<Record<string, Migration>> => ({ ...MIGRATIONS }),
});
