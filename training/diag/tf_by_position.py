"""Teacher-forced reading along a held-out page: next-token accuracy (argmax = truth) and loss, binned by the
character offset of the token in the page's text, on the same English Small pages as `evaluate.py` (700-2,000
characters). Greedy decoding of these pages drifts after a line or two (diag/drift.py); this tells whether the model
still reads the rest of the page when it is given the right text so far (accuracy flat along the page: one error
derails a greedy run, the decoder does not re-find its place) or not (accuracy falling with the offset: the decoder
cannot find later lines even with the right prefix).

Run from the repository root:

    .venv-ref/bin/python training/diag/tf_by_position.py --model models/optimem-tiny --renderer target/release/optimem
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
import data as D  # noqa: E402
import evaluate as E  # noqa: E402
from train import build_inputs, gapped_positions, noisy_inputs  # noqa: E402
from common import heldout_small_pages  # noqa: E402

BIN = 200  # characters per offset bin


@torch.no_grad()
def token_hits(model, page, tok, prompt_ids, image_id, eos, dev, tier: str = "small", gap: int = 0,
               noise: float = 0.0):
    """[(char offset, row of vision tokens, argmax == truth, nats)] for every text token of one page at `tier`,
    teacher-forced; `gap` positions skipped between the image block and the prompt (train.gapped_positions);
    `noise`: that share of the text fed in replaced by other tokens of the page (train.noisy_inputs, seeded), the
    truth to predict unchanged."""
    _, header, pix = page
    q = D.TIER_PX[tier] // D.CELL_PX
    n_img = q * (q + 1) + 1
    enc = tok.encode(header["visible_text"], add_special_tokens=False)
    tg = torch.tensor([enc.ids + [eos]], device=dev)
    ids, mask, labels = build_inputs(tg, n_img, prompt_ids, image_id, eos)
    ids = noisy_inputs(ids, labels, noise, eos, torch.Generator(device=dev).manual_seed(len(enc.ids)))
    imgs = torch.from_numpy(pix[None].copy()).to(dev)
    pos, amask = gapped_positions(ids, n_img, gap, exact=True)
    logits = model(ids, pixel_values=D.pixels(imgs), images_seq_mask=mask, position_ids=pos,
                   attention_mask=amask).logits[0].float()
    start = 1 + n_img + len(prompt_ids)  # the first text token is predicted from the position before it
    pred = logits[start - 1: start - 1 + len(enc.ids)]
    nll = torch.nn.functional.cross_entropy(pred, tg[0, : len(enc.ids)], reduction="none")
    hit = pred.argmax(-1) == tg[0, : len(enc.ids)]
    text = header["visible_text"]
    ys = [y for _, _, y in D.glyph_positions(header)]
    out = []
    for (o, _), h, n in zip(enc.offsets, hit, nll):
        k = sum(1 for c in text[:o] if not c.isspace())  # glyphs before the token: its first glyph is glyph k
        row = int(ys[min(k, len(ys) - 1)] // D.CELL_PX) if ys else -1
        out.append((o, row, bool(h), float(n)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--noise", type=float, default=0.0,
                    help="instead, accuracy by bucket with the text fed in intact and with this share of it replaced "
                         "(train.py --token-noise): how well the decoder goes on after wrong tokens")
    model, tok, image_id, eos, prompt_ids, pages = heldout_small_pages(threads=2, ap=ap)
    dev = torch.device("cpu")
    if ap.parsed.noise > 0:
        by_bucket: dict[str, dict[str, list]] = {}
        for page in pages:
            for name, noise in (("intact", 0.0), ("noisy", ap.parsed.noise)):
                hits = [h for _, _, h, _ in token_hits(model, page, tok, prompt_ids, image_id, eos, dev, noise=noise)]
                by_bucket.setdefault(E.bucket_name(page[0]), {}).setdefault(name, []).extend(hits)
        for bucket, v in by_bucket.items():
            print(json.dumps({"bucket": bucket, "noise": ap.parsed.noise, "tokens": len(v["intact"]),
                              **{k: round(sum(h) / len(h), 3) for k, h in v.items()}}), flush=True)
        return
    bins: dict[tuple, dict[str, list]] = {}
    for page in pages:
        b = page[0]
        for off, row, hit, nll in token_hits(model, page, tok, prompt_ids, image_id, eos, dev):
            name = E.bucket_name(b)
            bins.setdefault((name, "chars"), {}).setdefault(f"{off // BIN * BIN}-{off // BIN * BIN + BIN}", []).append((hit, nll))
            bins.setdefault((name, "token_row"), {}).setdefault(str(row), []).append((hit, nll))
    for (bucket, by), groups in bins.items():
        for key, v in sorted(groups.items(), key=lambda kv: int(kv[0].split("-")[0])):
            print(json.dumps({"bucket": bucket, by: key, "tokens": len(v),
                              "accuracy": round(sum(h for h, _ in v) / len(v), 3),
                              "nats": round(sum(n for _, n in v) / len(v), 3)}), flush=True)


if __name__ == "__main__":
    main()
