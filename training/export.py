"""Export a training export folder (bf16 parts, official names) as the shipped model directory.

Where it fits: the last step of training/README.md. Reads `--export` (what train.py writes to `<state>/export` and the
GPU machine sends back: config.json, model-0000i-of-0000n.safetensors + index, summary.json), loads it with the
reference package (so names and shapes are checked against the config), and writes `--out`: config.json,
tokenizer.json and ONE model.safetensors (bf16) — the layout the Rust loader and the official checkpoint share.
It then reloads the written folder and checks that every tensor matches bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import torch
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ref", default=os.path.join(HERE, "..", "tools", "reference"))
    ap.add_argument("--trained-tiers", default="",
                    help="comma-separated modes the model was trained to read (e.g. tiny,small), written to config.json "
                         "as `trained_tiers`: the server's default tier policy keeps to them")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.ref))
    from optimem_ref import DeepseekOCR

    model = DeepseekOCR.from_pretrained(args.export, dtype=torch.bfloat16)
    meta = {"producer": "optimem training/export.py", "license": "Apache-2.0"}
    summ_path = os.path.join(args.export, "summary.json")
    if os.path.exists(summ_path):
        with open(summ_path, encoding="utf-8") as f:
            s = json.load(f)
        meta.update({"pages_seen": str(s.get("pages_total")), "train_seconds": str(s.get("train_seconds_total")),
                     "steps": str(s.get("step"))})
    os.makedirs(args.out, exist_ok=True)
    for stale in ("model.safetensors.index.json",):
        if os.path.exists(os.path.join(args.out, stale)):
            os.remove(os.path.join(args.out, stale))
    model.save_pretrained(args.out, dtype=torch.bfloat16, metadata=meta)
    shutil.copyfile(args.tokenizer, os.path.join(args.out, "tokenizer.json"))
    if args.trained_tiers:
        tiers = [t.strip().lower() for t in args.trained_tiers.split(",") if t.strip()]
        bad = [t for t in tiers if t not in ("tiny", "small", "base", "large", "gundam")]
        if bad or not tiers:
            raise SystemExit(f"--trained-tiers: unknown or missing modes {bad or tiers}")
        cfg_path = os.path.join(args.out, "config.json")
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
        cfg["trained_tiers"] = tiers
        with open(cfg_path, "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
    # check: the single file holds exactly the exported tensors
    written = load_file(os.path.join(args.out, "model.safetensors"))
    src = {}
    with open(os.path.join(args.export, "model.safetensors.index.json"), encoding="utf-8") as f:
        for fn in sorted(set(json.load(f)["weight_map"].values())):
            src.update(load_file(os.path.join(args.export, fn)))
    if set(written) != set(src) or any(not torch.equal(written[k], src[k]) for k in src):
        raise SystemExit("export mismatch between the training parts and model.safetensors")
    n = sum(t.numel() for t in written.values())
    size = os.path.getsize(os.path.join(args.out, "model.safetensors"))
    print(f"wrote {args.out}: {len(written)} tensors, {n} parameters, model.safetensors {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
