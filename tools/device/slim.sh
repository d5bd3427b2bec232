#!/usr/bin/env bash
# Makes the GPU device tool's copy of this checkout smaller, for one call at a time.
#
# The device tool sends every tracked (and untracked, not ignored) file, within 64 MiB. With the bundled model tracked
# the tree is ~60 MB, leaving no room for what a training or benchmark call must carry (corpus, renderer or CUDA
# binary). Nothing on the GPU machine needs the parity fixtures, the font files (compiled into the binary) or the
# tokenizer assets, so `on` takes them out of the index and ignores them (the files stay on disk), and `off` puts
# them back exactly. Never commit between `on` and `off`.
#
# `SLIM_MODEL=1 tools/device/slim.sh on` also leaves the bundled model behind (a training run from scratch, or one
# that carries its resume weights itself); `off` always restores every path.
#
# Usage: tools/device/slim.sh on|off|status
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
paths=(tests/fixtures renderer/fonts assets)
if [ "${1:-}" = off ] || [ "${SLIM_MODEL:-0}" = 1 ]; then paths+=(models); fi
exclude=$(git rev-parse --git-path info/exclude)
case "${1:-status}" in
  on)
    if [ -n "$(git diff --cached --name-only)" ]; then echo "slim: the index has staged changes; commit or unstage first" >&2; exit 1; fi
    for p in "${paths[@]}"; do grep -qxF "/$p/" "$exclude" 2>/dev/null || echo "/$p/" >> "$exclude"; done
    git rm -r -q --cached "${paths[@]}"
    ;;
  off)
    git reset -q -- "${paths[@]}"
    for p in "${paths[@]}"; do sed -i "\#^/$p/\$#d" "$exclude"; done
    ;;
  status) ;;
  *) echo "usage: $0 on|off|status" >&2; exit 2 ;;
esac
echo "tracked: $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes in $(git ls-files | wc -l) files"
