import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { CheckRequestSchema } from "../../gen/envoy/service/auth/v3/external_auth_pb.js";
import { checkFactsOf, checkRequestDecoder, createCheckFactsReader, type CheckFacts } from "../../src/rpc/ext-authz-wire.js";
import { WT, concat, lenField, tag, varint } from "../support/wire.js";
import { counted, params, reportCases, timeout } from "./support.js";

/**
 * The CheckRequest wire reader against protobuf-es's `fromBinary`, the
 * reference: on any bytes the reader never throws, and when it answers, its
 * facts are the ones read from `fromBinary`'s message; otherwise the decoder
 * answers exactly what `fromBinary` does (the message, or a refusal). Inputs:
 * messages encoded by protobuf-es (which the reader must take), concatenations
 * of them (merging), random records of every wire type nested by the
 * schema's field numbers, the same mutated (flipped, cut, spliced bytes), and
 * plain random bytes.
 */
reportCases("ext-authz-wire.test.ts");

const HEADERS = ["authorization", "x-api-key"] as const;
const readers = HEADERS.map((h) => createCheckFactsReader(h));
const decoders = HEADERS.map((h) => checkRequestDecoder(h));

type Reference = { readonly facts: CheckFacts } | { readonly refused: true };

function reference(bytes: Uint8Array, header: string): Reference {
  let message;
  try {
    message = fromBinary(CheckRequestSchema, bytes);
  } catch {
    return { refused: true };
  }
  return { facts: checkFactsOf(message, header) };
}

/** The property, for every configured header; returns whether the wire reader answered for the first. */
function agrees(bytes: Uint8Array): boolean {
  let answered = false;
  HEADERS.forEach((header, i) => {
    const expected = reference(bytes, header);
    const facts = readers[i]!(bytes); // must not throw
    if (i === 0) answered = facts !== undefined;
    if (facts !== undefined) expect(expected).toEqual({ facts });
    let decoded: Reference;
    try {
      const out = decoders[i]!(Buffer.from(bytes));
      decoded = { facts: "$typeName" in out ? checkFactsOf(out, header) : out };
    } catch {
      decoded = { refused: true };
    }
    expect(decoded).toEqual(expected);
  });
  return answered;
}

const ascii = fc.string({ unit: "binary-ascii", maxLength: 24 });
const anyText = fc.oneof(ascii, fc.string({ unit: "binary", maxLength: 12 }), fc.constantFrom("", "Bearer cf-abc", "Bearer", "bearer x", "curl/8.5.0"));
const headerName = fc.oneof(fc.constantFrom("authorization", "x-api-key", "user-agent", ":path", "Authorization", "authorizatio", "authorization "), ascii);

/** CheckRequests as protobuf-es encodes them; `plain` keeps to what the wire reader must take (ASCII, no header_map). */
const request = (plain: boolean) => {
  const text = plain ? ascii : anyText;
  return fc.record(
    {
      attributes: fc.record(
        {
          request: fc.record({
            http: fc.record(
              {
                id: text,
                method: text,
                path: text,
                host: text,
                headers: fc.dictionary(plain ? headerName : fc.oneof(headerName, anyText), text, { maxKeys: 10 }),
                ...(plain ? {} : { headerMap: fc.record({ headers: fc.array(fc.record({ key: headerName, value: text, rawValue: fc.uint8Array({ maxLength: 8 }) }), { maxLength: 3 }) }) }),
              },
              { requiredKeys: [] },
            ),
          }, { requiredKeys: [] }),
          contextExtensions: fc.dictionary(text, text, { maxKeys: 3 }),
        },
        { requiredKeys: [] },
      ),
    },
    { requiredKeys: [] },
  ).map((init) => toBinary(CheckRequestSchema, create(CheckRequestSchema, init as never)));
};

/** Field numbers that mean something at some depth of a CheckRequest, and others. */
const fieldNo = fc.oneof(fc.constantFrom(1, 2, 3, 4, 5, 10, 13), fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: 2 ** 29 - 1 }));
const wireType = fc.oneof(fc.constant(WT.len), fc.integer({ min: 0, max: 7 }));

/** Random records, nested by the schema's field numbers: LEN payloads are themselves record lists. */
const records = fc.letrec<{ list: Uint8Array; record: Uint8Array }>((tie) => ({
  list: fc.array(tie("record"), { maxLength: 6 }).map((parts) => concat(...parts)),
  record: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    fc.tuple(fieldNo, fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })).map(([f, v]) => concat(tag(f, WT.varint), varint(v))),
    fc.tuple(fieldNo, fc.constantFrom(WT.i32, WT.i64)).map(([f, w]) => concat(tag(f, w), new Uint8Array(w === WT.i32 ? 4 : 8))),
    fc.tuple(fieldNo, anyText).map(([f, s]) => lenField(f, new TextEncoder().encode(s))),
    fc.tuple(fieldNo, fc.uint8Array({ maxLength: 6 })).map(([f, b]) => lenField(f, b)),
    fc.tuple(fieldNo, fc.option(anyText), fc.option(anyText)).map(([f, k, v]) =>
      lenField(f, concat(k === null ? new Uint8Array() : lenField(1, new TextEncoder().encode(k)), v === null ? new Uint8Array() : lenField(2, new TextEncoder().encode(v)))),
    ),
    fc.tuple(fieldNo, wireType, fc.uint8Array({ maxLength: 4 })).map(([f, w, b]) => concat(tag(f, w), b)),
    fc.tuple(fieldNo, tie("list")).map(([f, body]) => lenField(f, body)),
    fc.tuple(fieldNo, tie("list")).map(([f, body]) => concat(tag(f, WT.sgroup), body, tag(f, WT.egroup))),
  ),
}));

/** Byte-level damage: flip, cut, insert, overwrite with a length-ish byte. */
const mutated = (source: fc.Arbitrary<Uint8Array>) =>
  fc.tuple(source, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 })).map(([bytes, edits]) => {
    let out: Uint8Array = Uint8Array.from(bytes);
    for (const [at, kind, byte] of edits) {
      const i = out.length === 0 ? 0 : at % out.length;
      if (kind === 0 && out.length > 0) out[i] = out[i]! ^ (1 << byte % 8);
      else if (kind === 1) out = out.slice(0, i);
      else if (kind === 2) out = concat(out.slice(0, i), Uint8Array.of(byte), out.slice(i));
      else if (out.length > 0) out[i] = byte;
    }
    return out;
  });

describe("the CheckRequest wire reader against fromBinary", () => {
  it("reads every ASCII request protobuf-es encodes, with fromBinary's facts", () => {
    fc.assert(
      fc.property(request(true), (bytes) => {
        counted();
        expect(agrees(bytes)).toBe(true);
      }),
      params(1_500),
    );
  }, timeout(60_000));

  it("agrees on any request protobuf-es encodes, and on concatenations of them (merged messages)", () => {
    fc.assert(
      fc.property(fc.array(request(false), { minLength: 1, maxLength: 3 }), (parts) => {
        counted();
        agrees(concat(...parts));
      }),
      params(1_500),
    );
  }, timeout(60_000));

  it("never throws and never differs on random records of every wire type, nested", () => {
    const nested = fc.tuple(records.list, fc.boolean()).map(([body, deep]) => (deep ? lenField(1, lenField(4, lenField(2, body))) : body));
    let answered = 0;
    fc.assert(
      fc.property(nested, (bytes) => {
        counted();
        if (agrees(bytes)) answered++;
      }),
      params(3_000),
    );
    // Not vacuous: a good share of these are well-formed and read from the wire.
    expect(answered).toBeGreaterThan(0);
  }, timeout(60_000));

  it("never throws and never differs on damaged requests and plain random bytes", () => {
    fc.assert(
      fc.property(fc.oneof(mutated(request(true)), mutated(request(false)), mutated(records.list), fc.uint8Array({ maxLength: 64 })), (bytes) => {
        counted();
        agrees(bytes);
      }),
      params(3_000),
    );
  }, timeout(60_000));
});
