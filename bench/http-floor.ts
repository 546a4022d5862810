/**
 * The HTTP/1.1 floor: a bare `node:http` server that reads the request body
 * and answers a fixed JSON document the size of a real RFC 7662 answer,
 * with no parsing, no auth and no lookup. Loaded exactly like the service's
 * `POST /oauth2/introspect` and oidc-provider's `/introspect` (wrk, same
 * form, same concurrency, in turns), it shows the most any Node.js server on
 * `node:http` can reach on this core, so a ratio over the peer that even
 * this floor cannot reach is a limit of the platform, not of the service.
 *
 * Listens on 127.0.0.1 only, on a free port it prints as
 * `http floor listening on 127.0.0.1:<port>`. FLOOR_RESPONSE_BYTES sets the
 * size of the answer (the runner passes the size of the service's answer).
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";

function main(): void {
  const size = Math.max(16, Number(process.env["FLOOR_RESPONSE_BYTES"] ?? "512"));
  // A valid JSON object of exactly `size` bytes: {"active":true,"p":"aaa…"}.
  const head = '{"active":true,"p":"';
  const body = Buffer.from(`${head}${"a".repeat(Math.max(0, size - head.length - 2))}"}`);
  const headers = { "content-type": "application/json", "content-length": String(body.length), "cache-control": "no-store" };
  const server = createServer((req, res) => {
    // Read (and drop) the form, as a real endpoint must before answering.
    req.on("data", () => undefined);
    req.on("end", () => {
      res.writeHead(200, headers);
      res.end(body);
    });
  });
  server.listen(0, "127.0.0.1", () => {
    process.stdout.write(`http floor listening on 127.0.0.1:${(server.address() as AddressInfo).port}\n`);
  });
  const stop = () => server.close(() => process.exit(0));
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main();
