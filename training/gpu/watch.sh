#!/usr/bin/env bash
# Runs ON THE GPU MACHINE: follows the training log for up to SECONDS (or until training exits), then copies the
# latest export (bf16 parts in official names, aux head, summary) and the log to $OUT.
# Usage: bash .gpu/watch.sh SECONDS [RUN_ID]
S=${OSTATE:-/root/ostate}
SECS=$1; RUN=${2:-}
end=$(( $(date +%s) + SECS ))
n=0
alive() { [ -f "$S/pid" ] && kill -0 "$(cat "$S/pid")" 2>/dev/null; }
while [ "$(date +%s)" -lt "$end" ]; do
  if [ -f "$S/log.jsonl" ]; then
    m=$(wc -l < "$S/log.jsonl"); if [ "$m" -gt "$n" ]; then sed -n "$((n+1)),${m}p" "$S/log.jsonl" | cut -c1-600; n=$m; fi
  fi
  if ! alive; then echo "training process not running"; break; fi
  sleep 5
done
[ -n "$RUN" ] && [ -f "$S/train-$RUN.out" ] && { echo "--- tail of train-$RUN.out"; grep -v '^{' "$S/train-$RUN.out" | tail -25; }
for i in 1 2 3 4 5 6; do [ -d "$S/export" ] && break; sleep 5; done
if [ -d "$S/export" ] && [ -n "${OUT:-}" ]; then cp "$S"/export/* "$OUT"/ 2>/dev/null; cp "$S/log.jsonl" "$OUT"/ 2>/dev/null; fi
ls -la "${OUT:-/nonexistent}" 2>/dev/null | tail -n +2
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
