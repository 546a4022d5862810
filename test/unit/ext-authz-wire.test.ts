import { create, equals, fromBinary, isMessage, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { Authorization, CheckRequestSchema, type CheckResponse } from "../../gen/envoy/service/auth/v3/external_auth_pb.js";
import { bootstrapAdmin } from "../../src/domain/issue.js";
import { EXT_AUTHZ_SECRET_METADATA, ExtAuthzHandler } from "../../src/rpc/ext-authz.js";
import { grpcServiceDefinition } from "../../src/server/grpc-adapter.js";
import { fakeDeps } from "../support/fakes.js";
import { checkFactsOf, checkRequestDecoder, createCheckFactsReader, type CheckFacts } from "../../src/rpc/ext-authz-wire.js";
import { WT, concat, lenField, mapEntry, strField, tag, varint } from "../support/wire.js";

/**
 * The CheckRequest wire reader, by outcome: read (the same facts as
 * protobuf-es's fromBinary), or left to fromBinary (undefined), in which case
 * the decoder answers what fromBinary answers, a message or a refusal.
 * The property tests (test/property/ext-authz-wire.test.ts) try random and
 * adversarial bytes.
 */

const read = createCheckFactsReader("authorization");
const decode = checkRequestDecoder("authorization");
const oracle = (bytes: Uint8Array, header = "authorization"): CheckFacts => checkFactsOf(fromBinary(CheckRequestSchema, bytes), header);
const encode = (init: MessageInitShape<typeof CheckRequestSchema>) => toBinary(CheckRequestSchema, create(CheckRequestSchema, init));

// Envoy's CheckRequest nests its request at attributes(1).request(4).http(2).
const wrap = (...httpRecords: Uint8Array[]) => lenField(1, lenField(4, lenField(2, concat(...httpRecords))));

const envoyLike = {
  attributes: {
    request: {
      http: {
        id: "0b7c3f0e-bench",
        method: "GET",
        path: "/orders/42",
        host: "api.example.com",
        headers: { ":authority": "api.example.com", ":method": "GET", accept: "application/json", "user-agent": "curl/8.5.0", authorization: "Bearer cf-abc", "x-request-id": "0b7c3f0e-bench" },
      },
    },
    contextExtensions: { virtual_host: "api" },
  },
};

describe("read from the wire", () => {
  it("reads what Check needs from a request as Envoy's HTTP filter sends it", () => {
    const bytes = encode(envoyLike);
    const facts = read(bytes);
    expect(facts).toEqual({ http: true, id: "0b7c3f0e-bench", credential: "Bearer cf-abc", userAgent: "curl/8.5.0" });
    expect(facts).toEqual(oracle(bytes));
    expect(isMessage(decode(Buffer.from(bytes)), CheckRequestSchema)).toBe(false);
  });

  it("skips the fields Envoy sends that our subset does not declare, of every wire type", () => {
    const timestamp = concat(tag(1, WT.varint), varint(1_764_612_345), tag(2, WT.varint), varint(123_456_789));
    const address = lenField(1, concat(strField(2, "10.0.0.7"), tag(3, WT.varint), varint(51_234)));
    const bytes = concat(
      lenField(1, concat(lenField(1, address), lenField(2, address), lenField(4, concat(lenField(1, timestamp), lenField(2, concat(strField(1, "id-1"), mapEntry(3, "authorization", "Bearer x"), strField(6, "https"), tag(9, WT.varint), varint(0), strField(10, "HTTP/2"), tag(40, WT.i64), new Uint8Array(8), tag(41, WT.i32), new Uint8Array(4))))))),
      tag(7, WT.varint),
      varint(2n ** 63n),
    );
    expect(read(bytes)).toEqual({ http: true, id: "id-1", credential: "Bearer x", userAgent: undefined });
    expect(read(bytes)).toEqual(oracle(bytes));
  });

  it("says no HTTP attributes when Envoy's network filter sends none, and no credential when the header is absent", () => {
    expect(read(new Uint8Array())).toEqual({ http: false, id: "", credential: undefined, userAgent: undefined });
    expect(read(encode({ attributes: { request: {} } }))).toEqual({ http: false, id: "", credential: undefined, userAgent: undefined });
    const empty = encode({ attributes: { request: { http: {} } } });
    expect(read(empty)).toEqual({ http: true, id: "", credential: undefined, userAgent: undefined });
    expect(read(empty)).toEqual(oracle(empty));
  });

  it("merges repeated messages and lets the last value of a field or map key win, as parsing does", () => {
    const bytes = concat(
      encode({ attributes: { request: { http: { id: "first", headers: { authorization: "Bearer one", "user-agent": "a" } } } } }),
      encode({ attributes: { request: { http: { id: "second", headers: { authorization: "Bearer two" } } } } }),
      wrap(mapEntry(3, "authorization", undefined)),
    );
    expect(read(bytes)).toEqual({ http: true, id: "second", credential: "", userAgent: "a" });
    expect(read(bytes)).toEqual(oracle(bytes));
  });

  it("takes a map entry's missing key or value as empty, and its fields in any order", () => {
    const bytes = wrap(lenField(3, concat(strField(2, "Bearer v"), strField(1, "authorization"))), mapEntry(3, undefined, "lost"));
    expect(read(bytes)).toEqual({ http: true, id: "", credential: "Bearer v", userAgent: undefined });
    expect(read(bytes)).toEqual(oracle(bytes));
  });

  it("reads the configured credential header", () => {
    const bytes = encode({ attributes: { request: { http: { headers: { authorization: "Bearer a", "x-api-key": "Bearer k" } } } } });
    expect(createCheckFactsReader("x-api-key")(bytes)?.credential).toBe("Bearer k");
    expect(oracle(bytes, "x-api-key").credential).toBe("Bearer k");
  });
});

describe("left to fromBinary", () => {
  it("leaves raw headers (header_map) to fromBinary, and the decoder reads the header from there", () => {
    const bytes = encode({ attributes: { request: { http: { headerMap: { headers: [{ key: "Authorization", rawValue: new TextEncoder().encode("Bearer raw") }] } } } } });
    expect(read(bytes)).toBeUndefined();
    const decoded = decode(Buffer.from(bytes));
    expect(isMessage(decoded, CheckRequestSchema)).toBe(true);
    expect(checkFactsOf(decoded as never, "authorization").credential).toBe("Bearer raw");
  });

  it("leaves text that is not ASCII to fromBinary, which decodes valid UTF-8 and refuses the rest", () => {
    const unicode = encode({ attributes: { request: { http: { headers: { authorization: "Bearer x", "user-agent": "nav/ü" } } } } });
    expect(read(unicode)).toBeUndefined();
    expect(checkFactsOf(decode(Buffer.from(unicode)) as never, "authorization").userAgent).toBe("nav/ü");

    // A skipped header's invalid UTF-8 still makes the request invalid, as before.
    const invalid = wrap(mapEntry(3, "authorization", "Bearer x"), lenField(3, concat(strField(1, "x-bad"), lenField(2, Uint8Array.of(0xc3, 0x28)))));
    expect(read(invalid)).toBeUndefined();
    expect(() => decode(Buffer.from(invalid))).toThrow();
    const invalidPath = wrap(mapEntry(3, "authorization", "Bearer x"), lenField(4, Uint8Array.of(0x2f, 0xff)));
    expect(read(invalidPath)).toBeUndefined();
    expect(() => decode(Buffer.from(invalidPath))).toThrow();
  });

  it("leaves groups, bad tags, declared fields of another wire type and odd map entries to fromBinary", () => {
    const cases = [
      concat(tag(9, WT.sgroup), tag(9, WT.egroup)),
      concat(tag(0, WT.varint), varint(1)),
      Uint8Array.of(0x0f), // wire type 7
      concat(tag(1, WT.varint), varint(3)), // attributes as a varint
      wrap(concat(tag(1, WT.i32), new Uint8Array(4))), // id as fixed32
      wrap(lenField(3, concat(tag(1, WT.varint), varint(1)))), // an entry's key as a varint
      wrap(lenField(3, concat(tag(3, WT.len), varint(0)))), // an entry field other than key and value
      concat(tag(1, WT.len), varint(10), Uint8Array.of(1, 2)), // runs past the end
      Uint8Array.of(0x0a, 0x80, 0x80, 0x80, 0x80, 0x01), // a length of five bytes
    ];
    for (const bytes of cases) {
      expect(read(bytes)).toBeUndefined();
      let expected: unknown;
      try {
        expected = fromBinary(CheckRequestSchema, bytes);
      } catch (e) {
        expected = e;
      }
      if (expected instanceof Error) expect(() => decode(Buffer.from(bytes))).toThrow();
      else expect(equals(CheckRequestSchema, decode(Buffer.from(bytes)) as never, expected as never)).toBe(true);
    }
  });

  it("leaves a credential header named like an Object.prototype member to fromBinary", () => {
    const bytes = wrap(mapEntry(3, "constructor", "Bearer c"));
    expect(createCheckFactsReader("constructor")(bytes)).toBeUndefined();
    expect(oracle(bytes, "constructor").credential).toBe("Bearer c");
    expect(oracle(wrap(), "constructor").credential).toBeUndefined();
    expect(oracle(wrap(mapEntry(3, "__proto__", "Bearer p")), "__proto__").credential).toBeUndefined();
  });
});

describe("mounted on the gRPC server", () => {
  const SECRET = "envoy-secret-0123456789abcdef";

  async function mounted() {
    const { deps } = fakeDeps();
    const user = await bootstrapAdmin(deps, "user@example.com", "cli");
    const handler = new ExtAuthzHandler(deps, { secret: SECRET, header: "authorization", backendJwt: false, removeHeader: false });
    const { definition, implementation } = grpcServiceDefinition(Authorization, handler, { onInternalError: () => {} });
    const call = (bytes: Uint8Array) =>
      new Promise<{ status: Partial<grpc.StatusObject> | null; answer: CheckResponse | undefined }>((resolve) => {
        const metadata = new grpc.Metadata();
        metadata.set(EXT_AUTHZ_SECRET_METADATA, SECRET);
        const request = definition["check"]!.requestDeserialize(Buffer.from(bytes));
        const surface = { metadata, request, cancelled: false, getPeer: () => "127.0.0.1:5000", getDeadline: () => Infinity, getHost: () => "h", getPath: () => "/p", sendMetadata: () => {}, once: () => {} };
        (implementation["check"] as grpc.handleUnaryCall<unknown, CheckResponse>)(surface as never, (status, answer) => resolve({ status: status as Partial<grpc.StatusObject> | null, answer: answer ?? undefined }));
      });
    return { user, call, request: (bytes: Uint8Array) => definition["check"]!.requestDeserialize(Buffer.from(bytes)) };
  }

  it("decodes Check's requests with the wire reader, and answers a hit with the same encoded answer", async () => {
    const { user, call, request } = await mounted();
    const bytes = encode({ attributes: { request: { http: { id: "r-1", headers: { authorization: `Bearer ${user.token}`, "user-agent": "curl/8.5.0" } } } } });
    expect(request(bytes)).toEqual({ http: true, id: "r-1", credential: `Bearer ${user.token}`, userAgent: "curl/8.5.0" });
    const first = await call(bytes);
    expect(first.status).toBeNull();
    expect(first.answer?.httpResponse.case).toBe("okResponse");
    // From the second call on (answered from the cache), the frozen answer of
    // a hot token is re-sent as is, so the adapter re-sends its encoded bytes.
    const second = await call(bytes);
    const third = await call(bytes);
    expect(third.answer).toBe(second.answer);
    expect(Object.isFrozen(third.answer)).toBe(true);
    expect(third.answer).toEqual(first.answer);
  });

  it("answers the same through the fromBinary fallback, and INVALID_ARGUMENT for bytes that are not a CheckRequest", async () => {
    const { user, call } = await mounted();
    const raw = encode({ attributes: { request: { http: { headerMap: { headers: [{ key: "authorization", value: `Bearer ${user.token}` }] } } } } });
    expect((await call(raw)).answer?.httpResponse.case).toBe("okResponse");
    const none = await call(encode({ attributes: { request: { http: { headers: { "user-agent": "x" } } } } }));
    expect(none.answer?.httpResponse.case).toBe("deniedResponse");
    const garbage = await call(concat(tag(1, WT.len), varint(10), Uint8Array.of(1, 2)));
    expect(garbage.status?.code).toBe(grpc.status.INVALID_ARGUMENT);
  });
});
