/**
 * Backend JWT signing keys encrypted at rest.
 *
 * The private key moves from the plaintext `private_jwk` to
 * `private_key_wrapped` (AES-256-GCM under a key-encryption key held outside
 * the database) with `kek_id`, the fingerprint of that key, so it can be
 * rotated. A migration has no key-encryption key, so this one only makes room:
 * the service wraps existing plaintext keys on its first start after it
 * (`src/keys/backend-jwt.ts`) and never writes plaintext again.
 *
 * `private_jwk` stays (nullable) for the rolling upgrade: a replica of the
 * previous version still inserts plaintext keys, and the check below accepts
 * them so it keeps working until it is replaced; newer replicas wrap them.
 */
import { sql } from "kysely";
import type { Kysely } from "kysely";

const UP = [
  sql`ALTER TABLE signing_keys ALTER COLUMN private_jwk DROP NOT NULL`,
  sql`ALTER TABLE signing_keys ADD COLUMN private_key_wrapped bytea`,
  sql`ALTER TABLE signing_keys ADD COLUMN kek_id text`,
  // Exactly one form of the private key per row, and a wrapped key always names its key-encryption key.
  sql`
    ALTER TABLE signing_keys ADD CONSTRAINT signing_keys_private_key_one_form CHECK (
      (private_jwk IS NULL) = (private_key_wrapped IS NOT NULL)
      AND (private_key_wrapped IS NULL) = (kek_id IS NULL)
    )`,
];

/** Applies this migration. */
export async function up(db: Kysely<unknown>): Promise<void> {
  for (const statement of UP) await statement.execute(db);
}

/**
 * Reverts this migration. Wrapped keys cannot be turned back into plaintext
 * without their key-encryption key, so they are deleted: the older version
 * then makes a fresh signing key (backends holding JWTs from the deleted keys
 * see them fail until those expire, at most BACKEND_JWT_TTL).
 */
export async function down(db: Kysely<unknown>): Promise<void> {
  await sql`DELETE FROM signing_keys WHERE private_jwk IS NULL`.execute(db);
  await sql`ALTER TABLE signing_keys DROP CONSTRAINT signing_keys_private_key_one_form`.execute(db);
  await sql`ALTER TABLE signing_keys DROP COLUMN kek_id`.execute(db);
  await sql`ALTER TABLE signing_keys DROP COLUMN private_key_wrapped`.execute(db);
  await sql`ALTER TABLE signing_keys ALTER COLUMN private_jwk SET NOT NULL`.execute(db);
}
