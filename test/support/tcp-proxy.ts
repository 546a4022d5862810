import * as net from "node:net";

/**
 * A TCP proxy on 127.0.0.1 that a test can cut and restore, to play a store
 * outage over a real connection: `cut()` drops every open connection and
 * refuses new ones; `restore()` accepts again.
 */
export async function startTcpProxy(targetPort: number, targetHost = "127.0.0.1") {
  const sockets = new Set<net.Socket>();
  let up = true;
  let frozen = false;
  const server = net.createServer((client) => {
    if (!up) {
      client.destroy();
      return;
    }
    const upstream = net.connect(targetPort, targetHost);
    if (frozen) {
      client.pause();
      upstream.pause();
    }
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => s.destroy());
    }
    client.pipe(upstream).pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    cut(): void {
      up = false;
      for (const s of sockets) s.destroy();
    },
    restore(): void {
      up = true;
      frozen = false;
      for (const s of sockets) s.resume();
    },
    /** Keeps every connection open but lets nothing through: a silent stall (half-open TCP). */
    freeze(): void {
      frozen = true;
      for (const s of sockets) s.pause();
    },
    close(): Promise<void> {
      for (const s of sockets) s.destroy();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
