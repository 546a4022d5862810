import { createHash } from "node:crypto";
import { invalidArgument } from "./errors.js";
import { UUID_PATTERN } from "./validation.js";

/** A keyset position: the sort time and the id that breaks ties. */
export interface Cursor {
  readonly at: Date;
  readonly id: string;
}

/**
 * Page tokens are opaque to callers but bound to the filters they were made
 * for: a token reused with other filters is refused rather than silently
 * returning a wrong page.
 */
export function encodePageToken(cursor: Cursor, filters: unknown): string {
  const body = JSON.stringify({ v: 1, t: cursor.at.getTime(), i: cursor.id, f: filterHash(filters) });
  return Buffer.from(body).toString("base64url");
}

/** Reads a page token made by `encodePageToken` for the same filters. Empty means the first page. */
export function decodePageToken(field: string, token: string, filters: unknown, isId: (id: string) => boolean = (id) => UUID_PATTERN.test(id)): Cursor | undefined {
  if (token === "") return undefined;
  if (token.length > 512) throw invalidArgument(field, "is not a page token from this service");
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    throw invalidArgument(field, "is not a page token from this service");
  }
  const { v, t, i, f } = (parsed ?? {}) as Record<string, unknown>;
  if (v !== 1 || typeof t !== "number" || !Number.isFinite(t) || typeof i !== "string" || !isId(i) || typeof f !== "string") {
    throw invalidArgument(field, "is not a page token from this service");
  }
  if (f !== filterHash(filters)) throw invalidArgument(field, "was made for other filters; repeat the request with the same filters or start without a page token");
  return { at: new Date(t), id: i };
}

function filterHash(filters: unknown): string {
  return createHash("sha256").update(JSON.stringify(filters)).digest("base64url").slice(0, 16);
}
