#!/usr/bin/env bash
# Stages what the GPU machine needs into the lead checkout's git-ignored `.gpu/` (the device tool sends that
# checkout plus carried paths; see training/README.md). Run here, from this worktree.
# Usage: [CORPUS_XZ=corpus.tar.xz | CORPUS_SHARE=0.5 | CORPUS_RANGE=0.45:0.9 [NO_ZH=1]] training/gpu/stage.sh RENDERER_BINARY [RESUME_MODEL_DIR]
#        CORPUS_RANGE=0:0.45 CORPUS_PART=p2 training/gpu/stage.sh   (adds .gpu/corpus-p2.tar.xz to what is staged: the
#        rest of the corpus for a later call on the warm machine, where launch.sh unpacks it beside the first part)
# Resuming the shipped model (session 5 on): SLIM_MODEL=1 tools/device/slim.sh on, and stage the model as
# RESUME_MODEL_DIR with a corpus share that keeps the whole call under 64 MiB (RESULTS.md "Next").
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${GPU_STAGE:-/work/main/.gpu}
[ -n "${CORPUS_SHARE:-}" ] && CORPUS_RANGE="0:$CORPUS_SHARE"
# The paragraphs from fraction A to fraction B of every training source (NO_ZH=1: English sources only), the held-out
# split whole, as corpus/ in an xz tar written to $1. Part files are named <source>.<part>-<lang>.txt (data.py merges
# them back into their source).
subset() {
  local out=$1 a=${CORPUS_RANGE%%:*} b=${CORPUS_RANGE##*:} SUB f n stem name
  SUB=$(mktemp -d); mkdir -p "$SUB/corpus/train"; cp -r training/data/corpus/heldout "$SUB/corpus/"
  for f in training/data/corpus/train/*.txt; do
    case "$f" in *-zh.txt) [ "${NO_ZH:-0}" = 1 ] && continue ;; esac
    n=$(wc -l < "$f"); stem=$(basename "$f" .txt); name=$stem
    [ -n "${CORPUS_PART:-}" ] && name="${stem%-*}.${CORPUS_PART}-${stem##*-}"
    python3 - "$f" "$n" "$a" "$b" > "$SUB/corpus/train/$name.txt" <<'PY'
import math, sys
path, n, a, b = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
lo, hi = int(math.floor(n * a)), max(int(math.floor(n * a)) + 1, int(math.ceil(n * b)))
with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f):
        if lo <= i < hi:
            sys.stdout.write(line)
PY
  done
  (cd "$SUB" && tar cf - corpus | xz -T2 -6) > "$out"; rm -rf "$SUB"
}
if [ -n "${CORPUS_PART:-}" ]; then  # an extra corpus part only, beside what is staged
  [ -n "${CORPUS_RANGE:-}" ] || { echo "CORPUS_PART needs CORPUS_RANGE" >&2; exit 2; }
  subset "$DEST/corpus-$CORPUS_PART.tar.xz"; du -sh "$DEST" "$DEST/corpus-$CORPUS_PART.tar.xz"; exit 0
fi
BIN=$1; RESUME=${2:-}
rm -rf "$DEST"; mkdir -p "$DEST/training" "$DEST/ref"
cp training/*.py training/model_config.json "$DEST/training/"
cp training/gpu/launch.sh training/gpu/watch.sh "$DEST/"
cp -r tools/reference/optimem_ref "$DEST/ref/"
find "$DEST" -name __pycache__ -prune -exec rm -rf {} +
cp training/data/tokenizer.json training/data/aux_chars.txt "$DEST/"
if [ -n "${CORPUS_XZ:-}" ]; then cp "$CORPUS_XZ" "$DEST/corpus.tar.xz"  # an archive of training/data/corpus made earlier
elif [ -n "${CORPUS_RANGE:-}" ]; then
  # A part of the corpus, so that a resumed model fits beside it in one call's 64 MiB.
  subset "$DEST/corpus.tar.xz"
else (cd training/data && tar cf - corpus | xz -T2 -6) > "$DEST/corpus.tar.xz"; fi
strip -o /tmp/optimem.stripped "$BIN" && xz -T2 -6 -c /tmp/optimem.stripped > "$DEST/optimem.xz"
# The resume folder as one xz tar: bf16 weights pack to ~70 % (j21: 43.7 -> 30.5 MB), which is what lets a grown
# model travel beside a corpus part and the renderer; launch.sh unpacks it on the machine.
if [ -n "$RESUME" ]; then (cd "$RESUME" && tar cf - .) | xz -T2 -6 > "$DEST/resume.tar.xz"; fi
du -sh "$DEST"; du -sh "$DEST"/*
