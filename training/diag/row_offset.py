"""Does the model read a text wherever it sits on the page? The same short held-out English texts set at Small,
first at the top of the page, then lower and lower (render-stream's "top": blank space above the text), teacher-forced
next-token accuracy and greedy precision at each offset. A model that reads only where it was trained to read falls
off as the text moves down; a reader does not. One JSON line per offset.

Where it fits: a CPU diagnostic for training/RESULTS.md (session 11: j15 reads rows 0-2 and hardly reads rows ≥ 4,
though its vision tokens carry the glyphs of every row: diag/glyph_by_font.py's top-1 by token row). Run from the
repository root:

    .venv-ref/bin/python training/diag/row_offset.py --model models/optimem-tiny --renderer target/release/optimem
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "training"))
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as D  # noqa: E402
import evaluate as E  # noqa: E402
from common import pages_at, prose_texts  # noqa: E402
from tf_by_position import token_hits  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/optimem-tiny")
    ap.add_argument("--renderer", required=True)
    ap.add_argument("--heldout", default="training/data/corpus/heldout")
    ap.add_argument("--pages", type=int, default=8)
    ap.add_argument("--chars", type=int, default=350)
    ap.add_argument("--font-size", type=float, default=24.0)
    ap.add_argument("--tops", default="0,100,200,300,400,500,600", help="logical units of the 1024 canvas")
    ap.add_argument("--gaps", default="0,25,50,100",
                    help="then the texts at the top, with this many positions skipped between the image block and the "
                         "prompt (train.py --pos-gap): a decoder that reads by content does not care")
    args = ap.parse_args()
    torch.set_num_threads(2)
    dev = torch.device("cpu")
    model, tok, image_id, eos, prompt_ids = E.load_exported(args.model, dev)
    texts = prose_texts(args.heldout, args.pages, args.chars)
    for top in (float(t) for t in args.tops.split(",")):
        pages = pages_at(args.renderer, texts, args.font_size, top)
        hits, rows = [], set()
        for page in pages:
            for _, row, hit, _ in token_hits(model, page, tok, prompt_ids, image_id, eos, dev):
                hits.append(hit)
                rows.add(row)
        decoded = E.decode_pages(model, pages, "small", tok, prompt_ids, image_id, eos, dev, D.pixels,
                                 batch=args.pages)
        prec = [E.precision(pred, truth) for _, truth, pred, _ in decoded]
        print(json.dumps({"top": top, "token_rows": f"{min(rows)}-{max(rows)}",
                          "visible_chars": round(sum(len(p[1]["visible_text"]) for p in pages) / len(pages)),
                          "tf_accuracy": round(sum(hits) / len(hits), 3),
                          "greedy_precision": round(sum(prec) / len(prec), 3)}), flush=True)
    pages = pages_at(args.renderer, texts, args.font_size)
    for gap in (int(g) for g in args.gaps.split(",") if g.strip()):
        hits = [h for page in pages
                for _, _, h, _ in token_hits(model, page, tok, prompt_ids, image_id, eos, dev, "small", gap)]
        print(json.dumps({"top": 0.0, "position_gap": gap, "tf_accuracy": round(sum(hits) / len(hits), 3)}),
              flush=True)


if __name__ == "__main__":
    main()
