/**
 * Memoises a pure function of an immutable object. The hot path uses it to
 * build things from a cached token once (its claims, its caller, its answer)
 * instead of on every call; entries go when the object does (a WeakMap).
 */
export function memoByObject<K extends object, V>(build: (key: K) => V): (key: K) => V {
  const memo = new WeakMap<K, V>();
  return (key) => {
    let value = memo.get(key);
    if (value === undefined) {
      value = build(key);
      memo.set(key, value);
    }
    return value;
  };
}
