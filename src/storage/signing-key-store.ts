/**
 * `SigningKeyStore` on Kysely: backend JWT signing keys shared by replicas.
 * It stores private keys as it is given them (wrapped by `src/keys/`) and
 * never sees a key-encryption key.
 */
import type { Kysely, Selectable } from "kysely";
import type { SigningKey, SigningKeyStore, StoredPrivateKey } from "../domain/ports.js";
import { translatingErrors } from "./errors.js";
import type { Database, SigningKeysTable } from "./schema.js";

/** Signing key persistence. Every store failure surfaces as a `TokenError`. */
export class KyselySigningKeyStore implements SigningKeyStore {
  /** @param db the handle from `openDatabase`, already migrated */
  constructor(private readonly db: Kysely<Database>) {}

  /** Every key, newest first. */
  list(): Promise<SigningKey[]> {
    return translatingErrors(async () => {
      const rows = await this.db.selectFrom("signing_keys").selectAll().orderBy("created_at", "desc").orderBy("kid", "desc").execute();
      return rows.map(toSigningKey);
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
          ...privateColumns(key.privateKey),
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

  /**
   * Re-seals keys in one transaction with every row locked (`FOR UPDATE`),
   * so replicas and `tokenctl keys rewrap` running at once take turns and
   * each sees the others' result: the second finds nothing left to do.
   * An error thrown by `reseal` (a key that cannot be unwrapped) is rethrown
   * as it is, after the rollback; store failures become `TokenError`s.
   */
  async reseal(reseal: (key: SigningKey) => StoredPrivateKey | undefined): Promise<number> {
    let refused: { error: unknown } | undefined;
    try {
      return await translatingErrors(() =>
        this.db.transaction().execute(async (trx) => {
          const rows = await trx.selectFrom("signing_keys").selectAll().orderBy("kid").forUpdate().execute();
          let changed = 0;
          for (const row of rows) {
            let next: StoredPrivateKey | undefined;
            try {
              next = reseal(toSigningKey(row));
            } catch (error) {
              refused = { error };
              throw error;
            }
            if (next === undefined) continue;
            await trx.updateTable("signing_keys").set(privateColumns(next)).where("kid", "=", row.kid).execute();
            changed += 1;
          }
          return changed;
        }),
      );
    } catch (error) {
      throw refused ? refused.error : error;
    }
  }
}

function toSigningKey(row: Selectable<SigningKeysTable>): SigningKey {
  return {
    kid: row.kid,
    alg: row.alg,
    privateKey: row.private_key_wrapped !== null && row.kek_id !== null ? { kekId: row.kek_id, wrapped: new Uint8Array(row.private_key_wrapped) } : { plaintextJwk: row.private_jwk ?? {} },
    publicJwk: row.public_jwk,
    createdAt: row.created_at,
    activatesAt: row.activates_at,
  };
}

/** The three private-key columns for one form; the other form's columns are cleared (the table's check wants exactly one). */
function privateColumns(key: StoredPrivateKey): { private_jwk: string | null; private_key_wrapped: Uint8Array | null; kek_id: string | null } {
  return key.kekId === undefined
    ? { private_jwk: JSON.stringify(key.plaintextJwk), private_key_wrapped: null, kek_id: null }
    : { private_jwk: null, private_key_wrapped: key.wrapped, kek_id: key.kekId };
}
