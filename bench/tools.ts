/**
 * The external load generators, h2load (HTTP/2: gRPC and Connect over h2c)
 * and wrk (HTTP/1.1), pinned to the load core, and the parsing of what they
 * print. Both are bounded by a duration (-D / -d) and, around them, by a
 * process timeout.
 */
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { LOAD_CPU, TMP_DIR, quantile, runBounded } from "./common.js";

/** Makes sure h2load and wrk are installed; installs them from Debian's packages if not (we run as root). */
export function ensureTools(log: (line: string) => void): void {
  const missing = () => ["h2load", "wrk"].filter((tool) => spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0);
  if (missing().length === 0) return;
  log(`installing load generators (missing: ${missing().join(", ")})`);
  const install = () => spawnSync("apt-get", ["install", "-y", "nghttp2-client", "wrk"], { stdio: "inherit", timeout: 180_000 }).status === 0;
  if (!install()) {
    spawnSync("apt-get", ["update"], { stdio: "inherit", timeout: 180_000 });
    if (!install()) throw new Error("cannot install nghttp2-client and wrk with apt-get");
  }
  if (missing().length > 0) throw new Error(`still missing after install: ${missing().join(", ")}`);
}

/** One load run's figures, whichever tool made them. */
export interface LoadFigures {
  readonly requests: number;
  readonly rate: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  /** Requests that failed at the HTTP level (errors, timeouts, non-2xx). */
  readonly failures: number;
}

/** An h2load run. */
export interface H2loadRun {
  readonly url: string;
  readonly bodyFile: string;
  readonly headers: readonly string[];
  /** Total concurrency: connections × streams per connection. */
  readonly concurrency: number;
  readonly seconds: number;
  /** Whether to keep per-request latencies (a log file) for percentiles. */
  readonly latencies: boolean;
  /** Cores h2load may run on (`taskset -c` list); default the load core alone. */
  readonly cpus?: string;
}

/**
 * How a concurrency is spread: up to 4 connections (a gateway keeps a few
 * long-lived HTTP/2 connections), the rest as concurrent streams on each.
 */
export function spread(concurrency: number): { connections: number; streams: number } {
  const connections = Math.min(4, concurrency);
  return { connections, streams: Math.max(1, Math.round(concurrency / connections)) };
}

/** Runs h2load and parses its summary; per-request latencies come from its --log-file. */
export async function h2load(run: H2loadRun): Promise<LoadFigures & { raw: string }> {
  const { connections, streams } = spread(run.concurrency);
  const logFile = resolve(TMP_DIR, "h2load-requests.log");
  writeFileSync(logFile, "");
  const args = ["-c", run.cpus ?? String(LOAD_CPU), "h2load", "-t", "1", "-c", String(connections), "-m", String(streams), "-D", String(run.seconds), "-d", run.bodyFile];
  for (const header of run.headers) args.push("-H", header);
  if (run.latencies) args.push("--log-file", logFile);
  args.push(run.url);
  const result = await runBounded("taskset", args, (run.seconds + 30) * 1000);
  if (result.code !== 0) throw new Error(`h2load failed (exit ${result.code}): ${result.stderr || result.stdout}`);
  const out = result.stdout;
  const requests = /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout/.exec(out);
  const codes = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(out);
  const finished = /finished in ([\d.]+)(m?s), ([\d.]+) req\/s/.exec(out);
  if (!requests || !codes || !finished) throw new Error(`cannot parse h2load output:\n${out}`);
  const succeeded = Number(requests[4]);
  const failures = Number(requests[5]) + Number(requests[6]) + Number(requests[7]) + Number(codes[2]) + Number(codes[3]) + Number(codes[4]);
  let p50Ms = Number.NaN;
  let p99Ms = Number.NaN;
  if (run.latencies) {
    // Columns: start (µs since epoch), HTTP status, µs until the end of the response.
    const lines = readFileSync(logFile, "utf8").split("\n");
    const micros = new Float64Array(lines.length);
    let n = 0;
    for (const line of lines) {
      const tab = line.lastIndexOf("\t");
      if (tab > 0) micros[n++] = Number(line.slice(tab + 1));
    }
    const sorted = micros.subarray(0, n).sort();
    p50Ms = quantile(sorted, 0.5) / 1000;
    p99Ms = quantile(sorted, 0.99) / 1000;
  }
  const seconds = Number(finished[1]) / (finished[2] === "ms" ? 1000 : 1);
  return { requests: succeeded, rate: succeeded / seconds, p50Ms, p99Ms, failures, raw: out };
}

/** A wrk run (HTTP/1.1, one thread, keep-alive connections). */
export interface WrkRun {
  readonly url: string;
  /** Lua script setting method, body and headers. */
  readonly script: string;
  readonly connections: number;
  readonly seconds: number;
}

/** Writes a wrk Lua script that POSTs `body` with `headers`. */
export function wrkPostScript(name: string, body: string, headers: Readonly<Record<string, string>>): string {
  const file = resolve(TMP_DIR, `${name}.lua`);
  const lines = ['wrk.method = "POST"', `wrk.body = ${JSON.stringify(body)}`];
  for (const [key, value] of Object.entries(headers)) lines.push(`wrk.headers[${JSON.stringify(key)}] = ${JSON.stringify(value)}`);
  writeFileSync(file, `${lines.join("\n")}\n`);
  return file;
}

/** Parses a wrk duration such as `812.00us`, `1.20ms`, `2.01s` into milliseconds. */
function wrkMillis(text: string): number {
  const match = /^([\d.]+)(us|ms|s|m)$/.exec(text);
  if (!match) return Number.NaN;
  const value = Number(match[1]);
  return match[2] === "us" ? value / 1000 : match[2] === "ms" ? value : match[2] === "s" ? value * 1000 : value * 60_000;
}

/** Runs wrk with --latency and parses requests/s, p50/p99 and failures. */
export async function wrk(run: WrkRun): Promise<LoadFigures & { raw: string }> {
  const args = ["-c", String(LOAD_CPU), "wrk", "-t", "1", "-c", String(run.connections), "-d", `${run.seconds}s`, "--latency", "-s", run.script, run.url];
  const result = await runBounded("taskset", args, (run.seconds + 30) * 1000);
  if (result.code !== 0) throw new Error(`wrk failed (exit ${result.code}): ${result.stderr || result.stdout}`);
  const out = result.stdout;
  const total = /(\d+) requests in/.exec(out);
  const rate = /Requests\/sec:\s+([\d.]+)/.exec(out);
  const p50 = /^\s+50%\s+(\S+)$/m.exec(out);
  const p99 = /^\s+99%\s+(\S+)$/m.exec(out);
  if (!total || !rate || !p50 || !p99) throw new Error(`cannot parse wrk output:\n${out}`);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(out);
  const socketErrors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const failures =
    Number(non2xx?.[1] ?? 0) + (socketErrors ? Number(socketErrors[1]) + Number(socketErrors[2]) + Number(socketErrors[3]) + Number(socketErrors[4]) : 0);
  return { requests: Number(total[1]) - Number(non2xx?.[1] ?? 0), rate: Number(rate[1]), p50Ms: wrkMillis(p50[1]!), p99Ms: wrkMillis(p99[1]!), failures, raw: out };
}
