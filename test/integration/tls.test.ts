import * as https from "node:https";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TokenService, type IntrospectTokenResponse } from "../../gen/tokens/v1/token_service_pb.js";
import { ConfigError } from "../../src/config.js";
import { makeTestPki, type TestPki } from "../support/certs.js";
import { grpcClient, startTestService, type ServiceUnderTest } from "../support/service.js";

/**
 * TLS and mutual TLS on both ports, with certificates made at test time by
 * the `openssl` CLI. Clients are the real ones: @grpc/grpc-js on the gRPC
 * port, connect-node over HTTP/1.1 and HTTP/2 on the HTTP port.
 */
let pki: TestPki;
let ca: Buffer;
let client: { cert: Buffer; key: Buffer };
let stranger: { cert: Buffer; key: Buffer };

beforeAll(async () => {
  pki = await makeTestPki();
  ca = await pki.read(pki.caCert);
  client = { cert: await pki.read(pki.clientCert), key: await pki.read(pki.clientKey) };
  stranger = { cert: await pki.read(pki.strangerCert), key: await pki.read(pki.strangerKey) };
});

afterAll(async () => {
  await pki?.remove();
});

const as = (token: string) => ({ authorization: `Bearer ${token}` });

/** Who connects, with what: no certificate, ours, or one from another CA. */
type Identity = { cert: Buffer; key: Buffer } | undefined;

function grpcOver(sut: ServiceUnderTest, identity: Identity) {
  const credentials = grpc.credentials.createSsl(ca, identity?.key ?? null, identity?.cert ?? null);
  return grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`, credentials);
}

function connectOver(sut: ServiceUnderTest, httpVersion: "1.1" | "2", identity: Identity): Client<typeof TokenService> {
  const nodeOptions = { ca, ...(identity ?? {}) };
  return createClient(TokenService, createConnectTransport({ baseUrl: `https://127.0.0.1:${sut.service.httpPort}`, httpVersion, nodeOptions }));
}

/** Resolves to the ConnectError code a call failed with, or "ok". */
async function outcome(call: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await call;
    return "ok";
  } catch (error) {
    return ConnectError.from(error).code;
  }
}

describe("TLS on both ports", () => {
  let sut: ServiceUnderTest;
  let admin: string;

  beforeAll(async () => {
    sut = await startTestService({ DATA_DIR: "memory://", TLS_CERT_FILE: pki.serverCert, TLS_KEY_FILE: pki.serverKey });
    admin = sut.bootstrapToken!;
  });

  afterAll(async () => {
    await sut?.service.stop();
  });

  it("logs that TLS is on, with the certificate's subject", () => {
    expect(sut.logs.lines.find((l) => l.msg === "TLS enabled")).toMatchObject({ subject: "CN=localhost", ports: "both", mutual_tls: false });
  });

  it("answers a grpc-js client over TLS on the gRPC port", async () => {
    const c = grpcOver(sut, undefined);
    try {
      const answer = await c.unary<IntrospectTokenResponse>("introspectToken", { token: admin }, as(admin));
      expect(answer).toMatchObject({ active: true, isAdmin: true });
    } finally {
      c.close();
    }
  });

  it.each(["1.1", "2"] as const)("answers Connect over HTTP/%s with TLS on the HTTP port", async (httpVersion) => {
    const answer = await connectOver(sut, httpVersion, undefined).introspectToken({ token: admin }, { headers: as(admin) });
    expect(answer).toMatchObject({ active: true, isAdmin: true });
  });

  it("answers gRPC over HTTP/2 with TLS on the HTTP port, and plain HTTP paths over HTTPS", async () => {
    const transport = createGrpcTransport({ baseUrl: `https://127.0.0.1:${sut.service.httpPort}`, nodeOptions: { ca } });
    const answer = await createClient(TokenService, transport).introspectToken({ token: admin }, { headers: as(admin) });
    expect(answer.active).toBe(true);
    const jwks = await new Promise<{ status: number | undefined; alpn: string | false | null }>((resolve, reject) => {
      https
        .get(`https://127.0.0.1:${sut.service.httpPort}/.well-known/jwks.json`, { ca }, (res) => {
          res.resume();
          resolve({ status: res.statusCode, alpn: (res.socket as import("node:tls").TLSSocket).alpnProtocol });
        })
        .on("error", reject);
    });
    expect(jwks).toEqual({ status: 200, alpn: false }); // no ALPN (Node's https agent): HTTP/1.1 by its first bytes
  });

  it("refuses cleartext on both TLS ports", async () => {
    const plainGrpc = grpcClient(TokenService, `127.0.0.1:${sut.service.grpcPort}`);
    try {
      await expect(plainGrpc.unary("introspectToken", { token: admin }, as(admin))).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
    } finally {
      plainGrpc.close();
    }
    const plainHttp = createClient(TokenService, createConnectTransport({ baseUrl: `http://127.0.0.1:${sut.service.httpPort}`, httpVersion: "1.1" }));
    expect(await outcome(plainHttp.introspectToken({ token: admin }, { headers: as(admin) }))).not.toBe("ok");
  });

  it("is not trusted by a client that does not know the CA", async () => {
    const untrusting = createClient(TokenService, createConnectTransport({ baseUrl: `https://127.0.0.1:${sut.service.httpPort}`, httpVersion: "1.1" }));
    expect(await outcome(untrusting.introspectToken({ token: admin }, { headers: as(admin) }))).not.toBe("ok");
  });
});

describe("mutual TLS on both ports", () => {
  let sut: ServiceUnderTest;
  let admin: string;

  beforeAll(async () => {
    sut = await startTestService({ DATA_DIR: "memory://", TLS_CERT_FILE: pki.serverCert, TLS_KEY_FILE: pki.serverKey, TLS_CLIENT_CA_FILE: pki.caCert });
    admin = sut.bootstrapToken!;
  });

  afterAll(async () => {
    await sut?.service.stop();
  });

  it("answers a client presenting a certificate from the client CA, on both ports and both HTTP versions", async () => {
    const c = grpcOver(sut, client);
    try {
      expect(await c.unary<IntrospectTokenResponse>("introspectToken", { token: admin }, as(admin))).toMatchObject({ active: true });
    } finally {
      c.close();
    }
    for (const httpVersion of ["1.1", "2"] as const) {
      const answer = await connectOver(sut, httpVersion, client).introspectToken({ token: admin }, { headers: as(admin) });
      expect(answer.active, `HTTP/${httpVersion}`).toBe(true);
    }
  });

  it("still needs the caller's bearer token: the certificate authenticates the connection, not the caller", async () => {
    const c = grpcOver(sut, client);
    try {
      await expect(c.unary("introspectToken", { token: admin })).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    } finally {
      c.close();
    }
    expect(await outcome(connectOver(sut, "1.1", client).introspectToken({ token: admin }))).toBe(Code.Unauthenticated);
  });

  it.each([
    ["without a certificate", (): Identity => undefined],
    ["with a certificate from another CA", (): Identity => stranger],
  ] as const)("refuses a client %s on both ports", async (_name, identity) => {
    const c = grpcOver(sut, identity());
    try {
      await expect(c.unary("introspectToken", { token: admin }, as(admin))).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
    } finally {
      c.close();
    }
    for (const httpVersion of ["1.1", "2"] as const) {
      const result = await outcome(connectOver(sut, httpVersion, identity()).introspectToken({ token: admin }, { headers: as(admin) }));
      expect(result, `HTTP/${httpVersion}`).not.toBe("ok");
    }
  });
});

describe("TLS on the gRPC port only (TLS_PORTS=grpc)", () => {
  it("keeps the HTTP port cleartext, e.g. for probes or a local sidecar", async () => {
    const sut = await startTestService({ DATA_DIR: "memory://", TLS_CERT_FILE: pki.serverCert, TLS_KEY_FILE: pki.serverKey, TLS_CLIENT_CA_FILE: pki.caCert, TLS_PORTS: "grpc" });
    const admin = sut.bootstrapToken!;
    const c = grpcOver(sut, client);
    try {
      expect(await c.unary<IntrospectTokenResponse>("introspectToken", { token: admin }, as(admin))).toMatchObject({ active: true });
      const plain = createClient(TokenService, createConnectTransport({ baseUrl: `http://127.0.0.1:${sut.service.httpPort}`, httpVersion: "1.1" }));
      expect((await plain.introspectToken({ token: admin }, { headers: as(admin) })).active).toBe(true);
    } finally {
      c.close();
      await sut.service.stop();
    }
  });
});

describe("a bad TLS configuration stops start-up, naming the key", () => {
  it.each([
    ["a certificate without its key", () => ({ TLS_CERT_FILE: pki.serverCert }), "TLS_KEY_FILE: must be set when TLS_CERT_FILE is"],
    ["a key without its certificate", () => ({ TLS_KEY_FILE: pki.serverKey }), "TLS_CERT_FILE: must be set when TLS_KEY_FILE is"],
    ["a client CA without TLS", () => ({ TLS_CLIENT_CA_FILE: pki.caCert }), "TLS_CLIENT_CA_FILE: needs TLS_CERT_FILE and TLS_KEY_FILE"],
    ["a missing key file", () => ({ TLS_CERT_FILE: pki.serverCert, TLS_KEY_FILE: `${pki.dir}/missing.key` }), "TLS_KEY_FILE: cannot read /", "missing.key (ENOENT)"],
    ["a missing certificate file", () => ({ TLS_CERT_FILE: `${pki.dir}/missing.pem`, TLS_KEY_FILE: pki.serverKey }), "TLS_CERT_FILE: cannot read /", "missing.pem (ENOENT)"],
    ["a key that does not match the certificate", () => ({ TLS_CERT_FILE: pki.serverCert, TLS_KEY_FILE: pki.unrelatedKey }), "TLS_KEY_FILE: the key in"],
    ["a key file given as the certificate", () => ({ TLS_CERT_FILE: pki.serverKey, TLS_KEY_FILE: pki.serverKey }), "TLS_CERT_FILE: ", "holds no PEM certificate"],
    ["a certificate given as the key", () => ({ TLS_CERT_FILE: pki.serverCert, TLS_KEY_FILE: pki.serverCert }), "TLS_KEY_FILE: ", "is not an unencrypted PEM private key"],
    ["a client CA file without a certificate", () => ({ TLS_CERT_FILE: pki.serverCert, TLS_KEY_FILE: pki.serverKey, TLS_CLIENT_CA_FILE: pki.clientKey }), "TLS_CLIENT_CA_FILE: ", "holds no PEM certificate"],
    ["a TLS_PORTS typo", () => ({ TLS_CERT_FILE: pki.serverCert, TLS_KEY_FILE: pki.serverKey, TLS_PORTS: "all" }), 'TLS_PORTS="all": must be both, grpc or http'],
  ] as [string, () => Record<string, string>, ...string[]][])("%s", async (_name, env, ...messages) => {
    const started = startTestService({ DATA_DIR: "memory://", ...env() });
    await expect(started).rejects.toBeInstanceOf(ConfigError);
    for (const message of messages) await expect(started).rejects.toThrow(message);
  });
});
