"""What the diagnostics over evaluate.py's held-out pages share: their command line and their pages.

Where it fits: imported by diag/drift.py, diag/tf_by_position.py, diag/row_offset.py and finetune_cpu.py (run from
the repository root).
"""

from __future__ import annotations

import argparse
import os
import random
import sys

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "training"))
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
import data as D  # noqa: E402
import evaluate as E  # noqa: E402


def heldout_small_pages(threads: int, buckets=(300, 700, 1200), ap: argparse.ArgumentParser | None = None):
    """Parses --model, --renderer, --heldout and --per-bucket (with whatever else `ap` already holds; its values are
    set on `ap.parsed`), loads the model on the CPU and builds the English Small greedy pages of `evaluate.py
    --tf-pages 16 --per-bucket N` in the buckets starting at `buckets` → (model, tokenizer, `<image>` id, EOS id,
    prompt ids, [(bucket, header, pixels)])."""
    ap = ap or argparse.ArgumentParser()
    ap.add_argument("--model", default="models/optimem-tiny")
    ap.add_argument("--renderer", required=True)
    ap.add_argument("--heldout", default="training/data/corpus/heldout")
    ap.add_argument("--per-bucket", type=int, default=6)
    args = ap.parse_args()
    ap.parsed = args
    torch.set_num_threads(threads)
    model, tok, image_id, eos, prompt_ids = E.load_exported(args.model, torch.device("cpu"))
    es = E.EvalSet.build(args.heldout, args.renderer, tok, 16, args.per_bucket, tiers=("small",), langs=("en",),
                         low=False)
    pages = [p for p in es.greedy["small"] if p[0][0] in buckets]
    return model, tok, image_id, eos, prompt_ids, pages


def prose_texts(heldout: str, pages: int, chars: int, seed: int = 3) -> list[str]:
    """`pages` held-out English texts of `chars` characters, one paragraph of prose each, whitespace collapsed (those
    under 90 % of `chars` are skipped): the texts of diag/row_offset.py and finetune_cpu.py's probes."""
    corpus = D.Corpus(heldout, zh_share=0.0)
    rng = random.Random(seed)
    texts: list[str] = []
    while len(texts) < pages:
        t = " ".join(" ".join(corpus.paragraphs(rng, chars)).split())[:chars]
        if len(t) > 0.9 * chars:
            texts.append(t)
    return texts


def pages_at(renderer: str, texts: list[str], font_size: float, top: float = 0.0) -> list[tuple]:
    """The texts as Small pages in one type size, each starting `top` logical units down its page (0: at the top,
    as without the field), as (bucket, header, pixels) with the one bucket (0, 1)."""
    reqs = [{"text": t, "font_size": font_size, "tier": "small", "top": top} for t in texts]
    return [((0, 1), h, p) for h, p in D.render_fixed(renderer, reqs)]
