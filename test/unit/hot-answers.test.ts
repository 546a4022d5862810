import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { describe, expect, it } from "vitest";
import { HotAnswers } from "../../src/rpc/hot-answers.js";

async function fullGc(): Promise<void> {
  setFlagsFromString("--expose-gc");
  const gc = runInNewContext("gc") as () => void;
  for (let i = 0; i < 3; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
    gc();
  }
}

describe("HotAnswers", () => {
  it("keeps at most its bound, oldest out first", () => {
    const hot = new HotAnswers<object, number>(3);
    const keys = [{}, {}, {}, {}, {}];
    keys.forEach((key, i) => hot.set(key, i));
    expect(hot.size()).toBe(3);
    expect(hot.get(keys[0]!)).toBeUndefined();
    expect(hot.get(keys[1]!)).toBeUndefined();
    expect([hot.get(keys[2]!), hot.get(keys[3]!), hot.get(keys[4]!)]).toEqual([2, 3, 4]);
  });

  it("lets an answer go with its key: nothing is held for keys dropped elsewhere", async () => {
    const hot = new HotAnswers<object, string>(10_000);
    const kept = { id: "kept" };
    hot.set(kept, "kept answer");
    for (let i = 0; i < 5_000; i++) hot.set({ id: i }, "x".repeat(100) + i);
    await fullGc();
    expect(hot.size()).toBe(1);
    expect(hot.get(kept)).toBe("kept answer");
  });
});
