/**
 * `ServerSecretStore` on Kysely: secrets every replica must share, kept in
 * the database so no operator has to configure (or rotate in lockstep) them.
 */
import type { Kysely } from "kysely";
import type { ServerSecretStore } from "../domain/ports.js";
import { translatingErrors } from "./errors.js";
import type { Database } from "./schema.js";

/** Server secrets in the `server_secrets` table. Every failure surfaces as a `TokenError`. */
export class KyselyServerSecretStore implements ServerSecretStore {
  /** @param db the handle from `openDatabase`, already migrated */
  constructor(private readonly db: Kysely<Database>) {}

  /**
   * The stored secret, storing `candidate` first when there is none. The
   * insert is `ON CONFLICT DO NOTHING` on the primary key, so of replicas
   * starting together exactly one insert wins and every one of them reads
   * that row back: no lock, no transaction, no retry.
   */
  getOrCreate(name: string, candidate: Uint8Array): Promise<Uint8Array> {
    return translatingErrors(async () => {
      await this.db
        .insertInto("server_secrets")
        .values({ name, secret: candidate })
        .onConflict((oc) => oc.column("name").doNothing())
        .execute();
      const row = await this.db.selectFrom("server_secrets").select("secret").where("name", "=", name).executeTakeFirstOrThrow();
      // `pg` gives a Buffer, PGlite a Uint8Array: copy into one plain form.
      return Uint8Array.from(row.secret);
    });
  }
}
