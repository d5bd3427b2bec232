#!/usr/bin/env python3
"""Writes the parity fixtures of interfaces.md §2 into tests/fixtures/ (see tests/fixtures/README.md).

Run from the repo root with the reference venv (CPU torch is enough, about a minute):
    .venv-ref/bin/python tools/reference/make_fixtures.py [--out tests/fixtures]

Everything is deterministic (fixed seeds, synthetic images drawn with Pillow, weights from a seeded
CPU generator) and written in f32 (u8 for images, i64 for ids and grids).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from optimem_ref.config import OcrConfig, q_tokens  # noqa: E402
from optimem_ref.generate import NoRepeatNGram, greedy_generate  # noqa: E402
from optimem_ref.interp import resize_clip_pos_embed, resize_rel_pos, resize_sam_pos_embed  # noqa: E402
from optimem_ref.model import DeepseekOCR  # noqa: E402
from optimem_ref.preprocess import normalize, num_image_tokens, prepare_image, to_array  # noqa: E402

SEED = 20251130

# The small model: real geometry (patch 16, window 14, img_size 1024 -> 64x64 pos grid, global blocks,
# two stride-2 convs = 16x compression, CLIP pos grid 16 = 224/14), small widths.
SMALL_CONFIG = {
    "architectures": ["DeepseekOCRForCausalLM"],
    "model_type": "deepseek_vl_v2",
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "first_k_dense_replace": 1,
    "topk_method": "greedy",
    "n_group": 1,
    "topk_group": 1,
    "use_mla": False,
    "max_position_embeddings": 8192,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "torch_dtype": "float32",
    "vision": {
        "sam": {"embed_dim": 32, "depth": 4, "num_heads": 4, "global_attn_indexes": [1, 3], "window_size": 14,
                "patch_size": 16, "img_size": 1024, "mlp_ratio": 4.0, "out_chans": 16, "net_2_chans": 32,
                "net_3_chans": 64},
        "clip": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "ffn_hidden_size": 128, "image_size": 224,
                 "patch_size": 14},
    },
    "projector_config": {"projector_type": "linear", "input_dim": 128, "n_embed": 64},
}
# Weight scales: fan-in normal for matrices (activations O(1)), non-zero biases and norm affines,
# N(0, 0.5) tables so pos-embed / rel-pos / newline / separator visibly matter.
INIT = {"bias_std": 0.1, "norm_std": 0.1, "embed_std": 0.5}
IMAGE_TOKEN_ID = 500  # the `<image>` id of this fixture's decoder (no tokenizer.json in the fixture dir)


def meta(**kw) -> dict[str, str]:
    base = {"generator": "tools/reference/make_fixtures.py", "seed": str(SEED), "torch": torch.__version__,
            "pillow": PIL.__version__}
    base.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in kw.items()})
    return base


def canonicalize(path: Path) -> None:
    """Rewrites the safetensors header with sorted keys (the library writes metadata in hash order),
    so that regenerating the fixtures gives byte-identical files."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    out = {}
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        if v.is_floating_point():
            v = v.to(torch.float32)
        out[k] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata=metadata)
    canonicalize(path)
    print(f"{path}: {len(out)} tensors, {path.stat().st_size / 1e6:.2f} MB")


def synthetic_image(width: int, height: int, seed: int) -> Image.Image:
    """A colourful page-like RGB image: gradient, text lines, boxes, and a noisy patch (resampling
    sees edges, smooth ramps and high frequencies)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    arr = np.stack([
        200 + 40 * np.sin(xx / 37.0),
        180 + 60 * (yy / max(height - 1, 1)),
        220 - 50 * (xx / max(width - 1, 1)),
    ], axis=-1)
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    d = ImageDraw.Draw(img)
    words = "optical context compression keeps recent pages sharp and old pages blurry".split()
    y = 8
    line = 0
    while y < height - 12:
        x = 6 + (line % 3) * 5
        while x < width - 40:
            w = words[int(rng.integers(len(words)))]
            color = tuple(int(c) for c in rng.integers(0, 90, 3))
            d.text((x, y), w, fill=color)
            x += 6 * len(w) + 6
        y += 14
        line += 1
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        x1, y1 = x0 + int(rng.integers(8, 60)), y0 + int(rng.integers(8, 40))
        d.rectangle((x0, y0, x1, y1), outline=tuple(int(c) for c in rng.integers(0, 255, 3)), width=2)
    a = np.asarray(img).copy()
    ph, pw = min(40, height // 4), min(60, width // 4)
    a[height - ph - 4:height - 4, width - pw - 4:width - 4] = rng.integers(0, 256, (ph, pw, 3), dtype=np.uint8)
    return Image.fromarray(a, "RGB")


def make_interp(out: Path) -> None:
    g = torch.Generator().manual_seed(SEED + 1)
    sam_pos_in = torch.randn(1, 64, 64, 8, generator=g)
    clip_pos_in = torch.randn(257, 16, generator=g)
    rel_pos_in = torch.randn(127, 8, generator=g)
    t = {"sam_pos_in": sam_pos_in, "clip_pos_in": clip_pos_in, "rel_pos_in": rel_pos_in}
    for s in (32, 40, 80):
        t[f"sam_pos_{s}"] = resize_sam_pos_embed(sam_pos_in, s)
    for s in (8, 10, 20):
        t[f"clip_pos_{s}"] = resize_clip_pos_embed(clip_pos_in, s)
    for n in (63, 79, 159):
        t[f"rel_pos_{n}"] = resize_rel_pos(rel_pos_in, n)
    save(out / "interp.safetensors", t, meta(
        sam_pos="NHWC [1,64,64,C] -> [1,g,g,C]: permute to NCHW, F.interpolate(bicubic, antialias=True, "
                "align_corners=False) in fp32, permute back",
        clip_pos="[257,D] CLS row first -> [1+g*g,D]: CLS kept, 16x16 grid resized as sam_pos",
        rel_pos="[127,c] -> [n,c]: F.interpolate(linear, align_corners=False) along the length in fp32"))


def make_preprocess(out: Path) -> dict:
    image_a = synthetic_image(600, 200, SEED + 2)
    image_b = synthetic_image(700, 340, SEED + 3)
    t = {"image_a": torch.from_numpy(to_array(image_a))}
    views = {}
    for mode, s in (("tiny", 512), ("small", 640)):
        p = prepare_image(image_a, mode)
        assert p.global_view.size == (s, s) and not p.tiles
        views[s] = torch.from_numpy(to_array(p.global_view))
    t["image_a_view_512"] = views[512]
    pb = prepare_image(image_b, "gundam")
    assert pb.grid == (2, 1), pb.grid
    base_b = prepare_image(image_b, "base")
    assert to_array(base_b.global_view).tobytes() == to_array(pb.global_view).tobytes(), \
        "Base view of image_b must equal its Gundam global view"
    t["image_b"] = torch.from_numpy(to_array(image_b))
    t["image_b_global_1024"] = torch.from_numpy(to_array(pb.global_view))
    t["image_b_tiles"] = torch.from_numpy(np.stack([to_array(x) for x in pb.tiles]))
    t["image_b_grid"] = torch.tensor(pb.grid, dtype=torch.long)
    save(out / "preprocess.safetensors", t, meta(
        path="HF infer(): Tiny/Small stretch-resize (BICUBIC) to S then ImageOps.pad(S, color 127); Gundam: "
             "dynamic_preprocess(min 2, max 9, 640-px tiles) if W>640 or H>640, global ImageOps.pad(1024)",
        image_a_view_512="Tiny view of image_a (600x200: width downsampled, height upsampled)",
        image_b_global_1024="Gundam global view of image_b (700x340); identical to its Base view",
        image_b_tiles="Gundam tiles, row-major, [n,640,640,3]; image_b_grid = (nW, nH); "
                      "(2,1) ties exactly with (4,2), W*H <= 0.5*640^2*8 keeps (2,1)",
        omitted="image_a_view_640/1024/1280: same code as image_a_view_512 / image_b_global_1024 at other "
                "sizes, left out to keep the fixtures small (see README)",
        image_token_counts=json.dumps({"tiny": num_image_tokens(512), "gundam_image_b": pb.num_tokens})))
    return {"tiny": views[512], "small": views[640], "b_global": t["image_b_global_1024"],
            "b_tiles": t["image_b_tiles"], "b_grid": pb.grid}


def make_model(out: Path) -> DeepseekOCR:
    cfg = OcrConfig.from_dict(SMALL_CONFIG)
    model = DeepseekOCR.from_config(cfg, seed=SEED, **INIT).eval()
    d = out / "ocr-small"
    model.save_pretrained(d, dtype=torch.float32, metadata=meta(init=INIT))
    canonicalize(d / "model.safetensors")
    print(f"{d / 'model.safetensors'}: {(d / 'model.safetensors').stat().st_size / 1e6:.2f} MB")
    return DeepseekOCR.from_pretrained(d).eval()  # what the Rust side will load


FULL_SAM = True


@torch.no_grad()
def make_encoders(out: Path, model: DeepseekOCR, px: dict) -> dict:
    seqs = {}
    specs = [
        ("tiny", px["tiny"], "preprocess.safetensors:image_a_view_512", True),
        ("small", px["b_tiles"][0], "preprocess.safetensors:image_b_tiles[0]", False),
        ("base", px["b_global"], "preprocess.safetensors:image_b_global_1024", False),
    ]
    for mode, u8, source, full in specs:
        c: dict = {}
        x = normalize(u8)[None]
        seq = model.image_embeddings(x, collect=c)
        t = {k[len("global."):]: v for k, v in c.items() if k.startswith("global.")}
        if not full:
            t = {k: v for k, v in t.items() if not (k.startswith("sam_block_") or k == "sam_patch_embed")}
        t["sequence"] = seq
        s = u8.shape[0]
        assert seq.shape[0] == num_image_tokens(s), (mode, seq.shape)
        seqs[mode] = seq
        save(out / "ocr-small" / f"encoder_{mode}.safetensors", t, meta(
            mode=mode, view_size=str(s), pixel_values_source=source,
            pixel_values="NOT stored (size): normalise the u8 source: (x/255 - 0.5)/0.5 in f32, HWC -> [1,3,S,S]",
            grid=f"{s // 16}x{s // 16} patches -> {q_tokens(s)}x{q_tokens(s)} tokens",
            sequence=f"{seq.shape[0]} = q(q+1)+1: rows + image_newline, then view_seperator",
            stored="all SAM stages" if full else "from sam_neck on (sam_patch_embed and sam_block_i left out)"))
    # Gundam: local tiles + global view of image_b.
    c = {}
    g = normalize(px["b_global"])[None]
    loc = normalize(px["b_tiles"])
    seq = model.image_embeddings(g, loc, px["b_grid"], collect=c)
    t = {k: v for k, v in c.items() if "sam_block_" not in k and "sam_patch_embed" not in k}
    t["grid"] = torch.tensor(px["b_grid"], dtype=torch.long)
    assert seq.shape[0] == num_image_tokens(1024, 640, px["b_grid"])
    seqs["gundam"] = seq
    save(out / "ocr-small" / "encoder_gundam.safetensors", t, meta(
        mode="gundam", pixel_values_source="global: preprocess.safetensors:image_b_global_1024; local: "
        "preprocess.safetensors:image_b_tiles", grid="(nW, nH) = " + str(px["b_grid"]),
        sequence=f"{seq.shape[0]} = local mosaic (10*nH rows of 10*nW + newline) + global 16x17 + separator",
        stored="per view from sam_neck on, prefixed global./local. (local B = tiles)"))
    return seqs


@torch.no_grad()
def decoder_case(model: DeepseekOCR, image_embeds: torch.Tensor, prompt_seed: int) -> dict:
    g = torch.Generator().manual_seed(prompt_seed)
    n = image_embeds.shape[0]
    before = torch.randint(2, IMAGE_TOKEN_ID, (6,), generator=g)
    after = torch.randint(2, IMAGE_TOKEN_ID, (9,), generator=g)
    ids = torch.cat([torch.tensor([0]), before, torch.full((n,), IMAGE_TOKEN_ID), after])
    mask = ids == IMAGE_TOKEN_ID
    emb = model.embed_inputs(ids[None], image_embeds, mask[None])[0]
    logits = model(ids[None], image_embeds=image_embeds, images_seq_mask=mask[None]).logits[0]
    m1: list[float] = []
    m2: list[float] = []
    greedy = greedy_generate(model, ids, image_embeds, mask, max_new_tokens=64, eos_token_id=None, margins=m1)
    white = int(np.bincount(np.array(greedy), minlength=512).argmax())
    ng = NoRepeatNGram(ngram_size=3, window_size=16, whitelist={white})
    greedy_ng = greedy_generate(model, ids, image_embeds, mask, max_new_tokens=64, eos_token_id=None, ngram=ng,
                                margins=m2)
    top2 = logits.topk(2, dim=-1).values
    margin = min(min(m1), min(m2), float((top2[:, 0] - top2[:, 1]).min()))
    return {"ids": ids, "mask": mask, "emb": emb, "logits": logits, "greedy": greedy, "greedy_ng": greedy_ng,
            "ng": ng, "margin": margin, "n": n}


@torch.no_grad()
def make_decoder(out: Path, model: DeepseekOCR, image_embeds: torch.Tensor) -> None:
    # The first prompt seed whose every argmax (prefill and both greedy runs) wins by > 2e-3, so
    # that f32 rounding differences cannot flip a token; and where the n-gram rule changes the output.
    for k in range(100):
        c = decoder_case(model, image_embeds, SEED + 4 + k)
        if c["margin"] > 2e-3 and c["greedy"] != c["greedy_ng"]:
            break
    else:
        raise RuntimeError("no robust decoder case found")
    ng, n = c["ng"], c["n"]
    save(out / "ocr-small" / "decoder.safetensors", {
        "input_ids": c["ids"], "images_seq_mask": c["mask"].to(torch.uint8), "image_embeds": image_embeds,
        "inputs_embeds": c["emb"], "logits": c["logits"], "greedy_ids": torch.tensor(c["greedy"], dtype=torch.long),
        "greedy_ngram_ids": torch.tensor(c["greedy_ng"], dtype=torch.long),
    }, meta(
        image_token_id=str(IMAGE_TOKEN_ID), bos_token_id="0", prompt_seed=str(SEED + 4 + k),
        input_ids=f"BOS + 6 text ids + {n} image ids + 9 text ids",
        image_embeds="= encoder_tiny.safetensors `sequence`",
        images_seq_mask="u8, 1 on the placeholder positions",
        logits="prefill, all positions, fp32",
        greedy_ids="64 greedy tokens after the prompt, KV cache, EOS never stops it (eos disabled)",
        greedy_ngram_ids="same with the vLLM windowed no-repeat rule over generated ids only",
        min_top1_margin=f"{c['margin']:.6f} (smallest best-minus-second logit over prefill and both greedy runs)",
        ngram_size=str(ng.ngram_size), window_size=str(ng.window_size), whitelist=json.dumps(sorted(ng.whitelist))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests" / "fixtures"))
    args = ap.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    out = Path(args.out)
    make_interp(out)
    px = make_preprocess(out)
    model = make_model(out)
    seqs = make_encoders(out, model, px)
    make_decoder(out, model, seqs["tiny"])
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"total {total / 1e6:.2f} MB in {out}")


if __name__ == "__main__":
    main()
