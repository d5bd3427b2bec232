#!/usr/bin/env bash
# Creates the reference virtualenv `.venv-ref` at the repo root from PyPI (requirements.txt beside this
# script). Idempotent: an existing venv that already has the pinned versions is left alone.
#   tools/reference/setup.sh            # -> .venv-ref
#   VENV=/path/to/venv PYTHON=python3.11 tools/reference/setup.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${VENV:-$root/.venv-ref}"
python="${PYTHON:-python3}"
req="$here/requirements.txt"

pinned_ok() {
  "$venv/bin/python" - "$req" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
ok = True
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, want = line.split("==")
    try:
        have = version(name).split("+")[0]
    except PackageNotFoundError:
        have = None
    if have != want:
        print(f"{name}: have {have}, want {want}")
        ok = False
sys.exit(0 if ok else 1)
PY
}

if [ -x "$venv/bin/python" ] && pinned_ok; then
  echo "$venv already has the pinned packages"
  exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --disable-pip-version-check -r "$req"
pinned_ok
"$venv/bin/python" -c "import torch, transformers, PIL; print('torch', torch.__version__, 'transformers', transformers.__version__, 'pillow', PIL.__version__)"
