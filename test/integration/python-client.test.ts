import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeTestPki, type TestPki } from "../support/certs.js";
import { startTestService, type ServiceUnderTest } from "../support/service.js";

const run = promisify(execFile);

/**
 * The system Python: the grpc and grpc_tools modules come from Debian's
 * python3-grpcio and python3-grpc-tools, so a `python3` earlier on PATH
 * (pyenv, a virtualenv) would not have them.
 */
const PYTHON = "/usr/bin/python3";

/** What test/python/client_smoke.py prints (protobuf JSON, proto field names; false and empty fields omitted). */
interface SmokeResult {
  issued: { id: string; name: string; subject: string; scopes: string[]; teams: string[]; state: string; metadata: Record<string, string> };
  token_prefix: string;
  introspected: { active?: boolean; sub: string; scopes: string[]; teams: string[]; jti: string; token_name: string };
  revoked: { info: { id: string; state: string; revoke_reason: string }; already_revoked?: boolean };
  introspected_after_revoke: { active?: boolean; reason: string; sub?: string };
  listed: { id: string; state: string }[];
}

/**
 * A client generated from proto/ in another language works: Python, through
 * Debian's grpc_tools, calls IssueToken, IntrospectToken, RevokeToken and
 * ListTokens against the running service, in cleartext and under mutual TLS.
 */
describe("a Python client generated from proto/", () => {
  let generated: string;
  let pki: TestPki;
  let plain: ServiceUnderTest;
  let mutual: ServiceUnderTest;

  beforeAll(async () => {
    await run(PYTHON, ["-c", "import grpc, grpc_tools"]).catch((error: unknown) => {
      throw new Error(`${PYTHON} cannot import grpc and grpc_tools: apt-get install python3-grpc-tools (npm test does, through scripts/test-deps.sh)`, { cause: error });
    });
    generated = await mkdtemp(join(tmpdir(), "tis-python-"));
    await run("bash", ["scripts/gen-python.sh", generated]);
    pki = await makeTestPki();
    [plain, mutual] = await Promise.all([
      startTestService({ DATA_DIR: "memory://" }),
      startTestService({ DATA_DIR: "memory://", TLS_CERT_FILE: pki.serverCert, TLS_KEY_FILE: pki.serverKey, TLS_CLIENT_CA_FILE: pki.caCert }),
    ]);
  }, 120_000);

  afterAll(async () => {
    await Promise.all([plain?.service.stop(), mutual?.service.stop()]);
    await pki?.remove();
    if (generated) await rm(generated, { recursive: true, force: true });
  });

  async function smoke(env: Record<string, string>): Promise<SmokeResult> {
    const { stdout } = await run(PYTHON, ["test/python/client_smoke.py"], {
      env: { PATH: process.env["PATH"] ?? "", PYTHONPATH: generated, ...env },
      timeout: 30_000,
    });
    return JSON.parse(stdout) as SmokeResult;
  }

  function expectTheWholeStory(result: SmokeResult, subject: string): void {
    const id = result.issued.id;
    expect(result.issued).toMatchObject({ name: "python-smoke", subject, scopes: ["orders.read"], teams: ["python"], state: "TOKEN_STATE_ACTIVE", metadata: { client: "python" } });
    expect(result.token_prefix).toBe("cf-");
    expect(result.introspected).toMatchObject({ active: true, sub: subject, scopes: ["orders.read"], teams: ["python"], jti: id, token_name: "python-smoke" });
    expect(result.revoked.info).toMatchObject({ id, state: "TOKEN_STATE_REVOKED", revoke_reason: "python smoke test" });
    expect(result.revoked.already_revoked).toBeUndefined(); // false: this call revoked it
    // Inactive: `active` is false (omitted in protobuf JSON) and there are no claims.
    // Every answer also says up to which revocation log position its replica had applied, and since when.
    expect(result.introspected_after_revoke).toEqual({
      reason: "INACTIVE_REASON_REVOKED",
      message: "The token has been revoked.",
      revocation_position: expect.stringMatching(/^[1-9]\d*$/),
      revocation_confirmed_at: expect.any(String),
    });
    expect(result.listed).toContainEqual(expect.objectContaining({ id, state: "TOKEN_STATE_REVOKED" }));
  }

  it("issues, introspects, revokes and lists over the gRPC port", async () => {
    const result = await smoke({ TOKEN_SERVICE_ADDR: `127.0.0.1:${plain.service.grpcPort}`, TOKEN_SERVICE_TOKEN: plain.bootstrapToken!, TOKEN_SERVICE_SUBJECT: "py-grpc@example.com" });
    expectTheWholeStory(result, "py-grpc@example.com");
  });

  it("does the same through the HTTP port, which speaks gRPC over cleartext HTTP/2 too", async () => {
    const result = await smoke({ TOKEN_SERVICE_ADDR: `127.0.0.1:${plain.service.httpPort}`, TOKEN_SERVICE_TOKEN: plain.bootstrapToken!, TOKEN_SERVICE_SUBJECT: "py-http@example.com" });
    expectTheWholeStory(result, "py-http@example.com");
  });

  it("does the same under mutual TLS, presenting a client certificate", async () => {
    const result = await smoke({
      TOKEN_SERVICE_ADDR: `127.0.0.1:${mutual.service.grpcPort}`,
      TOKEN_SERVICE_TOKEN: mutual.bootstrapToken!,
      TOKEN_SERVICE_SUBJECT: "py-mtls@example.com",
      TOKEN_SERVICE_CA: pki.caCert,
      TOKEN_SERVICE_CLIENT_CERT: pki.clientCert,
      TOKEN_SERVICE_CLIENT_KEY: pki.clientKey,
    });
    expectTheWholeStory(result, "py-mtls@example.com");
  });

  it("fails, with the status, when the service refuses the caller", async () => {
    await expect(smoke({ TOKEN_SERVICE_ADDR: `127.0.0.1:${plain.service.grpcPort}`, TOKEN_SERVICE_TOKEN: "cf-AAAAAAAAAAAAAAAAAAAAAA" })).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringContaining("rpc failed: UNAUTHENTICATED"),
    });
  });
});
