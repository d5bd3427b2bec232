#!/usr/bin/env bash
# Generates the Python stubs for optimem.v1 from proto/optimem/v1/memory.proto into examples/python/gen/, using
# grpcio-tools from PyPI in this example's own virtualenv (examples/python/.venv). Run from anywhere.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
proto_root="$here/../../proto"
python="${PYTHON:-python3}"
if [ ! -x "$here/.venv/bin/python" ]; then
  "$python" -m venv "$here/.venv"
fi
"$here/.venv/bin/pip" install --quiet --upgrade pip
"$here/.venv/bin/pip" install --quiet -r "$here/requirements.txt"
rm -rf "$here/gen"
mkdir -p "$here/gen"
"$here/.venv/bin/python" -m grpc_tools.protoc \
  -I "$proto_root" \
  --python_out="$here/gen" \
  --grpc_python_out="$here/gen" \
  "$proto_root/optimem/v1/memory.proto"
echo "stubs in $here/gen; run: $here/.venv/bin/python $here/agent.py"
