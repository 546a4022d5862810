#!/usr/bin/env bash
# Fails when a file (a test run's output, a service log) holds anything that
# looks like a credential: an API token of any environment, a JWT, or the
# value of a Bearer or Basic Authorization header.
#
#   scripts/check-logs.sh FILE...
#
# What it finds is reported by file, line and kind, never the value: the
# report must not leak what it found.
set -euo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: $0 FILE..." >&2
  exit 64
fi

# kind<TAB>extended regular expression
patterns=$(cat <<'PATTERNS'
development token	cf-[0-9A-Za-z]{22}
staging token	cfstg-[0-9A-Za-z]{22}
production token	cfprd-[0-9A-Za-z]{22}
JWT	eyJ[A-Za-z0-9_-]{10,}\.
Bearer credential	Bearer [^ "<]
Basic credential	Basic [A-Za-z0-9+/=]{8,}
PATTERNS
)

found=0
for file in "$@"; do
  if [ ! -r "$file" ]; then
    echo "check-logs: cannot read $file" >&2
    exit 66
  fi
  while IFS=$'\t' read -r kind regex; do
    # -o -n: one "line:match" per match; only the line number is kept.
    while IFS= read -r hit; do
      [ -n "$hit" ] || continue
      echo "check-logs: $file:${hit%%:*}: $kind" >&2
      found=$((found + 1))
    done < <(grep -noE -- "$regex" "$file" || true)
  done <<<"$patterns"
done

if [ "$found" -gt 0 ]; then
  echo "check-logs: $found credential-like value(s) found; nothing that looks like a token or an Authorization header may appear in output" >&2
  exit 1
fi
echo "check-logs: no token or Authorization header value in $*"
