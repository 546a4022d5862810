import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { invalidArgument } from "./errors.js";
import type { Cursor, PageTokenCodec, ServerSecretStore } from "./ports.js";
import { EARLIEST_TIME_MS, LATEST_TIME_MS, UUID_PATTERN } from "./validation.js";

/** Bytes of the page-token key (the HMAC-SHA256 block is 64; RFC 2104 §3 asks for at least the output length, 32). */
export const PAGE_TOKEN_KEY_BYTES = 32;

/** Where the page-token key is kept in the server's secret store. */
export const PAGE_TOKEN_SECRET_NAME = "page_token_hmac";

/**
 * The longest page token looked at. Most are about 150 characters, but a
 * legacy-usage cursor holds a subject of up to 256 characters, which JSON
 * may escape to six bytes each and base64url grows by a third: about 2,200.
 */
const MAX_PAGE_TOKEN_LENGTH = 4096;

const NOT_OURS = "is not a page token from this service";

/**
 * Makes and reads page tokens. A page token is `body.mac`: the body is
 * base64url JSON (version, cursor and a hash of the filters it was made
 * for), the mac is HMAC-SHA256 of the body under a key every replica shares
 * (RFC 2104), so a page from one replica continues on another and a token
 * that was forged or altered is refused before its body is even parsed.
 * Binding the filters refuses a token reused with other filters rather than
 * silently returning a wrong page.
 */
export class PageTokens implements PageTokenCodec {
  readonly #key: Buffer;

  /** @param key at least {@link PAGE_TOKEN_KEY_BYTES} random bytes, the same on every replica */
  constructor(key: Uint8Array) {
    if (key.byteLength < PAGE_TOKEN_KEY_BYTES) throw new Error(`the page-token key must have at least ${PAGE_TOKEN_KEY_BYTES} bytes`);
    this.#key = Buffer.from(key);
  }

  /** The token for the page after `cursor`, under these filters. */
  encode(cursor: Cursor, filters: unknown): string {
    const body = Buffer.from(JSON.stringify({ v: 2, t: cursor.at.getTime(), i: cursor.id, f: filterHash(filters) })).toString("base64url");
    return `${body}.${this.#mac(body).toString("base64url")}`;
  }

  /**
   * Reads a page token made by `encode` for the same filters; empty means the
   * first page. Anything else is `invalid_argument` naming `field`, with a
   * message that never repeats the token.
   *
   * @param isId whether the cursor's tie-breaker has the shape of an id of this list
   */
  decode(field: string, token: string, filters: unknown, isId: (id: string) => boolean = (id) => UUID_PATTERN.test(id)): Cursor | undefined {
    if (token === "") return undefined;
    if (token.length > MAX_PAGE_TOKEN_LENGTH) throw invalidArgument(field, NOT_OURS);
    const dot = token.indexOf(".");
    if (dot <= 0) throw invalidArgument(field, NOT_OURS);
    const body = token.slice(0, dot);
    // Compared as text, so no other spelling of the same bytes (base64url's
    // unused low bits) passes; and in constant time, as the mac is the only
    // witness of the key.
    const presented = Buffer.from(token.slice(dot + 1), "utf8");
    const expected = Buffer.from(this.#mac(body).toString("base64url"), "utf8");
    if (presented.length !== expected.length || !timingSafeEqual(presented, expected)) throw invalidArgument(field, NOT_OURS);
    let parsed: unknown;
    try {
      parsed = JSON.parse(Buffer.from(body, "base64url").toString("utf8"));
    } catch {
      throw invalidArgument(field, NOT_OURS);
    }
    const { v, t, i, f } = (parsed !== null && typeof parsed === "object" ? parsed : {}) as Record<string, unknown>;
    // Authenticated, so made by us; checked anyway, so a bug or a key leak
    // cannot turn into an invalid Date reaching the store.
    if (v !== 2 || !Number.isSafeInteger(t) || (t as number) < EARLIEST_TIME_MS || (t as number) > LATEST_TIME_MS || typeof i !== "string" || !isId(i) || typeof f !== "string") {
      throw invalidArgument(field, NOT_OURS);
    }
    if (f !== filterHash(filters)) throw invalidArgument(field, "was made for other filters; repeat the request with the same filters or start without a page token");
    return { at: new Date(t as number), id: i };
  }

  #mac(body: string): Buffer {
    return createHmac("sha256", this.#key).update(body).digest();
  }
}

/**
 * The page-token signer with the key every replica shares: the stored one, or
 * a fresh random key stored now when there is none yet. Storing is
 * insert-if-absent, so replicas starting together all end up with the first
 * key written.
 */
export async function loadPageTokens(store: ServerSecretStore): Promise<PageTokens> {
  return new PageTokens(await store.getOrCreate(PAGE_TOKEN_SECRET_NAME, randomBytes(PAGE_TOKEN_KEY_BYTES)));
}

function filterHash(filters: unknown): string {
  return createHash("sha256").update(JSON.stringify(filters)).digest("base64url").slice(0, 16);
}
