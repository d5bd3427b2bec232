#!/usr/bin/env bash
# The issue 3/4 GPU benchmarks in one device call: our CUDA build against the PyTorch reference on the same
# official-shape random weights (tools/reference/bench_full.py), on the H200 machine (stock python3 with torch,
# transformers, safetensors; no Rust). Carry `.cuda/optimem.xz` (tools/cuda/build.sh) with the call.
#
#   TAG=name bash tools/cuda/bench_h200.sh [STEP ...]   # default: all steps; logs and JSON packed in $OUT/bench-TAG.tgz
#
# Steps: decoder (1,000-token prefill + 64 steps, auto dispatch, --profile on both sides), dispatch (our prefill under
# the grouped and the padded MoE dispatch, the same weights), encoder-base (20 pages, --profile on both sides),
# encoder-gundam (10 pages), ncu-decoder and ncu-encoder (Nsight Compute: the GPU time of every kernel of one profiled
# prefill or page, summed by kernel; tools/cuda/ncu_summary.py), kernels (`optimem bench kernels`: every fused kernel
# against the composite ops it replaces, differences and times; fails on a difference past tolerance), fused (our
# decoder prefill and Base encoder with the fused kernels and with `--no-fused`, alternating, the same weights).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-} PYTHONUNBUFFERED=1
B=/tmp/optimem-cuda
W=/tmp/official
[ -x "$B" ] || { xz -dc .cuda/optimem.xz > "$B" && chmod +x "$B"; }
if [ ! -f "$W/config.json" ]; then
  t=$(date +%s)
  python3 tools/reference/bench_full.py make-weights --out "$W" --seed 0 > "$OUT/make-weights.log" 2>&1
  echo "make-weights: $(( $(date +%s) - t )) s"
fi
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(decoder dispatch encoder-base encoder-gundam)
tag=${TAG:-run}
for step in "${steps[@]}"; do
  t=$(date +%s)
  case "$step" in
    decoder)
      python3 tools/reference/bench_full.py decoder --model "$W" --binary "$B" --device cuda \
        --prompt-tokens 1000 --decode-tokens 64 --repeat 5 --profile --json-out "$OUT/decoder-1000-64-$tag.json" \
        > "$OUT/decoder-$tag.md" 2> "$OUT/decoder-$tag.err" ;;
    dispatch)
      for d in grouped padded; do
        "$B" bench decoder --model "$W" --prompt-tokens 1000 --decode-tokens 8 --repeat 5 --dispatch "$d" --json \
          > "$OUT/dispatch-$d-$tag.json" 2> "$OUT/dispatch-$d-$tag.err"
      done ;;
    encoder-base)
      python3 tools/reference/bench_full.py encoder --model "$W" --binary "$B" --device cuda --mode base --iters 20 \
        --profile --json-out "$OUT/encoder-base-$tag.json" > "$OUT/encoder-base-$tag.md" 2> "$OUT/encoder-base-$tag.err" ;;
    encoder-gundam)
      python3 tools/reference/bench_full.py encoder --model "$W" --binary "$B" --device cuda --mode gundam --iters 10 \
        --json-out "$OUT/encoder-gundam-$tag.json" > "$OUT/encoder-gundam-$tag.md" 2> "$OUT/encoder-gundam-$tag.err" ;;
    kernels)
      "$B" bench kernels --repeat 20 > "$OUT/kernels-$tag.md" 2> "$OUT/kernels-$tag.err" || echo "kernels: exit $?" ;;
    fused)
      for round in 1 2; do
        for f in fused no-fused; do
          flag=(); [ "$f" = fused ] || flag=(--no-fused)
          "$B" bench decoder --model "$W" --prompt-tokens 1000 --decode-tokens 64 --repeat 5 --json "${flag[@]}" \
            > "$OUT/fused-decoder-$f-$round-$tag.json" 2> "$OUT/fused-decoder-$f-$round-$tag.err" || echo "decoder $f: exit $?"
          "$B" bench encoder --model "$W" --mode base --iters 20 --json "${flag[@]}" \
            > "$OUT/fused-encoder-$f-$round-$tag.json" 2> "$OUT/fused-encoder-$f-$round-$tag.err" || echo "encoder $f: exit $?"
        done
      done ;;
    ncu-decoder|ncu-encoder)
      # Kernel by kernel (Nsight Compute, GPU time of each launch) for the one pass `--profile` marks with
      # cuProfilerStart/Stop: a 1,000-token prefill, or one Base page.
      if [ "$step" = ncu-decoder ]; then
        args=(bench decoder --model "$W" --prompt-tokens 1000 --decode-tokens 1 --warmup 1 --repeat 1 --profile)
      else
        args=(bench encoder --model "$W" --mode base --iters 1 --warmup 1 --profile)
      fi
      timeout "${NCU_TIMEOUT:-150}" ncu --profile-from-start off --clock-control none --metrics gpu__time_duration.sum \
        --csv "$B" "${args[@]}" > "$OUT/$step-$tag.csv" 2> "$OUT/$step-$tag.err" || echo "$step: ncu exit $?"
      python3 tools/cuda/ncu_summary.py "$OUT/$step-$tag.csv" > "$OUT/$step-$tag.md" 2>> "$OUT/$step-$tag.err" || true ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
  echo "$step: $(( $(date +%s) - t )) s"
done
# The device tool brings back at most 8 files: everything in one archive.
if [ "${PACK:-1}" = 1 ]; then
  ( cd "$OUT" && find . -maxdepth 1 -type f ! -name '*.tgz' -printf '%P\n' | tar -czf "bench-$tag.tgz" -T - \
      && find . -maxdepth 1 -type f ! -name '*.tgz' -delete )
fi
