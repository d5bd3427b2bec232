"""How well the encoder reads single glyphs at each type size: the trained glyph head's top-1 on held-out English pages
set in one font size, beside the probe's own ceiling (two glyph centres can share an 8-px sub-cell; the most frequent
character per sub-cell is the best any head can do). One JSON line per tier and font size.

Where it fits: a CPU diagnostic for training/RESULTS.md (session 10: the encoder reads type of 12 px and more at
93-99 % of the ceiling and degrades below 10 px). Run from the repository root:

    .venv-ref/bin/python training/diag/glyph_by_font.py --model models/optimem-tiny \
        --glyph-head training/logs/j18-glyph_head.pt --renderer target/release/optimem
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "training"))
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
import data as D  # noqa: E402
import evaluate as E  # noqa: E402
import train as T  # noqa: E402


def probe_ceiling(headers) -> float:
    """The best top-1 any per-sub-cell head can reach on these pages."""
    tot = best = 0
    for h in headers:
        cells = collections.defaultdict(collections.Counter)
        for ch, x, y in D.glyph_positions(h):
            cells[(int(x // 8), int(y // 8))][ch] += 1
        tot += sum(sum(c.values()) for c in cells.values())
        best += sum(max(c.values()) for c in cells.values())
    return best / max(1, tot)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/optimem-tiny")
    ap.add_argument("--glyph-head", required=True)
    ap.add_argument("--renderer", required=True)
    ap.add_argument("--heldout", default="training/data/corpus/heldout")
    ap.add_argument("--aux-chars", default="training/data/aux_chars.txt")
    ap.add_argument("--pages", type=int, default=8)
    ap.add_argument("--sizes", default="13,15,17,20,24,30,38")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, _, image_id, eos, _ = E.load_exported(args.model, torch.device("cpu"))
    with open(args.aux_chars, encoding="utf-8") as f:
        classes = D.CharClasses(f.read().rstrip("\n"), 256)
    head = T.GlyphHead(model.config.decoder.hidden_size, classes.n, 8, 64)
    head.load_state_dict({k: v.float() for k, v in torch.load(args.glyph_head, map_location="cpu").items()})
    head.eval()
    corpus = D.Corpus(args.heldout, zh_share=0.0)
    for tier in ("small", "tiny"):
        q = D.TIER_PX[tier] // D.CELL_PX
        n_img = q * (q + 1) + 1
        for fs in (float(s) for s in args.sizes.split(",")):
            rng = random.Random(7)  # the same text at every size
            reqs = [{"text": "\n".join(corpus.paragraphs(rng, 3000))[:3000], "font_size": fs, "tier": tier}
                    for _ in range(args.pages)]
            pages = [(h, p) for h, p in D.render_fixed(args.renderer, reqs) if p is not None]
            imgs = torch.from_numpy(np.stack([p for _, p in pages]))
            gi = D.pad_indices([D.glyph_targets(h, classes, 8) for h, _ in pages])
            # [BOS] + the image tokens: no prompt or target, only the vision tokens are read
            ids, mask, _ = T.build_inputs(torch.zeros((len(pages), 0), dtype=torch.long), n_img, [], image_id, eos)
            with torch.no_grad():
                out = model(ids, pixel_values=D.pixels(imgs), images_seq_mask=mask)
                logits, cls = head(out.vision_tokens, gi)
            hit = (logits.argmax(-1) == cls).float()
            acc = float(hit.mean())
            # the row of vision tokens each glyph lies in (sub-cell → token → row), for top-1 by row
            row = gi[gi >= 0] // classes.n // 64 // q
            by_row = [round(float(hit[row == r].mean()), 3) if bool((row == r).any()) else None for r in range(q)]
            ceil = probe_ceiling([h for h, _ in pages])
            print(json.dumps({"tier": tier, "font_size": fs, "px": round(fs * D.TIER_PX[tier] / 1024, 1),
                              "chars_per_page": round(sum(len(h["visible_text"]) for h, _ in pages) / len(pages)),
                              "glyph_top1": round(acc, 3), "ceiling": round(ceil, 3),
                              "of_ceiling": round(acc / ceil, 3), "top1_by_token_row": by_row}), flush=True)


if __name__ == "__main__":
    main()
