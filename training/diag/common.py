"""What the diagnostics over evaluate.py's held-out pages share: their command line and their pages.

Where it fits: imported by diag/drift.py and diag/tf_by_position.py (run from the repository root).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "training"))
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
import evaluate as E  # noqa: E402


def heldout_small_pages(threads: int, buckets=(300, 700, 1200)):
    """Parses --model, --renderer, --heldout and --per-bucket, loads the model on the CPU and builds the English Small
    greedy pages of `evaluate.py --tf-pages 16 --per-bucket N` in the buckets starting at `buckets` → (model, tokenizer,
    `<image>` id, EOS id, prompt ids, [(bucket, header, pixels)])."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/optimem-tiny")
    ap.add_argument("--renderer", required=True)
    ap.add_argument("--heldout", default="training/data/corpus/heldout")
    ap.add_argument("--per-bucket", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(threads)
    model, tok, image_id, eos, prompt_ids = E.load_exported(args.model, torch.device("cpu"))
    es = E.EvalSet.build(args.heldout, args.renderer, tok, 16, args.per_bucket, tiers=("small",), langs=("en",),
                         low=False)
    pages = [p for p in es.greedy["small"] if p[0][0] in buckets]
    return model, tok, image_id, eos, prompt_ids, pages
