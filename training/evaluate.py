"""Held-out evaluation for train.py (and export checks): teacher-forced real vs blank loss, greedy precision by bucket.

Where it fits: called by train.py during and at the end of each run; `python evaluate.py --model DIR ...` evaluates an
exported model folder on its own. Pages come from the held-out sources (whole packages never trained on), rendered by
our renderer. Precision = 1 − Levenshtein(pred, truth) / max(len) over Unicode scalars after collapsing whitespace
(DESIGN.md §6), at 64 (Tiny 512) and 100 (Small 640) vision tokens.
"""

from __future__ import annotations

import math
import os
import random
import re

import numpy as np
import torch

import data as D

BUCKETS = [(0, 300), (300, 700), (700, 1200), (1200, 2000), (2000, 10**9)]


def bucket_name(b) -> str:
    lo, hi = b
    return f"{lo}+" if hi >= 10**9 else f"{lo}-{hi}"


def collapse(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def levenshtein(a: str, b: str) -> int:
    """Edit distance, one numpy row per character of a (the in-row insertion chain via a running minimum)."""
    if not a:
        return len(b)
    if not b:
        return len(a)
    bb = np.array([ord(c) for c in b], dtype=np.int64)
    idx = np.arange(len(b) + 1, dtype=np.int64)
    prev = idx.copy()
    for i, ca in enumerate(a, 1):
        sub = prev[:-1] + (bb != ord(ca))
        row = np.empty_like(prev)
        row[0] = i
        row[1:] = np.minimum(prev[1:] + 1, sub)
        row = np.minimum.accumulate(row - idx) + idx
        prev = row
    return int(prev[-1])


def precision(pred: str, truth: str) -> float:
    p, t = collapse(pred), collapse(truth)
    m = max(len(p), len(t))
    return 1.0 if m == 0 else 1.0 - levenshtein(p, t) / m


class EvalSet:
    """tf: {tier or "tier/shuffled": [(header, pixels, target ids)]}; greedy: {tier: [(bucket, header, pixels)]}."""

    def __init__(self):
        self.tf: dict[str, list] = {}
        self.greedy: dict[str, list] = {}

    @classmethod
    def build(cls, heldout_dir: str, renderer: str, tok, n_tf: int, per_bucket: int, seed: int = 12345,
              tiers=("tiny", "small"), max_target_tokens: int = 1024, tf_max_chars: int = 2500,
              langs=("en",), low: bool = True) -> "EvalSet":
        """English pages under the plain tier keys ("small", "small/shuffled", ...); Chinese ones, when "zh" is in
        langs, under "<tier>/zh" (teacher-forced and greedy). Until session 10 the two were mixed 70 / 30 under one
        key, so a model trained on English alone lost about a third of every figure to pages it never learned.
        `low` adds "<tier>/low", English pages set lower on the page (greedy only)."""
        es = cls()
        for lang in langs:
            corpus = D.Corpus(heldout_dir, zh_share=1.0 if lang == "zh" else 0.0)
            if lang == "zh" and not corpus.zh or lang == "en" and not corpus.en:
                continue
            # each language its own streams, so that adding Chinese leaves the English pages as they were
            rng = random.Random(seed if lang == "en" else seed + 100)
            srng = random.Random(seed + 1 if lang == "en" else seed + 101)
            es._add_tf(corpus, rng, srng, renderer, tok, n_tf, tiers, max_target_tokens, tf_max_chars,
                       variants=("", "/shuffled", "/scrambled") if lang == "en" else ("/zh",))
            es._add_greedy(corpus, rng, renderer, per_bucket, tiers, "" if lang == "en" else "/zh")
            if lang == "en" and low:
                es._add_low(corpus, random.Random(seed + 7), renderer, per_bucket, tiers)
        return es

    def _add_low(self, corpus, rng, renderer, per_bucket, tiers):
        """"<tier>/low": short pages (0-700 visible characters) whose text starts 150-550 logical units down the
        page (render-stream's "top"), on rows of vision tokens that text starting at the top reaches only on long
        pages. Session 11: j15 read such text at the unrelated-text level (diag/row_offset.py)."""

        def request(b):
            n = rng.randint(max(b[0], 60), b[1])
            return {"text": "\n".join(corpus.paragraphs(rng, n))[:n], "font_size": round(rng.uniform(17.0, 30.0), 1),
                    "top": round(rng.uniform(150.0, 550.0)), "tier": "small"}

        chosen = _fill_buckets(renderer, [b for b in BUCKETS if b[1] <= 700], per_bucket, request)
        self._render_tiers(renderer, chosen, tiers, "/low")

    def _add_tf(self, corpus, rng, srng, renderer, tok, n_tf, tiers, max_target_tokens, tf_max_chars, variants):
        """Teacher-forced pages: medium lengths (up to tf_max_chars), identical requests at each tier: as written
        (""), word-shuffled ("/shuffled") and character-scrambled ("/scrambled"). On the last two the language prior
        helps little or not at all, so their real-vs-blank gap measures reading alone."""
        reqs, shuf, scr = [], [], []
        lo = min(200, tf_max_chars // 2)
        for _ in range(n_tf):
            n = int(math.exp(rng.uniform(math.log(lo), math.log(tf_max_chars))))
            fs = round(rng.uniform(17, 30), 1)
            paras = corpus.paragraphs(rng, n)
            reqs.append({"text": "\n".join(paras)[: int(n * 1.2)], "font_size": fs})
            shuf.append({"text": "\n".join(D.shuffle_words(p, rng) for p in paras)[: int(n * 1.2)], "font_size": fs})
            scr.append({"text": "\n".join(D.scramble_chars(p, srng) for p in paras)[: int(n * 1.2)], "font_size": fs})
        by_variant = {"": reqs, "/zh": reqs, "/shuffled": shuf, "/scrambled": scr}
        for tier in tiers:
            for v in variants:
                rendered = D.render_fixed(renderer, [dict(r, tier=tier) for r in by_variant[v]])
                self.tf[tier + v] = []
                for header, pix in rendered:
                    if pix is None or not header["visible_text"].strip():
                        continue
                    ids = tok.encode(header["visible_text"], add_special_tokens=False).ids[: max_target_tokens - 1] + [1]
                    self.tf[tier + v].append((header, pix, ids))

    def _add_greedy(self, corpus, rng, renderer, per_bucket, tiers, suffix):
        """per_bucket pages in each length bucket (visible characters), in type no larger than fits the bucket."""

        def request(b):
            lo, hi = b
            hi_eff = min(hi, 4500)
            n = rng.randint(max(lo, 60), hi_eff)
            fs_max = D.fitting_font_size(hi_eff)
            fs = round(rng.uniform(15.0 if lo >= 2000 else 17.0, max(17.0, min(40.0, fs_max))), 1)
            return {"text": "\n".join(corpus.paragraphs(rng, n))[:n], "font_size": fs, "tier": "small"}

        self._render_tiers(renderer, _fill_buckets(renderer, BUCKETS, per_bucket, request), tiers, suffix)

    def _render_tiers(self, renderer, chosen: dict, tiers, suffix: str) -> None:
        """The chosen requests of every bucket rendered at each tier, as greedy pages under "<tier><suffix>"."""
        for tier in tiers:
            reqs = [(b, dict(r, tier=tier)) for b, reqs_b in chosen.items() for r in reqs_b]
            rendered = D.render_fixed(renderer, [r for _, r in reqs])
            self.greedy[tier + suffix] = [(b, header, pix) for (b, _), (header, pix) in zip(reqs, rendered)]


def _fill_buckets(renderer: str, buckets, per_bucket: int, request) -> dict:
    """Up to per_bucket requests for each bucket of visible characters: `request(bucket)` draws a candidate for the
    emptiest bucket, which is rendered (one renderer process for all) and kept in whichever bucket its visible text
    falls in while that one has room. At most 40 candidates per page wanted."""
    chosen: dict[tuple, list[dict]] = {b: [] for b in buckets}
    rs = D.RenderStream(renderer)
    try:
        for _ in range(40 * per_bucket * len(buckets)):
            if all(len(v) >= per_bucket for v in chosen.values()):
                break
            req = request(min(chosen, key=lambda k: len(chosen[k])))
            rs.submit(req)
            header, pix, _ = rs.receive()
            vis = len(header.get("visible_text", "")) if pix is not None else 0
            for b in buckets:
                if vis > 0 and b[0] <= vis < b[1] and len(chosen[b]) < per_bucket:
                    chosen[b].append(req)
    finally:
        rs.close()
    return chosen


def stack_pages(pages, dev):
    imgs = torch.from_numpy(np.stack([p[1] for p in pages])).to(dev)
    L = max(len(p[2]) for p in pages)
    tg = torch.full((len(pages), L), -100, dtype=torch.long)
    for i, p in enumerate(pages):
        tg[i, : len(p[2])] = torch.tensor(p[2])
    return imgs, tg.to(dev)


@torch.no_grad()
def greedy_decode(model, imgs_u8, n_img, prompt_ids, image_id, eos, max_new, pixels_fn, dev):
    """Batched greedy decoding with the KV cache (plain argmax; EOS ends a row)."""
    b = imgs_u8.shape[0]
    head = torch.tensor([0] + [image_id] * n_img + prompt_ids, device=dev).expand(b, -1).contiguous()
    mask = torch.zeros_like(head, dtype=torch.bool)
    mask[:, 1:1 + n_img] = True
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        out = model(head, pixel_values=pixels_fn(imgs_u8), images_seq_mask=mask, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1)
        done = torch.zeros(b, dtype=torch.bool, device=dev)
        gen = []
        for _ in range(max_new):
            gen.append(nxt)
            done |= nxt == eos
            if bool(done.all()):
                break
            out = model(nxt[:, None], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1)
    ids = torch.stack(gen, 1).tolist()
    res = []
    for row in ids:
        res.append(row[: row.index(eos)] if eos in row else row)
    return res


def decode_pages(model, pages, tier: str, tok, prompt_ids, image_id, eos, dev, pixels_fn, batch: int = 32):
    """Greedy text of held-out pages [(bucket, header, pixels)] at `tier`, in batches → [(bucket, truth, prediction,
    truth's token count)]. Each batch decodes up to its longest truth + 16 tokens (at most 1,100)."""
    q = D.TIER_PX[tier] // D.CELL_PX
    out = []
    for i in range(0, len(pages), batch):
        chunk = pages[i: i + batch]
        imgs = torch.from_numpy(np.stack([p[2] for p in chunk])).to(dev)
        truths = [p[1]["visible_text"] for p in chunk]
        n_tok = [len(tok.encode(t, add_special_tokens=False).ids) for t in truths]
        preds = greedy_decode(model, imgs, q * (q + 1) + 1, prompt_ids, image_id, eos, min(1100, max(n_tok) + 16),
                              pixels_fn, dev)
        for (b, _, _), ids, truth, n in zip(chunk, preds, truths, n_tok):
            out.append((b, truth, tok.decode(ids, skip_special_tokens=False), n))
    return out


def greedy_precision(model, es: EvalSet, tok, prompt_ids, image_id, eos, dev, pixels_fn, batch: int = 32) -> dict:
    """{tier: {"all": p, "<bucket>": p, ..., "sample": (truth, pred) of one mid-length page}}."""
    model.eval()
    out = {}
    for tier, pages in es.greedy.items():
        q = D.TIER_PX[tier.split("/")[0]] // D.CELL_PX
        per_bucket: dict[str, list[float]] = {}
        # compression = text tokens (this model's tokenizer) per vision token (q², the paper's count: no newlines)
        by_ratio: dict[str, list[float]] = {"le5x": [], "le10x": []}
        sample = None
        for b, truth, pred, n_tok in decode_pages(model, pages, tier.split("/")[0], tok, prompt_ids, image_id, eos,
                                                  dev, pixels_fn, batch):
            p = precision(pred, truth)
            per_bucket.setdefault(bucket_name(b), []).append(p)
            for key, cap in (("le5x", 5.0), ("le10x", 10.0)):
                if n_tok / (q * q) <= cap:
                    by_ratio[key].append(p)
            if sample is None and b == BUCKETS[1]:
                sample = {"truth": truth[:300], "pred": pred[:300]}
        allp = [x for v in per_bucket.values() for x in v]
        out[tier] = {"all": round(sum(allp) / max(1, len(allp)), 4), "n": len(allp),
                     **{k: round(sum(v) / len(v), 4) for k, v in per_bucket.items()},
                     **{k: round(sum(v) / len(v), 4) for k, v in by_ratio.items() if v},
                     **{f"n_{k}": len(v) for k, v in by_ratio.items()}, "sample": sample}
    return out


def load_exported(model_dir: str, dev: torch.device):
    """An exported model folder in f32 (the reference package must be importable) → (model, tokenizer, `<image>` id,
    EOS id, the ids of the prompt "\\nFree OCR.")."""
    from optimem_ref import DeepseekOCR
    from tokenizers import Tokenizer

    model = DeepseekOCR.from_pretrained(model_dir, device=dev, dtype=torch.float32).eval()
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    prompt_ids = tok.encode("\nFree OCR.", add_special_tokens=False).ids
    return model, tok, tok.token_to_id("<image>"), model.config.decoder.eos_token_id, prompt_ids


def main() -> None:
    """Evaluate an exported model folder (config.json, tokenizer.json, model.safetensors) on held-out pages."""
    import argparse
    import json
    import os
    import sys

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--renderer", required=True)
    ap.add_argument("--ref", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "reference"))
    ap.add_argument("--tf-pages", type=int, default=32)
    ap.add_argument("--per-bucket", type=int, default=6)
    ap.add_argument("--langs", default="en,zh", help="held-out languages, each reported on its own")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--greedy-only", default="",
                    help="comma-separated greedy sets (e.g. small/low,tiny/low): decode only these, no teacher-forced "
                         "figures; the pages are the same as in a full run, so a model measured before a set existed "
                         "can be measured on it alone")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.ref))
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)
    model, tok, image_id, eos, prompt_ids = load_exported(args.model, dev)

    es = EvalSet.build(args.heldout, args.renderer, tok, args.tf_pages, args.per_bucket, langs=tuple(args.langs.split(",")))
    if args.greedy_only:
        keys = [k.strip() for k in args.greedy_only.split(",") if k.strip()]
        unknown = [k for k in keys if k not in es.greedy]
        if unknown:
            raise SystemExit(f"--greedy-only: no greedy set {unknown}; there are {sorted(es.greedy)}")
        es.greedy = {k: es.greedy[k] for k in keys}
        es.tf = {}
    tf = {}
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
        for tier, pages in es.tf.items():
            imgs, tg = stack_pages(pages, dev)
            q = D.TIER_PX[tier.split("/")[0]] // D.CELL_PX
            n = q * (q + 1) + 1
            b = tg.shape[0]
            head = torch.tensor([0] + [image_id] * n + prompt_ids, device=dev).expand(b, -1)
            ids = torch.cat([head, torch.where(tg == -100, torch.full_like(tg, eos), tg)], 1)
            labels = torch.cat([torch.full_like(head, -100), tg], 1)
            mask = torch.zeros_like(ids, dtype=torch.bool)
            mask[:, 1:1 + n] = True
            real = model(ids, pixel_values=D.pixels(imgs), images_seq_mask=mask, labels=labels, return_logits=False).loss
            blank = model(ids, pixel_values=D.pixels(torch.full_like(imgs, 255)), images_seq_mask=mask, labels=labels,
                          return_logits=False).loss
            tf[tier] = {"real": round(float(real), 4), "blank": round(float(blank), 4), "gap": round(float(blank - real), 4)}
    greedy = greedy_precision(model, es, tok, prompt_ids, image_id, eos, dev, D.pixels)
    print(json.dumps({"model": args.model, "tf": tf, "greedy": greedy,
                      "unrelated_text_baseline": unrelated_baseline(es)}, ensure_ascii=False, indent=1))


def unrelated_baseline(es: EvalSet) -> dict:
    """Precision of a DIFFERENT held-out page's text of the same bucket: what text that ignores the page scores."""
    pages = next(iter(es.greedy.values()), [])
    per: dict[str, list[float]] = {}
    for i, (b, header, _) in enumerate(pages):
        same = [p for j, p in enumerate(pages) if p[0] == b and j != i]
        if same:
            other = same[i % len(same)][1]["visible_text"]
            per.setdefault(bucket_name(b), []).append(precision(other, header["visible_text"]))
    allp = [x for v in per.values() for x in v]
    return {"all": round(sum(allp) / max(1, len(allp)), 4), **{k: round(sum(v) / len(v), 4) for k, v in per.items()}}


if __name__ == "__main__":
    main()
