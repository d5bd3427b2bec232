#!/usr/bin/env bash
# Creates .venv-bench (Pillow from PyPI) for `optimem bench render`'s side-by-side Pillow run. Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv="$root/.venv-bench"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import PIL' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'pillow==13.0.0'
fi
echo "$venv/bin/python"
