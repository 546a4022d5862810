import { describe, expect, it } from "vitest";
import { RevocationHub, type RevocationLog, type RevocationLogEntry } from "../../src/domain/revocation-hub.js";

/** An in-memory revocation log. */
function fakeLog() {
  const entries: RevocationLogEntry[] = [];
  let prunedThrough = 0;
  let failing = false;
  const log: RevocationLog = {
    async readAfter(position, limit) {
      if (failing) throw new Error("store down");
      return { entries: entries.filter((e) => e.position > position).slice(0, limit), head: entries.at(-1)?.position ?? prunedThrough, prunedThrough };
    },
    async prune() {
      return 0;
    },
  };
  return {
    log,
    append(key: string) {
      const position = (entries.at(-1)?.position ?? prunedThrough) + 1;
      entries.push({ position, kind: "token", id: `id-${key}`, key });
      return position;
    },
    pruneAll() {
      prunedThrough = entries.at(-1)?.position ?? prunedThrough;
      entries.length = 0;
    },
    fail(on: boolean) {
      failing = on;
    },
  };
}

function recorder(hub: RevocationHub) {
  const events: string[] = [];
  hub.subscribe({ revoked: (key) => events.push(`revoked ${key}`), confirmed: (at) => events.push(`confirmed ${at}`), reset: () => events.push("reset") });
  return events;
}

describe("the revocation hub's place in the log", () => {
  it("starts at the log's head without evicting anything, then follows contiguous notices", async () => {
    const store = fakeLog();
    store.append("a");
    store.append("b");
    const hub = new RevocationHub(store.log);
    const events = recorder(hub);
    hub.restored();
    await hub.catchUp();
    expect(hub.position).toBe(2);
    expect(events).toEqual([]);
    hub.revoked("c", "id-c", store.append("c"));
    expect(hub.position).toBe(3);
    hub.confirm(100);
    expect(events).toEqual(["revoked c", "confirmed 100"]);
  });

  it("after a blip, evicts just what it missed and holds confirmations back until caught up", async () => {
    const store = fakeLog();
    const hub = new RevocationHub(store.log);
    hub.restored();
    await hub.catchUp();
    const events = recorder(hub);
    store.append("x"); // missed while deaf
    store.append("y");
    store.fail(true);
    hub.restored();
    hub.confirm(500); // heard on the new session, but the catch-up has not succeeded
    await hub.catchUp();
    expect(events).toEqual([]);
    expect(hub.confirmedAt).toBe(0);
    store.fail(false);
    hub.confirm(600); // the next heartbeat tries again
    await hub.catchUp();
    expect(events).toEqual(["revoked x", "revoked y", "confirmed 600"]);
    expect(hub.position).toBe(2);
  });

  it("resets only when its position is older than the log keeps", async () => {
    const store = fakeLog();
    const hub = new RevocationHub(store.log);
    hub.restored();
    await hub.catchUp();
    const events = recorder(hub);
    store.append("x");
    store.pruneAll();
    store.append("y");
    hub.restored();
    await hub.catchUp();
    expect(events[0]).toBe("reset");
    expect(hub.position).toBe(2);
  });

  it("reads the log when a notice skips a position", async () => {
    const store = fakeLog();
    const hub = new RevocationHub(store.log);
    hub.restored();
    await hub.catchUp();
    const events = recorder(hub);
    store.append("lost");
    const p = store.append("heard");
    hub.revoked("heard", "id-heard", p);
    await hub.catchUp();
    expect(events).toContain("revoked lost");
    expect(hub.position).toBe(2);
  });

  it("polls: each successful read confirms what committed before it began", async () => {
    const store = fakeLog();
    const hub = new RevocationHub(store.log);
    const events = recorder(hub);
    expect(await hub.poll(10)).toBe(true);
    store.append("z");
    expect(await hub.poll(20)).toBe(true);
    store.fail(true);
    expect(await hub.poll(30)).toBe(false);
    expect(events).toEqual(["confirmed 10", "revoked z", "confirmed 20"]);
    expect(hub.mark()).toEqual({ position: 1, confirmedAt: 20 });
  });

  it("without a log, a blip resets every listener as before", () => {
    const hub = new RevocationHub();
    const events = recorder(hub);
    hub.restored();
    expect(events).toEqual(["reset"]);
  });
});

describe("revocation transport configuration", () => {
  it("defaults to notify, polls every 250ms when asked, and keeps the log 24h", async () => {
    const { loadConfig } = await import("../../src/config.js");
    expect(loadConfig({})).toMatchObject({ revocationTransport: "notify", revocationPollIntervalMs: 250, revocationLogRetentionMs: 86_400_000 });
    expect(loadConfig({ REVOCATION_TRANSPORT: "poll" }).revocationTransport).toBe("poll");
    expect(() => loadConfig({ REVOCATION_TRANSPORT: "kafka" })).toThrow(/REVOCATION_TRANSPORT/);
    // A poll interval that would let cached answers expire between polls is refused.
    expect(() => loadConfig({ REVOCATION_TRANSPORT: "poll", REVOCATION_POLL_INTERVAL: "1500ms", CACHE_STALENESS: "2s" })).toThrow(/REVOCATION_POLL_INTERVAL/);
    expect(() => loadConfig({ REVOCATION_LOG_RETENTION: "10s" })).toThrow(/REVOCATION_LOG_RETENTION/);
  });
});

describe("pruning the revocation log", () => {
  it("deletes in bounded batches, stops at the first short one, and keeps going after a failure", async () => {
    const { RevocationLogPruner } = await import("../../src/domain/revocation-tasks.js");
    const quiet = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined } as never;
    let left = 2500;
    const cutoffs: Date[] = [];
    const store: RevocationLog = {
      readAfter: async () => ({ entries: [], head: 0, prunedThrough: 0 }),
      prune: async (cutoff, limit) => {
        cutoffs.push(cutoff);
        const n = Math.min(left, limit);
        left -= n;
        return n;
      },
    };
    const pruner = new RevocationLogPruner(store, 3_600_000, quiet, 60_000, () => 10_000_000);
    expect(await pruner.run()).toBe(2500);
    expect(cutoffs).toHaveLength(3); // 1000, 1000, 500
    expect(cutoffs[0]!.getTime()).toBe(10_000_000 - 3_600_000);
    const failing = new RevocationLogPruner({ ...store, prune: async () => Promise.reject(new Error("down")) }, 1, quiet);
    expect(await failing.run()).toBe(0);
  });
});
