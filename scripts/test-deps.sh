#!/usr/bin/env bash
# The Debian packages the test suite runs against real parts with, installed
# when missing so that the README's `npm ci && npm test` stands on its own.
#   nginx-light          the nginx forward-auth example runs against a real nginx
#   caddy                the Caddy forward_auth example runs against a real Caddy
#   openssl              makes the TLS tests' certificates at test time
#   python3-grpc-tools   generates the Python client (grpcio, protobuf come with it)
#   postgresql-client    pg_dump, to prove no private key material is stored in the clear
# Installs only as root with apt-get (a CI machine or a container); anywhere
# else it stops at once and prints the exact command to run.
set -euo pipefail

missing=()
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then missing+=(nginx-light); fi
command -v caddy >/dev/null 2>&1 || missing+=(caddy)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v pg_dump >/dev/null 2>&1 || missing+=(postgresql-client)
/usr/bin/python3 -c 'import grpc, grpc_tools' >/dev/null 2>&1 || missing+=(python3-grpc-tools)

if [ "${#missing[@]}" -eq 0 ]; then exit 0; fi

command_line="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1 || [ "${TEST_DEPS_INSTALL:-auto}" = "never" ]; then
  echo "The tests need Debian packages that are missing: ${missing[*]}" >&2
  echo "Install them with:  sudo sh -c '$command_line'" >&2
  exit 1
fi
echo "== installing missing Debian packages: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
