import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/**
 * A throwaway PKI made at test time with the `openssl` CLI: a CA, a server
 * certificate for 127.0.0.1 and localhost, a client certificate from the same
 * CA, and a client certificate from an unrelated CA. Every file is a path in
 * `dir`; nothing is committed.
 */
export interface TestPki {
  readonly dir: string;
  /** CA certificate that signed the server and the good client certificate. */
  readonly caCert: string;
  readonly serverCert: string;
  readonly serverKey: string;
  readonly clientCert: string;
  readonly clientKey: string;
  /** A client certificate signed by another CA. */
  readonly strangerCert: string;
  readonly strangerKey: string;
  /** A private key that matches no certificate here. */
  readonly unrelatedKey: string;
  /** Reads one of the files above. */
  read(path: string): Promise<Buffer>;
  remove(): Promise<void>;
}

/**
 * Fails (never skips) when `openssl` is missing: `npm test` installs it (scripts/test-deps.sh).
 */
export async function makeTestPki(): Promise<TestPki> {
  await run("openssl", ["version"]).catch((error: unknown) => {
    throw new Error("the `openssl` CLI is needed to make test certificates (apt-get install openssl)", { cause: error });
  });
  const dir = await mkdtemp(join(tmpdir(), "tis-pki-"));
  const path = (name: string) => join(dir, name);
  const openssl = (...args: string[]) => run("openssl", args, { cwd: dir });
  // P-256 keys: quick to make, accepted by every client under test.
  const newKey = (name: string) => openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path(name));

  const ca = async (name: string, cn: string) => {
    await newKey(`${name}.key`);
    await openssl("req", "-x509", "-new", "-key", `${name}.key`, "-out", `${name}.pem`, "-days", "30", "-subj", `/CN=${cn}`,
      "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  };
  const leaf = async (name: string, caName: string, cn: string, extensions: string) => {
    await newKey(`${name}.key`);
    await openssl("req", "-new", "-key", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${cn}`);
    await writeFile(path(`${name}.ext`), extensions);
    // Explicit random serials: the leaves of one CA are signed in parallel, and a shared serial file would race.
    await openssl("x509", "-req", "-in", `${name}.csr`, "-CA", `${caName}.pem`, "-CAkey", `${caName}.key`,
      "-set_serial", `0x${randomBytes(16).toString("hex")}`,
      "-out", `${name}.pem`, "-days", "30", "-extfile", `${name}.ext`);
  };

  await Promise.all([ca("ca", "Token Service Test CA"), ca("stranger-ca", "Someone Else's CA"), newKey("unrelated.key")]);
  await Promise.all([
    leaf("server", "ca", "localhost", "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
    leaf("client", "ca", "gateway-1", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"),
    leaf("stranger", "stranger-ca", "gateway-1", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"),
  ]);
  return {
    dir,
    caCert: path("ca.pem"),
    serverCert: path("server.pem"),
    serverKey: path("server.key"),
    clientCert: path("client.pem"),
    clientKey: path("client.key"),
    strangerCert: path("stranger.pem"),
    strangerKey: path("stranger.key"),
    unrelatedKey: path("unrelated.key"),
    read: (file) => readFile(file),
    remove: () => rm(dir, { recursive: true, force: true }),
  };
}
