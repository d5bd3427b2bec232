#!/usr/bin/env bash
# Runs ON THE GPU MACHINE: follows the training logs for up to SECONDS (or until every run has exited), then copies
# each run's log and, unless NO_EXPORT=1, its latest export (bf16 parts in official names, aux head, summary) to $OUT.
# One run: state folder $OSTATE (default /root/ostate), files straight into $OUT. Several runs side by side (each
# started by launch.sh with its own OSTATE): OSTATES="/root/a /root/b", files into $OUT/a, $OUT/b.
# SKIP="aux_head.pt summary.json" leaves those export files out (the device returns 8 files at most; the log's
# summary event carries the summary's figures).
# Usage: bash .gpu/watch.sh SECONDS
SECS=$1
read -r -a STATES <<< "${OSTATES:-${OSTATE:-/root/ostate}}"
end=$(( $(date +%s) + SECS ))
declare -A seen
alive() { [ -f "$1/pid" ] && kill -0 "$(cat "$1/pid")" 2>/dev/null; }
while :; do
  any=0
  for S in "${STATES[@]}"; do
    if [ -f "$S/log.jsonl" ]; then
      n=${seen[$S]:-0}; m=$(wc -l < "$S/log.jsonl")
      if [ "$m" -gt "$n" ]; then sed -n "$((n+1)),${m}p" "$S/log.jsonl" | cut -c1-900; seen[$S]=$m; fi
    fi
    alive "$S" && any=1
  done
  if [ "$any" = 0 ]; then echo "no training process running"; break; fi
  [ "$(date +%s)" -ge "$end" ] && break
  sleep 5
done
for S in "${STATES[@]}"; do
  for f in "$S"/train-*.out; do [ -f "$f" ] && { echo "--- tail of $f"; grep -v '^{' "$f" | tail -15; }; done
  [ -z "${OUT:-}" ] && continue
  D=$OUT; [ "${#STATES[@]}" -gt 1 ] && D="$OUT/$(basename "$S")" && mkdir -p "$D"
  cp "$S/log.jsonl" "$D"/ 2>/dev/null
  if [ "${NO_EXPORT:-0}" != 1 ]; then
    for i in 1 2 3 4 5 6; do [ -d "$S/export" ] && break; sleep 5; done
    if [ -d "$S/export" ]; then
      for f in "$S"/export/*; do case " ${SKIP:-} " in *" $(basename "$f") "*) ;; *) cp "$f" "$D"/ ;; esac; done
    fi
  elif [ -f "$S/export/summary.json" ]; then cp "$S/export/summary.json" "$D"/
  fi
done
[ -n "${OUT:-}" ] && find "$OUT" -type f | head -40
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
