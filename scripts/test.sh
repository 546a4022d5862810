#!/usr/bin/env bash
# The whole test suite, as CI runs it: contract checks, type checks, then every
# test tier (unit, rpc, integration on PostgreSQL and embedded PGlite).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== Debian packages the tests use"
bash scripts/test-deps.sh

echo "== buf lint"
npx buf lint

echo "== generated code is fresh"
npx buf generate
if [ -d .git ] && [ -n "$(git status --porcelain -- gen)" ]; then
  git status --porcelain -- gen
  echo "gen/ is stale: run 'npm run generate' and commit the result" >&2
  exit 1
fi

echo "== type check"
npx tsc -p tsconfig.json --noEmit

echo "== build"
npm run build --silent

echo "== tests"
# The whole output is kept and scanned afterwards: no token or Authorization
# header value may appear in it, whether the tests pass or not.
output=$(mktemp)
trap 'rm -f "$output"' EXIT
status=0
npx vitest run 2>&1 | tee "$output" || status=$?

echo "== no token or Authorization header in the test output"
bash scripts/check-logs.sh "$output" || status=1
exit "$status"
