"""Deepen a trained model's decoder without changing what it computes: each new layer is a copy of the layer it
follows, with its output projections (attention `o_proj`, every expert's and the shared experts' `down_proj`) set to
zero, so it adds exactly nothing to the residual stream until training moves those projections.

Where it fits: between two training runs (training/README.md, "Growing the decoder"). Long pages fail by the decoder
losing its place after a few lines while the encoder reads single glyphs near its ceiling (RESULTS.md, session 10), so
the next capacity goes into the decoder; this keeps the trained encoder, projector, embeddings and layers instead of
starting a new lineage. Works on the official names, so the grown folder loads in train.py (`--resume DIR`), in
evaluate.py and in the Rust loader like any other. It checks its own claim: the grown model's logits on a random page
and prompt equal the original's.

    python training/grow.py --model models/optimem-tiny --insert-after 1,2,3 --out /tmp/grown
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# the projections whose output is added to the residual stream: zero in a new layer
RESIDUAL_OUT = re.compile(r"^(self_attn\.o_proj|mlp\.(experts\.\d+\.|shared_experts\.)?down_proj)\.(weight|bias)$")


def load_tensors(directory: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """model.safetensors, or the parts an index names; and the single file's metadata."""
    single = os.path.join(directory, "model.safetensors")
    if os.path.exists(single):
        from safetensors import safe_open

        with safe_open(single, "pt") as f:
            meta = f.metadata() or {}
        return load_file(single), meta
    with open(os.path.join(directory, "model.safetensors.index.json"), encoding="utf-8") as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    out: dict[str, torch.Tensor] = {}
    for fn in files:
        out.update(load_file(os.path.join(directory, fn)))
    return out, {"format": "pt"}


def grow(tensors: dict[str, torch.Tensor], n_layers: int, first_dense: int, insert_after: list[int]):
    """The tensors of the deepened decoder and its new layer count. Layer i of `insert_after` (original numbering) is
    followed by a zero-output copy of itself."""
    for i in insert_after:
        if not 0 <= i < n_layers:
            raise SystemExit(f"--insert-after {i}: the decoder has layers 0..{n_layers - 1}")
        if i < first_dense:
            raise SystemExit(f"--insert-after {i}: layer {i} is dense (first_k_dense_replace = {first_dense}) and the "
                             "layer after it would be MoE; grow after a MoE layer")
    per_layer: dict[int, dict[str, torch.Tensor]] = {i: {} for i in range(n_layers)}
    out: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        m = LAYER.match(k)
        if m:
            per_layer[int(m.group(1))][m.group(2)] = v
        else:
            out[k] = v
    new_idx = 0
    for i in range(n_layers):
        for name, v in per_layer[i].items():
            out[f"model.layers.{new_idx}.{name}"] = v
        new_idx += 1
        for _ in range(insert_after.count(i)):
            copied = 0
            for name, v in per_layer[i].items():
                zero = RESIDUAL_OUT.match(name) is not None
                copied += zero
                out[f"model.layers.{new_idx}.{name}"] = torch.zeros_like(v) if zero else v.clone()
            if copied == 0:
                raise SystemExit(f"layer {i}: no output projection found to zero (names changed?)")
            new_idx += 1
    return out, new_idx


@torch.no_grad()
def same_function(ref_dir: str, a_dir: str, b_dir: str) -> float:
    """Max |Δ| of the last-position logits of the two models on one random page and prompt (f32)."""
    sys.path.insert(0, os.path.abspath(ref_dir))
    from optimem_ref import DeepseekOCR

    torch.manual_seed(0)
    ma = DeepseekOCR.from_pretrained(a_dir, dtype=torch.float32).eval()
    mb = DeepseekOCR.from_pretrained(b_dir, dtype=torch.float32).eval()
    side = 512
    q = side // 64
    n_img = q * (q + 1) + 1
    pix = torch.rand(1, 3, side, side) * 2 - 1
    text = torch.randint(2, 200, (1, 24))
    ids = torch.cat([torch.zeros(1, 1, dtype=torch.long), torch.full((1, n_img), 5, dtype=torch.long), text], 1)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, 1:1 + n_img] = True
    la = ma(ids, pixel_values=pix, images_seq_mask=mask).logits
    lb = mb(ids, pixel_values=pix, images_seq_mask=mask).logits
    return float((la - lb).abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model folder (model.safetensors or an export's parts)")
    ap.add_argument("--insert-after", required=True,
                    help="comma-separated decoder layers (original numbering) each followed by a zero-output copy")
    ap.add_argument("--out", required=True)
    ap.add_argument("--ref", default=os.path.join(HERE, "..", "tools", "reference"))
    args = ap.parse_args()
    with open(os.path.join(args.model, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    n, first_dense = cfg["num_hidden_layers"], cfg.get("first_k_dense_replace", 0)
    try:
        insert_after = sorted(int(x) for x in args.insert_after.split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"--insert-after {args.insert_after!r}: expected comma-separated layer numbers")
    if not insert_after:
        raise SystemExit("--insert-after: no layers given")
    tensors, meta = load_tensors(args.model)
    grown, n_new = grow(tensors, n, first_dense, insert_after)
    os.makedirs(args.out, exist_ok=True)
    cfg["num_hidden_layers"] = n_new
    with open(os.path.join(args.out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    meta = dict(meta, grown_from_layers=str(n), grown_insert_after=",".join(map(str, insert_after)))
    save_file({k: v.contiguous() for k, v in grown.items()}, os.path.join(args.out, "model.safetensors"), metadata=meta)
    # what a resume or an evaluation finds beside the weights comes along unchanged (the heads are encoder-side)
    for extra in ("tokenizer.json", "summary.json", "glyph_head.pt", "stage_heads.pt", "aux_head.pt"):
        if os.path.exists(os.path.join(args.model, extra)):
            shutil.copyfile(os.path.join(args.model, extra), os.path.join(args.out, extra))
    delta = same_function(args.ref, args.model, args.out)
    added = sum(v.numel() for k, v in grown.items()) - sum(v.numel() for v in tensors.values())
    print(json.dumps({"layers": [n, n_new], "parameters_added": added, "max_abs_logit_delta": delta}))
    if delta > 1e-5:
        raise SystemExit(f"the grown model computes something else (max |Δ| logits {delta:.3g})")


if __name__ == "__main__":
    main()
