#!/usr/bin/env bash
# Stages what the GPU machine needs into the lead checkout's git-ignored `.gpu/` (the device tool sends that
# checkout plus carried paths; see training/README.md). Run here, from this worktree.
# Usage: [CORPUS_XZ=corpus.tar.xz] training/gpu/stage.sh RENDERER_BINARY [RESUME_MODEL_DIR]
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
else (cd training/data && tar cf - corpus | xz -T2 -6) > "$DEST/corpus.tar.xz"; fi
strip -o /tmp/optimem.stripped "$BIN" && xz -T2 -6 -c /tmp/optimem.stripped > "$DEST/optimem.xz"
if [ -n "$RESUME" ]; then mkdir -p "$DEST/resume" && cp "$RESUME"/* "$DEST/resume/"; fi
du -sh "$DEST"; du -sh "$DEST"/*
