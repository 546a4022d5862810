#!/usr/bin/env bash
# Generates a Python gRPC client for the token service from proto/ into the
# directory given as the only argument (not committed: generated per use).
#
#   scripts/gen-python.sh /tmp/tokens-py
#   PYTHONPATH=/tmp/tokens-py /usr/bin/python3 -c 'from tokens.v1 import token_service_pb2_grpc'
#
# Needs Debian's python3-grpc-tools (which brings python3-grpcio and
# python3-protobuf); the modules live in the system Python, hence
# /usr/bin/python3 rather than whatever `python3` is first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: scripts/gen-python.sh <output-dir>}"
python="${PYTHON:-/usr/bin/python3}"
mkdir -p "$out"
"$python" -m grpc_tools.protoc -I proto --python_out="$out" --grpc_python_out="$out" proto/tokens/v1/token_service.proto
