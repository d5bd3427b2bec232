"""Where on a held-out page greedy decoding stops following the text: for each Small page of 300-2,000 characters,
the first truth position after which fewer than 30 % of the next 80 characters are matched (difflib blocks of ≥ 6
characters), and the y of that glyph on the page (which row of vision tokens). One JSON line per page.

Where it fits: a CPU diagnostic for training/RESULTS.md (session 10: on long pages the model loses its place after a
line or two, at no particular token row). Run from the repository root:

    .venv-ref/bin/python training/diag/drift.py --model models/optimem-tiny --renderer target/release/optimem
"""

from __future__ import annotations

import difflib
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "training"))
sys.path.insert(0, os.path.join(ROOT, "tools", "reference"))
import data as D  # noqa: E402
import evaluate as E  # noqa: E402
from common import heldout_small_pages  # noqa: E402


def drift_point(truth: str, pred: str) -> int:
    """The first truth index after which the prediction no longer follows (len(truth) when it follows to the end)."""
    sm = difflib.SequenceMatcher(None, truth, pred, autojunk=False)
    cov = np.zeros(len(truth) + 1)
    for a, _, n in sm.get_matching_blocks():
        if n >= 6:
            cov[a:a + n] = 1
    for p in range(len(truth)):
        w = cov[p:p + 80]
        if len(w) >= 40 and w.mean() < 0.3:
            return p
    return len(truth)


def main() -> None:
    model, tok, image_id, eos, prompt_ids, pages = heldout_small_pages(threads=1)
    dev = torch.device("cpu")
    headers = [p[1] for p in pages]
    decoded = E.decode_pages(model, pages, "small", tok, prompt_ids, image_id, eos, dev, D.pixels, batch=6)
    for h, (b, t, pred, _) in zip(headers, decoded):
        at = drift_point(t, pred)
        glyphs = list(D.glyph_positions(h))
        k = sum(1 for c in t[:at] if not c.isspace())
        y = glyphs[min(k, len(glyphs) - 1)][2] if glyphs else -1.0
        print(json.dumps({"bucket": E.bucket_name(b), "chars": len(t), "precision": round(E.precision(pred, t), 3),
                          "drift_at": at, "drift_y_px": round(float(y), 1), "token_row": int(y // D.CELL_PX),
                          "y_frac_in_row": round((y % D.CELL_PX) / D.CELL_PX, 2)}), flush=True)

if __name__ == "__main__":
    main()
