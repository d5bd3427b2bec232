#!/usr/bin/env bash
# Runs ON THE GPU MACHINE from the repository root (the device tool's working copy), with `.gpu/` carried.
# Unpacks the staged inputs once into a work folder outside the repo ($OWORK, default /root/ow; kept while the machine
# stays warm), then starts training in its own process session so it outlives this call; watch.sh follows it in
# later calls. Each run keeps checkpoints and logs in its state folder $OSTATE (default /root/ostate): give runs
# that go side by side on one GPU their own OSTATE (and fewer --workers each).
# Usage: [OSTATE=/root/x] [RESUME_DIR=folder] [RESUME_HEADS=training/logs/RUN] bash .gpu/launch.sh RUN_ID SECONDS [extra train.py args...]
set -euo pipefail
REPO=$(pwd)
S=${OSTATE:-/root/ostate}
RUN=$1; SECS=$2; shift 2
W=${OWORK:-/root/ow}
mkdir -p "$S" "$W"
if [ ! -f "$W/ready" ]; then
  (cd "$W" && tar xJf "$REPO/.gpu/corpus.tar.xz" && xz -dc "$REPO/.gpu/optimem.xz" > optimem && chmod +x optimem && touch ready)
fi
# further corpus parts staged for this call (stage.sh CORPUS_PART): unpacked once each, beside the first part
for x in "$REPO"/.gpu/corpus-*.tar.xz; do
  [ -f "$x" ] || continue
  m="$W/.unpacked-$(basename "$x")"
  [ -f "$m" ] || { (cd "$W" && tar xJf "$x") && touch "$m" && echo "unpacked $(basename "$x")"; }
done
# the code and tokenizer files are small: always this call's copy
rm -rf "$W/training" "$W/ref"
cp -r "$REPO/.gpu/training" "$REPO/.gpu/ref" "$REPO/.gpu/tokenizer.json" "$REPO/.gpu/aux_chars.txt" "$W"/
# the staged resume folder (stage.sh packs it as .gpu/resume.tar.xz), unpacked once into $W/resume; the training
# heads travel in the tree, named by RESUME_HEADS (e.g. training/logs/j21: its -glyph_head.pt and -stage_heads.pt)
if [ -f "$REPO/.gpu/resume.tar.xz" ] && [ ! -f "$W/.unpacked-resume" ]; then
  mkdir -p "$W/resume" && tar xJf "$REPO/.gpu/resume.tar.xz" -C "$W/resume" && touch "$W/.unpacked-resume"
fi
if [ -n "${RESUME_HEADS:-}" ] && [ -d "$W/resume" ]; then
  for h in glyph_head stage_heads; do cp "$REPO/$RESUME_HEADS-$h.pt" "$W/resume/$h.pt"; done
fi
# the first run of a state folder resumes from $RESUME_DIR (default $W/resume; e.g. a grown copy made on this machine
# for a side-by-side run, or /root/ow/resume for a second arm with its own OWORK), later ones from their own checkpoint
R=${RESUME_DIR:-$W/resume}
if [ -d "$R" ] && [ ! -f "$S/ckpt.pt" ]; then RESUME="--resume $R"; else RESUME=""; fi
if [ -f "$S/ckpt.pt" ]; then RESUME="--resume $S/ckpt.pt"; fi
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv,noheader
NGPU=${NGPU:-$(python3 -c "import torch; print(torch.cuda.device_count())")}
echo "GPUs: $NGPU; cores: $(nproc); resume: ${RESUME:-none}"
ARGS=(--ref "$W/ref" --config "$W/training/model_config.json" --tokenizer "$W/tokenizer.json" --aux-chars "$W/aux_chars.txt"
      --corpus "$W/corpus/train" --heldout "$W/corpus/heldout" --renderer "$W/optimem" --state "$S" --run-id "$RUN"
      --seconds "$SECS" $RESUME "$@")
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if [ "$NGPU" -gt 1 ]; then
  setsid nohup torchrun --standalone --nproc_per_node="$NGPU" "$W/training/train.py" "${ARGS[@]}" > "$S/train-$RUN.out" 2>&1 < /dev/null &
else
  setsid nohup python3 "$W/training/train.py" "${ARGS[@]}" > "$S/train-$RUN.out" 2>&1 < /dev/null &
fi
echo $! > "$S/pid"
echo "launched $RUN (pid $(cat "$S/pid")) for $SECS s"
