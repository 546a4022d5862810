/**
 * `SigningKeyStore` on Kysely: backend JWT signing keys shared by replicas.
 */
import type { Kysely } from "kysely";
import type { SigningKey, SigningKeyStore } from "../domain/ports.js";
import { translatingErrors } from "./errors.js";
import type { Database } from "./schema.js";

/** Signing key persistence. Every failure surfaces as a `TokenError`. */
export class KyselySigningKeyStore implements SigningKeyStore {
  /** @param db the handle from `openDatabase`, already migrated */
  constructor(private readonly db: Kysely<Database>) {}

  /** Every key, newest first. */
  list(): Promise<SigningKey[]> {
    return translatingErrors(async () => {
      const rows = await this.db.selectFrom("signing_keys").selectAll().orderBy("created_at", "desc").orderBy("kid", "desc").execute();
      return rows.map((row) => ({
        kid: row.kid,
        alg: row.alg,
        privateJwk: row.private_jwk,
        publicJwk: row.public_jwk,
        createdAt: row.created_at,
        activatesAt: row.activates_at,
      }));
    });
  }

  /** Stores a key unless one with its kid exists. */
  insert(key: SigningKey): Promise<void> {
    return translatingErrors(async () => {
      await this.db
        .insertInto("signing_keys")
        .values({
          kid: key.kid,
          alg: key.alg,
          private_jwk: JSON.stringify(key.privateJwk),
          public_jwk: JSON.stringify(key.publicJwk),
          created_at: key.createdAt,
          activates_at: key.activatesAt,
        })
        .onConflict((oc) => oc.column("kid").doNothing())
        .execute();
    });
  }

  /** Deletes the given keys. */
  prune(kids: readonly string[]): Promise<void> {
    if (kids.length === 0) return Promise.resolve();
    return translatingErrors(async () => {
      await this.db.deleteFrom("signing_keys").where("kid", "in", [...kids]).execute();
    });
  }
}
