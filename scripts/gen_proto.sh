#!/usr/bin/env bash
# Regenerate fedseed/proto/*_pb2*.py(i) from proto/fedseed/proto/*.proto.
# The generator is pinned (grpcio-tools, mypy-protobuf in pyproject's dev extra);
# tests/test_proto.py fails when the committed code is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.}
PY=${PYTHON:-.venv/bin/python}
"$PY" -m grpc_tools.protoc -I proto \
  --python_out="$OUT" --grpc_python_out="$OUT" \
  --plugin=protoc-gen-mypy="$(dirname "$PY")/protoc-gen-mypy" --mypy_out="$OUT" \
  --plugin=protoc-gen-mypy_grpc="$(dirname "$PY")/protoc-gen-mypy_grpc" --mypy_grpc_out="$OUT" \
  proto/fedseed/proto/coordinator.proto
