/**
 * The RFC 7662 / RFC 7009 form parser's fast path (bodies with nothing to
 * decode, split by hand) must read every body exactly as `URLSearchParams`
 * does, which it replaces on the OAuth endpoints' hot path.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parseForm } from "../../src/server/http/io.js";
import { params } from "./support.js";

function reference(text: string): { fields: Map<string, string>; repeated: Set<string> } {
  const fields = new Map<string, string>();
  const repeated = new Set<string>();
  for (const [name, value] of new URLSearchParams(text)) {
    if (fields.has(name)) repeated.add(name);
    else fields.set(name, value);
  }
  return { fields, repeated };
}

/** Bodies built from the characters that matter to the parser, and any others. */
const body = fc.oneof(
  fc.array(fc.constantFrom("&", "=", "?", "a", "b", "token", "client_id", "%", "+", "%41", " ", "é", "\u0000"), { maxLength: 24 }).map((parts) => parts.join("")),
  fc.string({ maxLength: 64, unit: "binary" }),
);

describe("parseForm", () => {
  it("reads every body as URLSearchParams does", () => {
    fc.assert(
      fc.property(body, (text) => {
        const got = parseForm(text);
        const want = reference(text);
        expect([...got.fields]).toEqual([...want.fields]);
        expect([...got.repeated]).toEqual([...want.repeated]);
      }),
      params(2_000),
    );
  });

  it("reads the common introspection body without decoding", () => {
    const { fields, repeated } = parseForm("token=tis_prod_abc.DEF-123&token_type_hint=access_token");
    expect(fields.get("token")).toBe("tis_prod_abc.DEF-123");
    expect(fields.get("token_type_hint")).toBe("access_token");
    expect(repeated.size).toBe(0);
  });
});
