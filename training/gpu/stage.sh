#!/usr/bin/env bash
# Stages what the GPU machine needs into the lead checkout's git-ignored `.gpu/` (the device tool sends that
# checkout plus carried paths; see training/README.md). Run here, from this worktree.
# Usage: [CORPUS_XZ=corpus.tar.xz | CORPUS_SHARE=0.5 [NO_ZH=1]] training/gpu/stage.sh RENDERER_BINARY [RESUME_MODEL_DIR]
# Resuming the shipped model (session 5 on): SLIM_MODEL=1 tools/device/slim.sh on, and stage the model as
# RESUME_MODEL_DIR with a corpus share that keeps the whole call under 64 MiB (RESULTS.md "Next").
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${GPU_STAGE:-/work/main/.gpu}
BIN=$1; RESUME=${2:-}
rm -rf "$DEST"; mkdir -p "$DEST/training" "$DEST/ref"
cp training/*.py training/model_config.json "$DEST/training/"
cp training/gpu/launch.sh training/gpu/watch.sh "$DEST/"
cp -r tools/reference/optimem_ref "$DEST/ref/"
find "$DEST" -name __pycache__ -prune -exec rm -rf {} +
cp training/data/tokenizer.json training/data/aux_chars.txt "$DEST/"
if [ -n "${CORPUS_XZ:-}" ]; then cp "$CORPUS_XZ" "$DEST/corpus.tar.xz"  # an archive of training/data/corpus made earlier
elif [ -n "${CORPUS_SHARE:-}" ]; then
  # A smaller corpus, so that a resumed model fits beside it in one call's 64 MiB: the first CORPUS_SHARE of every
  # training source's paragraphs (NO_ZH=1 drops the Chinese sources too), the held-out split whole.
  SUB=$(mktemp -d); mkdir -p "$SUB/corpus/train"; cp -r training/data/corpus/heldout "$SUB/corpus/"
  for f in training/data/corpus/train/*.txt; do
    case "$f" in *-zh.txt) [ "${NO_ZH:-0}" = 1 ] && continue ;; esac
    n=$(wc -l < "$f"); head -n "$(python3 -c "import math; print(max(1, math.ceil($n * $CORPUS_SHARE)))")" "$f" > "$SUB/corpus/train/$(basename "$f")"
  done
  (cd "$SUB" && tar cf - corpus | xz -T2 -6) > "$DEST/corpus.tar.xz"; rm -rf "$SUB"
else (cd training/data && tar cf - corpus | xz -T2 -6) > "$DEST/corpus.tar.xz"; fi
strip -o /tmp/optimem.stripped "$BIN" && xz -T2 -6 -c /tmp/optimem.stripped > "$DEST/optimem.xz"
if [ -n "$RESUME" ]; then mkdir -p "$DEST/resume" && cp "$RESUME"/* "$DEST/resume/"; fi
du -sh "$DEST"; du -sh "$DEST"/*
