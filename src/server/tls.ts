import { X509Certificate, createPrivateKey, type KeyObject } from "node:crypto";
import { readFile } from "node:fs/promises";
import { createSecureContext } from "node:tls";
import { ServerCredentials } from "@grpc/grpc-js";
import { ConfigError, type Config } from "../config.js";
import type { Logger } from "../domain/ports.js";

/**
 * TLS material for both ports, read and checked once at start-up from
 * `TLS_CERT_FILE`, `TLS_KEY_FILE` and `TLS_CLIENT_CA_FILE`. Mutual TLS
 * authenticates the connection, not the caller: every call still needs its
 * bearer token.
 */
export interface TlsMaterial {
  /** PEM certificate chain, server certificate first. */
  readonly cert: Buffer;
  /** PEM private key of the certificate. */
  readonly key: Buffer;
  /** PEM bundle of client CAs; set means mutual TLS (client certificates required and verified). */
  readonly clientCa: Buffer | undefined;
  /** Whether each port terminates TLS (`TLS_PORTS`). */
  readonly grpc: boolean;
  /** Whether the HTTP port terminates TLS (`TLS_PORTS`). */
  readonly http: boolean;
  /** The server certificate's subject and expiry, for logs and `tokenctl config check`. */
  readonly subject: string;
  /** When the server certificate expires. */
  readonly notAfter: Date;
}

/** The part of the configuration {@link loadTlsMaterial} reads. */
export type TlsConfig = Pick<Config, "tlsCertFile" | "tlsKeyFile" | "tlsClientCaFile" | "tlsPorts">;

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;

/**
 * Reads and checks the TLS files: each is readable, the certificate and CA
 * files hold PEM certificates, the key is an unencrypted PEM private key that
 * matches the certificate, and OpenSSL accepts them together. Returns
 * `undefined` when TLS is off (no `TLS_CERT_FILE`).
 *
 * @throws ConfigError naming every bad key
 */
export async function loadTlsMaterial(config: TlsConfig, log: Logger): Promise<TlsMaterial | undefined> {
  if (config.tlsCertFile === undefined || config.tlsKeyFile === undefined) return undefined;
  const problems: string[] = [];
  const read = async (key: string, path: string): Promise<Buffer | undefined> => {
    try {
      return await readFile(path);
    } catch (error) {
      problems.push(`${key}: cannot read ${path} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
      return undefined;
    }
  };
  const [cert, key, clientCa] = await Promise.all([
    read("TLS_CERT_FILE", config.tlsCertFile),
    read("TLS_KEY_FILE", config.tlsKeyFile),
    config.tlsClientCaFile === undefined ? undefined : read("TLS_CLIENT_CA_FILE", config.tlsClientCaFile),
  ]);

  const chain = cert && certificates("TLS_CERT_FILE", config.tlsCertFile, cert, problems);
  const leaf = chain?.[0];
  if (clientCa) certificates("TLS_CLIENT_CA_FILE", config.tlsClientCaFile!, clientCa, problems);
  let privateKey: KeyObject | undefined;
  if (key) {
    try {
      privateKey = createPrivateKey(key);
    } catch (error) {
      problems.push(`TLS_KEY_FILE: ${config.tlsKeyFile} is not an unencrypted PEM private key (${(error as Error).message})`);
    }
  }
  if (leaf && privateKey && !leaf.checkPrivateKey(privateKey)) {
    problems.push(`TLS_KEY_FILE: the key in ${config.tlsKeyFile} does not match the certificate in TLS_CERT_FILE (${config.tlsCertFile})`);
  }
  if (problems.length > 0) throw new ConfigError(problems);

  // Last word to OpenSSL, which the servers will use: anything it refuses
  // (a key too weak for the security level, say) should fail here, named.
  try {
    createSecureContext({ cert: cert!, key: key!, ...(clientCa ? { ca: clientCa } : {}) });
  } catch (error) {
    throw new ConfigError([`TLS_CERT_FILE, TLS_KEY_FILE${clientCa ? ", TLS_CLIENT_CA_FILE" : ""}: OpenSSL refuses them (${(error as Error).message})`]);
  }

  const notAfter = new Date(leaf!.validTo);
  const material: TlsMaterial = Object.freeze({
    cert: cert!,
    key: key!,
    clientCa,
    grpc: config.tlsPorts !== "http",
    http: config.tlsPorts !== "grpc",
    subject: leaf!.subject.replaceAll("\n", ", "),
    notAfter,
  });
  const fields = { subject: material.subject, not_after: notAfter.toISOString(), ports: config.tlsPorts, mutual_tls: clientCa !== undefined };
  if (notAfter.getTime() <= Date.now()) log.warn(fields, "TLS certificate has expired: clients will refuse it");
  else if (notAfter.getTime() - Date.now() < 14 * 86_400_000) log.warn(fields, "TLS certificate expires within 14 days");
  else log.info(fields, "TLS enabled");
  return material;
}

/** Parses every PEM certificate in a file, recording a problem under `key` if there is none or one is bad. */
function certificates(key: string, path: string, pem: Buffer, problems: string[]): X509Certificate[] | undefined {
  const blocks = pem.toString("latin1").match(PEM_CERTIFICATE);
  if (!blocks) {
    problems.push(`${key}: ${path} holds no PEM certificate`);
    return undefined;
  }
  try {
    return blocks.map((block) => new X509Certificate(block));
  } catch (error) {
    problems.push(`${key}: ${path} holds a certificate that cannot be parsed (${(error as Error).message})`);
    return undefined;
  }
}

/**
 * Credentials for the gRPC port: TLS (and client certificate checks under
 * mutual TLS) when the material says so, cleartext HTTP/2 otherwise.
 */
export function grpcServerCredentials(tls: TlsMaterial | undefined): ServerCredentials {
  if (!tls?.grpc) return ServerCredentials.createInsecure();
  return ServerCredentials.createSsl(tls.clientCa ?? null, [{ cert_chain: tls.cert, private_key: tls.key }], tls.clientCa !== undefined);
}

/** What `startHttpServer` needs to terminate TLS. */
export interface HttpTlsOptions {
  readonly cert: Buffer;
  readonly key: Buffer;
  /** Client CAs; set means client certificates are required and verified. */
  readonly clientCa: Buffer | undefined;
}

/** TLS options for the HTTP port, or `undefined` when it stays cleartext. */
export function httpTlsOptions(tls: TlsMaterial | undefined): HttpTlsOptions | undefined {
  return tls?.http ? { cert: tls.cert, key: tls.key, clientCa: tls.clientCa } : undefined;
}
