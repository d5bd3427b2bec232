"""Fine-tune an exported model's decoder on this machine's CPU, the DeepEncoder frozen.

Where it fits: the GPU runs of train.py are the main road (training/README.md). This is for sessions without a device
machine. A frozen encoder needs no backward pass through SAM and CLIP, which leaves about 1.5 Small pages a second on
two cores: enough for a skill the decoder lacks, not for reading itself. It was written for session 11's finding:
j15's vision tokens carry every row's glyphs, but its decoder reads only the top rows, because every training page
started at the top. The pages are train.py's recipe (`data.make_request`) with `--low-share` of them set lower on
the page.

It checkpoints an exported folder (bf16 model.safetensors, config.json and tokenizer.json of the input, so
`trained_tiers` and the Rust loader carry over) every `--save-every` seconds and at the end, with summary.json
totals continued from the input's. It logs JSON lines, with teacher-forced probes at the start, at each save and at
the end:
- `top0` / `top200` / `top400`: diag/row_offset.py's texts at those offsets;
- `short` / `long`: held-out Small pages of 300-700 / 700-2,000 characters; `short_gap25`: the short ones with 25
  positions skipped before the prompt (`--pos-gap`);
- `tiny`: held-out Tiny pages of 300-2,000 characters.

    .venv-ref/bin/python training/finetune_cpu.py --model models/optimem-tiny --renderer target/release/optimem \\
        --out /tmp/j16c --seconds 3600
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tools", "reference"))
sys.path.insert(0, os.path.join(HERE, "diag"))
import data as D  # noqa: E402
import evaluate as E  # noqa: E402
from common import pages_at, prose_texts  # noqa: E402
from tf_by_position import token_hits  # noqa: E402
from train import build_inputs, gapped_positions, noisy_inputs  # noqa: E402

ENCODER = ("sam_model.", "vision_model.", "projector.", "image_newline", "view_seperator")


def probes(renderer: str, heldout: str, tok) -> dict[str, list]:
    """The probe pages (bucket, header, pixels) by name; fixed seeds, so every checkpoint sees the same pages."""
    texts = prose_texts(heldout, 8, 350)  # the texts of diag/row_offset.py
    out = {f"top{top}": pages_at(renderer, texts, 24.0, float(top)) for top in (0, 200, 400)}
    es = E.EvalSet.build(heldout, renderer, tok, 2, 4, tiers=("tiny", "small"), langs=("en",), low=False)
    out["short"] = [p for p in es.greedy["small"] if p[0][0] == 300]
    out["short_gap25"] = out["short"]  # the same pages, 25 positions skipped before the prompt
    out["long"] = [p for p in es.greedy["small"] if p[0][0] in (700, 1200)]
    out["tiny"] = [p for p in es.greedy["tiny"] if p[0][0] in (300, 700, 1200)]
    return out


@torch.no_grad()
def measure(model, pages_by_name: dict, tok, prompt_ids, image_id, eos, dev) -> dict[str, float]:
    """Teacher-forced next-token accuracy on each probe set."""
    was = model.training
    model.eval()
    res = {}
    for name, pages in pages_by_name.items():
        tier = "tiny" if name == "tiny" else "small"
        gap = 25 if name.endswith("_gap25") else 0
        hits = [h for pg in pages for _, _, h, _ in token_hits(model, pg, tok, prompt_ids, image_id, eos, dev, tier,
                                                                gap)]
        res[name] = round(sum(hits) / len(hits), 4)
    model.train(was)
    return res


def save(model, src: str, out: str, totals: dict) -> None:
    """An exported folder: bf16 weights in the official layout, the input's config.json (architecture unchanged;
    our keys such as trained_tiers kept) and tokenizer.json, and summary.json with the running totals."""
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, dtype=torch.bfloat16,
                          metadata={"producer": "optimem training/finetune_cpu.py", "license": "Apache-2.0",
                                    "pages_seen": str(totals["pages_total"]),
                                    "train_seconds": str(totals["train_seconds_total"])})
    for f in ("config.json", "tokenizer.json"):
        shutil.copyfile(os.path.join(src, f), os.path.join(out, f))
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(totals, f, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="exported folder to start from")
    ap.add_argument("--renderer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--corpus", default=os.path.join(HERE, "data", "corpus", "train"))
    ap.add_argument("--heldout", default=os.path.join(HERE, "data", "corpus", "heldout"))
    ap.add_argument("--summary", default="", help="summary.json of the input (default: beside it, else none)")
    ap.add_argument("--seconds", type=float, default=3600)
    ap.add_argument("--save-every", type=float, default=900)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--tiers", default="tiny:0.4,small:0.6")
    ap.add_argument("--max-chars", default="tiny:1500,small:2400")
    ap.add_argument("--max-target-tokens", type=int, default=1024)
    ap.add_argument("--long-share", type=float, default=0.5)
    ap.add_argument("--low-share", type=float, default=0.5)
    ap.add_argument("--pos-gap", type=int, default=0, help="as train.py --pos-gap")
    ap.add_argument("--token-noise", type=float, default=0.0, help="as train.py --token-noise")
    ap.add_argument("--shuffle-share", type=float, default=0.4)
    ap.add_argument("--scramble-share", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dev = torch.device("cpu")
    model, tok, image_id, eos, prompt_ids = E.load_exported(args.model, dev)
    params = []
    for n, p in model.named_parameters():
        if any(n.startswith(e) or "." + e in n for e in ENCODER):
            p.requires_grad_(False)
        else:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    summ_path = args.summary or os.path.join(args.model, "summary.json")
    before = {}
    if os.path.exists(summ_path):
        with open(summ_path, encoding="utf-8") as f:
            before = json.load(f)
    pages0, secs0 = before.get("pages_total", 0), before.get("train_seconds_total", 0.0)
    tiers, weights = zip(*[(t, float(w)) for t, w in (x.split(":") for x in args.tiers.split(","))])
    caps = {t: int(c) for t, c in (x.split(":") for x in args.max_chars.split(","))}

    def log(d: dict) -> None:
        print(json.dumps(d), flush=True)

    probe = probes(args.renderer, args.heldout, tok)
    log({"event": "start", "trainable": sum(p.numel() for p in params), "probe_pages": {k: len(v) for k, v in probe.items()},
         "tf_acc": measure(model, probe, tok, prompt_ids, image_id, eos, dev), "args": vars(args)})
    corpus = D.Corpus(args.corpus, zh_share=0.0)
    rng = random.Random(args.seed * 1000003 + pages0)  # a continued run draws new pages, not its first ones again
    rs = D.RenderStream(args.renderer)
    t0 = time.time()
    next_save, step, pages, probe_s = args.save_every, 0, 0, 0.0

    def train_s() -> float:
        """Seconds of training so far (the probes at each save excluded)."""
        return time.time() - t0 - probe_s

    def totals() -> dict:
        return {"pages_total": pages0 + pages, "train_seconds_total": round(secs0 + train_s(), 1),
                "cpu_finetune": {"pages": pages, "seconds": round(train_s(), 1), "steps": step,
                                 "from": os.path.abspath(args.model)},
                "previous": before}

    try:
        while train_s() < args.seconds:
            tier = rng.choices(tiers, weights)[0]
            q = D.TIER_PX[tier] // D.CELL_PX
            imgs, tgts = [], []
            while len(imgs) < args.batch:
                u = rng.random()
                sc = u < args.scramble_share
                sh = sc or u < args.scramble_share + args.shuffle_share
                lp = rng.random() < args.long_share
                low = rng.random() < args.low_share
                rs.submit(D.make_request(corpus, rng, caps[tier], tier, sh, scramble=sc, long_page=lp, low_page=low))
                header, pix, _ = rs.receive()
                if pix is None or not header["visible_text"].strip():
                    continue
                ids = tok.encode(D.target_text(header), add_special_tokens=False).ids[: args.max_target_tokens - 1]
                imgs.append(pix)
                tgts.append(ids + [eos])
            tg = torch.full((len(tgts), max(map(len, tgts))), -100, dtype=torch.long)
            for i, t in enumerate(tgts):
                tg[i, : len(t)] = torch.tensor(t)
            ids, mask, labels = build_inputs(tg, q * (q + 1) + 1, prompt_ids, image_id, eos)
            pos, amask = gapped_positions(ids, q * (q + 1) + 1, args.pos_gap)
            ids = noisy_inputs(ids, labels, args.token_noise, eos)
            frac = min(1.0, train_s() / args.seconds)
            lr = args.lr * min(1.0, (step + 1) / args.warmup) * (
                args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))
            for g in opt.param_groups:
                g["lr"] = lr
            loss = model(ids, pixel_values=D.pixels(torch.from_numpy(np.stack(imgs))), images_seq_mask=mask,
                         labels=labels, return_logits=False, position_ids=pos, attention_mask=amask).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            pages += len(imgs)
            if step % 10 == 0:
                log({"event": "train", "t": round(train_s(), 1), "step": step, "pages": pages, "tier": tier,
                     "loss": round(loss.item(), 4), "gnorm": round(gnorm.item(), 3), "lr": round(lr, 7)})
            if train_s() >= next_save:
                save(model, args.model, args.out, totals())
                tp = time.time()
                acc = measure(model, probe, tok, prompt_ids, image_id, eos, dev)
                probe_s += time.time() - tp
                log({"event": "save", "t": round(train_s(), 1), "step": step, "pages": pages, "tf_acc": acc})
                next_save += args.save_every
    finally:
        rs.close()
    save(model, args.model, args.out, totals())
    log({"event": "end", "t": round(train_s(), 1), "step": step, "pages": pages,
         "tf_acc": measure(model, probe, tok, prompt_ids, image_id, eos, dev)})


if __name__ == "__main__":
    main()
