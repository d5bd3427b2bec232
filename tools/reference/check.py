#!/usr/bin/env python3
"""Self-checks of the reference against facts that can be checked independently of it.

    .venv-ref/bin/python tools/reference/check.py        # runs every test_* below (CPU, ~1 min)
    .venv-ref/bin/python -m pytest tools/reference/check.py   # same, if pytest is installed

- token counts and tile grids against the worked examples of spec §3.1, §3.3, §3.4;
- the official tensor names, shapes and parameter count (spec §6.1, §6.2) on a meta-device model;
- the transformers-assembled modules against naive re-implementations written here from the spec
  text (SAM block with window padding and decomposed rel-pos, CLIP layer with fused qkv, decoder
  with rotate_half RoPE / fp32 router / no renormalisation / shared experts, the 2-D layout);
- load/save round trips, KV-cache decoding vs full recomputation, the n-gram rule, Pillow padding.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from optimem_ref import (  # noqa: E402
    DeepseekOCR,
    NoRepeatNGram,
    OcrConfig,
    candidate_grids,
    choose_grid,
    greedy_generate,
    num_image_tokens,
    prepare_image,
)
from optimem_ref.interp import resize_clip_pos_embed, resize_rel_pos, resize_sam_pos_embed  # noqa: E402
from optimem_ref.preprocess import normalize, to_array  # noqa: E402
from optimem_ref.weights import from_official  # noqa: E402

SMALL = {
    "vocab_size": 97, "hidden_size": 48, "intermediate_size": 80, "moe_intermediate_size": 24,
    "num_hidden_layers": 3, "num_attention_heads": 4, "n_routed_experts": 5, "num_experts_per_tok": 2,
    "n_shared_experts": 2, "first_k_dense_replace": 1, "bos_token_id": 0, "eos_token_id": 1,
    "vision": {"sam": {"embed_dim": 24, "depth": 3, "num_heads": 3, "global_attn_indexes": [1], "out_chans": 8,
                       "net_2_chans": 16, "net_3_chans": 32},
               "clip": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "ffn_hidden_size": 64}},
    "projector_config": {"projector_type": "linear", "input_dim": 64, "n_embed": 48},
}


def small_model(seed: int = 3) -> DeepseekOCR:
    return DeepseekOCR.from_config(OcrConfig.from_dict(SMALL), seed=seed, bias_std=0.1, norm_std=0.1,
                                   embed_std=0.5).eval()


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5, what: str = "") -> None:
    err = float((a.detach().float() - b.detach().float()).abs().max())
    scale = float(b.detach().float().abs().max()) + 1e-12
    assert err <= tol * max(1.0, scale), f"{what}: max abs err {err:.3e} (scale {scale:.3e})"


# ---------------------------------------------------------------------------------- §3 counts and grids
def test_token_counts_per_mode():
    assert [num_image_tokens(s) for s in (512, 640, 1024, 1280)] == [73, 111, 273, 421]


def test_candidate_order_matches_spec():
    spec9 = [(1, 2), (2, 1), (3, 1), (1, 3), (2, 2), (4, 1), (1, 4), (5, 1), (1, 5), (1, 6), (6, 1), (3, 2), (2, 3),
             (7, 1), (1, 7), (4, 2), (2, 4), (1, 8), (8, 1), (1, 9), (3, 3), (9, 1)]
    spec6 = [(1, 2), (2, 1), (3, 1), (1, 3), (4, 1), (1, 4), (2, 2), (1, 5), (5, 1), (6, 1), (2, 3), (1, 6), (3, 2)]
    assert candidate_grids(2, 9) == spec9
    assert candidate_grids(2, 6) == spec6


def test_tile_choices_spec_examples():
    assert choose_grid(1920, 1080, 2, 9) == (4, 2)
    assert choose_grid(1920, 1080, 2, 6) == (2, 1)
    assert choose_grid(1191, 1684) == (2, 3)
    assert choose_grid(800, 600) == (3, 2)
    assert choose_grid(3000, 1000) == (3, 1)


def test_gundam_worked_examples_through_pillow():
    expected = {(1191, 1684): 903, (800, 600): 893, (3000, 1000): 583, (600, 400): 273}
    for (w, h), n in expected.items():
        p = prepare_image(Image.new("RGB", (w, h), (200, 30, 90)), "gundam")
        assert p.num_tokens == n, ((w, h), p.num_tokens, n)
        assert p.global_view.size == (1024, 1024)
        if p.grid is not None:
            assert len(p.tiles) == p.grid[0] * p.grid[1] and all(t.size == (640, 640) for t in p.tiles)
        else:
            assert not p.tiles and max(w, h) <= 640


def test_modes_view_sizes():
    img = Image.new("RGB", (900, 700), (1, 2, 3))
    for mode, s in (("tiny", 512), ("small", 640), ("base", 1024), ("large", 1280)):
        p = prepare_image(img, mode)
        assert p.global_view.size == (s, s) and p.grid is None and p.num_tokens == num_image_tokens(s)


def test_pillow_pad_colour_and_offset():
    # 700x340 -> contain to 1024 x round(340/700*1024)=497, pasted at round(527*0.5)=264 (ties to even).
    img = Image.new("RGB", (700, 340), (255, 255, 255))
    a = to_array(prepare_image(img, "base").global_view)
    assert (a[:264] == 127).all() and (a[264 + 497:] == 127).all()
    assert (a[264:264 + 497] == 255).all()
    assert abs(float(normalize(a[:1, :1])[0, 0, 0]) - (127 / 255 - 0.5) / 0.5) < 1e-7  # ~ -0.0039, not 0


# ---------------------------------------------------------------------------------- §6 names and count
def expected_official_shapes() -> dict[str, tuple]:
    """Spec §6.2, written out from the table (not from weights.py)."""
    e = {}
    s = "model.sam_model."
    e[s + "patch_embed.proj.weight"], e[s + "patch_embed.proj.bias"] = (768, 3, 16, 16), (768,)
    e[s + "pos_embed"] = (1, 64, 64, 768)
    for n in range(12):
        b = f"{s}blocks.{n}."
        for nm in ("norm1", "norm2"):
            e[b + nm + ".weight"] = e[b + nm + ".bias"] = (768,)
        e[b + "attn.qkv.weight"], e[b + "attn.qkv.bias"] = (2304, 768), (2304,)
        e[b + "attn.proj.weight"], e[b + "attn.proj.bias"] = (768, 768), (768,)
        L = 127 if n in (2, 5, 8, 11) else 27
        e[b + "attn.rel_pos_h"] = e[b + "attn.rel_pos_w"] = (L, 64)
        e[b + "mlp.lin1.weight"], e[b + "mlp.lin1.bias"] = (3072, 768), (3072,)
        e[b + "mlp.lin2.weight"], e[b + "mlp.lin2.bias"] = (768, 3072), (768,)
    e[s + "neck.0.weight"] = (256, 768, 1, 1)
    for i in (1, 3):
        e[f"{s}neck.{i}.weight"] = e[f"{s}neck.{i}.bias"] = (256,)
    e[s + "neck.2.weight"] = (256, 256, 3, 3)
    e[s + "net_2.weight"], e[s + "net_3.weight"] = (512, 256, 3, 3), (1024, 512, 3, 3)
    v = "model.vision_model."
    e[v + "embeddings.class_embedding"] = (1024,)
    e[v + "embeddings.patch_embedding.weight"] = (1024, 3, 14, 14)
    e[v + "embeddings.position_embedding.weight"] = (257, 1024)
    e[v + "pre_layrnorm.weight"] = e[v + "pre_layrnorm.bias"] = (1024,)
    for n in range(24):
        b = f"{v}transformer.layers.{n}."
        for nm in ("layer_norm1", "layer_norm2"):
            e[b + nm + ".weight"] = e[b + nm + ".bias"] = (1024,)
        e[b + "self_attn.qkv_proj.weight"], e[b + "self_attn.qkv_proj.bias"] = (3072, 1024), (3072,)
        e[b + "self_attn.out_proj.weight"], e[b + "self_attn.out_proj.bias"] = (1024, 1024), (1024,)
        e[b + "mlp.fc1.weight"], e[b + "mlp.fc1.bias"] = (4096, 1024), (4096,)
        e[b + "mlp.fc2.weight"], e[b + "mlp.fc2.bias"] = (1024, 4096), (1024,)
    e["model.projector.layers.weight"], e["model.projector.layers.bias"] = (1280, 2048), (1280,)
    e["model.image_newline"] = e["model.view_seperator"] = (1280,)
    e["model.embed_tokens.weight"] = (129280, 1280)
    for n in range(12):
        b = f"model.layers.{n}."
        e[b + "input_layernorm.weight"] = e[b + "post_attention_layernorm.weight"] = (1280,)
        for p in "qkvo":
            e[f"{b}self_attn.{p}_proj.weight"] = (1280, 1280)
        if n == 0:
            e[b + "mlp.gate_proj.weight"] = e[b + "mlp.up_proj.weight"] = (6848, 1280)
            e[b + "mlp.down_proj.weight"] = (1280, 6848)
            continue
        e[b + "mlp.gate.weight"] = (64, 1280)
        for j in range(64):
            e[f"{b}mlp.experts.{j}.gate_proj.weight"] = e[f"{b}mlp.experts.{j}.up_proj.weight"] = (896, 1280)
            e[f"{b}mlp.experts.{j}.down_proj.weight"] = (1280, 896)
        e[b + "mlp.shared_experts.gate_proj.weight"] = e[b + "mlp.shared_experts.up_proj.weight"] = (1792, 1280)
        e[b + "mlp.shared_experts.down_proj.weight"] = (1280, 1792)
    e["model.norm.weight"] = (1280,)
    e["lm_head.weight"] = (129280, 1280)
    return e


def test_official_names_shapes_and_count():
    with torch.device("meta"):
        model = DeepseekOCR(OcrConfig.official())
    got = {k: tuple(v.shape) for k, v in model.official_state_dict().items()}
    exp = expected_official_shapes()
    assert set(got) == set(exp), (sorted(set(got) - set(exp))[:5], sorted(set(exp) - set(got))[:5])
    bad = [k for k in exp if got[k] != exp[k]]
    assert not bad, bad[:5]
    assert len(got) == 2710
    total = sum(math.prod(s) for s in got.values())
    assert total == 3_336_106_240, total
    parts = {"decoder": 0, "sam": 0, "clip": 0, "projector": 0, "layout": 0}
    for k, s in got.items():
        key = ("sam" if ".sam_model." in k else "clip" if ".vision_model." in k else "projector" if ".projector." in k
               else "layout" if k in ("model.image_newline", "model.view_seperator") else "decoder")
        parts[key] += math.prod(s)
    assert parts == {"decoder": 2_934_734_080, "sam": 95_569_152, "clip": 303_177_728, "projector": 2_622_720,
                     "layout": 2_560}, parts
    # Loading the official names back gives exactly the internal state dict (position_ids is ignored).
    official = model.official_state_dict()
    official["model.vision_model.embeddings.position_ids"] = torch.arange(257)[None]
    internal = from_official(official, list(model.state_dict()))
    assert set(internal) == set(model.state_dict())
    assert all(tuple(internal[k].shape) == tuple(v.shape) for k, v in model.state_dict().items())


def test_save_load_round_trip_and_shards():
    m = small_model()
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        ref = m.encode_images(x)
    with tempfile.TemporaryDirectory() as d:
        m.save_pretrained(d, dtype=None)
        m2 = DeepseekOCR.from_pretrained(d).eval()
        for k, v in m.state_dict().items():
            assert torch.equal(v, m2.state_dict()[k]), k
        with torch.no_grad():
            assert torch.equal(m2.encode_images(x), ref)
        files = m.save_pretrained(Path(d) / "sharded", dtype=torch.bfloat16, max_shard_bytes=20_000)
        assert len(files) > 1
        m3 = DeepseekOCR.from_pretrained(Path(d) / "sharded")
        assert m3.lm_head.weight.dtype == torch.bfloat16
        assert m3.language_model.rotary_emb.inv_freq.dtype == torch.float32
        assert torch.equal(m3.lm_head.weight, m.lm_head.weight.to(torch.bfloat16))


# ---------------------------------------------------------------------------------- naive spec re-implementations
def naive_sam_block(x, p, heads, window, global_block):
    """Spec §2.2 'Block computation' and 'Attention with rel-pos', from official tensors `p`."""
    B, H, W, C = x.shape
    hd = C // heads
    y = F.layer_norm(x, (C,), p["norm1.weight"], p["norm1.bias"], 1e-6)
    if not global_block:
        ph, pw = (-H) % window, (-W) % window
        y = F.pad(y, (0, 0, 0, pw, 0, ph))  # zeros after norm1, no mask
        Hp, Wp = H + ph, W + pw
        y = y.reshape(B, Hp // window, window, Wp // window, window, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, C)
    b, h, w, _ = y.shape
    qkv = (y.reshape(b, h * w, C) @ p["attn.qkv.weight"].T + p["attn.qkv.bias"]).reshape(b, h * w, 3, heads, hd)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (b, heads, N, hd)

    def table(t, size):
        L = 2 * size - 1
        if t.shape[0] != L:
            t = F.interpolate(t.T[None], size=L, mode="linear", align_corners=False)[0].T
        idx = torch.arange(size)[:, None] - torch.arange(size)[None, :] + size - 1
        return t[idx]  # (q, k, hd)

    Rh, Rw = table(p["attn.rel_pos_h"], h), table(p["attn.rel_pos_w"], w)
    qg = q.reshape(b, heads, h, w, hd)
    rel_h = torch.einsum("bnyxc,ykc->bnyxk", qg, Rh)  # unscaled q
    rel_w = torch.einsum("bnyxc,xkc->bnyxk", qg, Rw)
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, heads, h * w, h * w)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + bias, -1)
    o = (att @ v).permute(0, 2, 1, 3).reshape(b, h, w, C)
    o = o @ p["attn.proj.weight"].T + p["attn.proj.bias"]
    if not global_block:
        o = o.reshape(B, Hp // window, Wp // window, window, window, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
        o = o[:, :H, :W]
    x = x + o
    m = F.layer_norm(x, (C,), p["norm2.weight"], p["norm2.bias"], 1e-6)
    m = F.gelu(m @ p["mlp.lin1.weight"].T + p["mlp.lin1.bias"])  # exact erf GELU
    return x + (m @ p["mlp.lin2.weight"].T + p["mlp.lin2.bias"])


def naive_ln2d(x, w, b):
    mu = x.mean(1, keepdim=True)
    var = ((x - mu) ** 2).mean(1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-6) * w[:, None, None] + b[:, None, None]


def naive_encoder(off, cfg, x):
    """Spec §2.2-2.4 end to end from the official tensors."""
    s, c = cfg.sam, cfg.clip
    S = "model.sam_model."
    y = F.conv2d(x, off[S + "patch_embed.proj.weight"], off[S + "patch_embed.proj.bias"], stride=16).permute(0, 2, 3, 1)
    g = y.shape[1]
    pos = off[S + "pos_embed"]
    if g != pos.shape[1]:
        pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(g, g), mode="bicubic", antialias=True,
                            align_corners=False).permute(0, 2, 3, 1)
    y = y + pos
    for i in range(s.depth):
        p = {k[len(f"{S}blocks.{i}."):]: v for k, v in off.items() if k.startswith(f"{S}blocks.{i}.")}
        y = naive_sam_block(y, p, s.num_heads, s.window_size, i in s.global_attn_indexes)
    y = y.permute(0, 3, 1, 2)
    y = naive_ln2d(F.conv2d(y, off[S + "neck.0.weight"]), off[S + "neck.1.weight"], off[S + "neck.1.bias"])
    y = naive_ln2d(F.conv2d(y, off[S + "neck.2.weight"], padding=1), off[S + "neck.3.weight"], off[S + "neck.3.bias"])
    sam = F.conv2d(F.conv2d(y, off[S + "net_2.weight"], stride=2, padding=1), off[S + "net_3.weight"], stride=2, padding=1)
    V = "model.vision_model."
    B, D, h, w = sam.shape
    t = torch.cat([off[V + "embeddings.class_embedding"].expand(B, 1, D), sam.flatten(2).transpose(1, 2)], 1)
    table = off[V + "embeddings.position_embedding.weight"]
    src = int(math.isqrt(table.shape[0] - 1))
    if src != h:
        grid = F.interpolate(table[1:].reshape(1, src, src, D).permute(0, 3, 1, 2), size=(h, w), mode="bicubic",
                             antialias=True, align_corners=False).permute(0, 2, 3, 1).reshape(h * w, D)
        table = torch.cat([table[:1], grid])
    t = F.layer_norm(t + table, (D,), off[V + "pre_layrnorm.weight"], off[V + "pre_layrnorm.bias"], 1e-5)
    hd = D // c.num_heads
    for i in range(c.num_layers):
        L = f"{V}transformer.layers.{i}."
        a = F.layer_norm(t, (D,), off[L + "layer_norm1.weight"], off[L + "layer_norm1.bias"], 1e-5)
        qkv = (a @ off[L + "self_attn.qkv_proj.weight"].T + off[L + "self_attn.qkv_proj.bias"]).reshape(B, -1, 3, c.num_heads, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        o = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1) @ v
        o = o.transpose(1, 2).reshape(B, -1, D) @ off[L + "self_attn.out_proj.weight"].T + off[L + "self_attn.out_proj.bias"]
        t = t + o
        m = F.layer_norm(t, (D,), off[L + "layer_norm2.weight"], off[L + "layer_norm2.bias"], 1e-5)
        m = m @ off[L + "mlp.fc1.weight"].T + off[L + "mlp.fc1.bias"]
        m = m * torch.sigmoid(1.702 * m)  # quick_gelu
        t = t + (m @ off[L + "mlp.fc2.weight"].T + off[L + "mlp.fc2.bias"])  # no post-LN
    feats = torch.cat([t[:, 1:], sam.flatten(2).transpose(1, 2)], -1)  # CLIP first
    return feats @ off["model.projector.layers.weight"].T + off["model.projector.layers.bias"]


def test_encoder_matches_naive_spec_implementation():
    m = small_model()
    off = {k: v.float() for k, v in m.official_state_dict().items()}
    torch.manual_seed(0)
    for S in (512, 640, 1024, 1280):  # grids 32, 40, 64, 80: pos/rel-pos down, none, up; window padding
        x = torch.randn(1, 3, S, S)
        with torch.no_grad():
            close(m.encode_images(x), naive_encoder(off, m.config, x), 2e-5, f"encoder {S}")


def naive_decoder_logits(off, d, emb):
    """Spec §4.2-4.3 from the official tensors: RMSNorm fp32, rotate_half RoPE over the full head,
    causal MHA, dense layer 0, MoE: fp32 softmax router, top-k, no renorm, x scaling, shared experts."""
    T, H = emb.shape
    nh, hd = d.num_attention_heads, d.hidden_size // d.num_attention_heads

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + d.rms_norm_eps))

    inv = 1.0 / (d.rope_theta ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.arange(T).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rope(x):  # (nh, T, hd), non-interleaved halves
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def mlp(x, pre):
        return (F.silu(x @ off[pre + "gate_proj.weight"].T) * (x @ off[pre + "up_proj.weight"].T)) @ off[pre + "down_proj.weight"].T

    x = emb
    causal = torch.full((T, T), float("-inf")).triu(1)
    for i in range(d.num_hidden_layers):
        L = f"model.layers.{i}."
        a = rms(x, off[L + "input_layernorm.weight"])
        q, k, v = [(a @ off[f"{L}self_attn.{p}_proj.weight"].T).reshape(T, nh, hd).transpose(0, 1) for p in "qkv"]
        q, k = rope(q), rope(k)
        o = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + causal, -1) @ v
        x = x + o.transpose(0, 1).reshape(T, H) @ off[L + "self_attn.o_proj.weight"].T
        a = rms(x, off[L + "post_attention_layernorm.weight"])
        if L + "mlp.gate.weight" not in off:
            x = x + mlp(a, L + "mlp.")
            continue
        probs = torch.softmax(a.float() @ off[L + "mlp.gate.weight"].float().T, -1)
        w, idx = probs.topk(d.num_experts_per_tok, -1)
        w = w * d.routed_scaling_factor
        y = torch.zeros_like(a)
        for t in range(T):
            for j in range(d.num_experts_per_tok):
                y[t] += w[t, j] * mlp(a[t:t + 1], f"{L}mlp.experts.{int(idx[t, j])}.")[0]
        x = x + y + mlp(a, L + "mlp.shared_experts.")
    return rms(x, off["model.norm.weight"]) @ off["lm_head.weight"].T


def test_decoder_matches_naive_spec_implementation():
    m = small_model()
    off = {k: v.float() for k, v in m.official_state_dict().items()}
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, SMALL["vocab_size"], (1, 23), generator=g)
    with torch.no_grad():
        logits = m(ids).logits[0]
        ref = naive_decoder_logits(off, m.config.decoder, off["model.embed_tokens.weight"][ids[0]])
    close(logits, ref, 2e-5, "decoder logits")


def test_layout_order_and_splice():
    m = small_model()
    D = m.config.n_embed
    with torch.no_grad():
        m.image_newline.fill_(-1.0)
        m.view_seperator.fill_(-2.0)
    # Tokens coded by value: tile t, row r, col c -> 1000*t + 10*r + c; global -> 50000 + 10*r + c.
    n_w, n_h, q = 3, 2, 10
    local = torch.tensor([[1000 * t + 10 * r + c for r in range(q) for c in range(q)]
                          for t in range(n_w * n_h)], dtype=torch.float32)[..., None].expand(-1, -1, D)
    glob = torch.tensor([50000 + 10 * r + c for r in range(16) for c in range(16)],
                        dtype=torch.float32)[:, None].expand(-1, D)
    seq = m.layout_image(glob, local, (n_w, n_h))[:, 0].tolist()
    assert len(seq) == num_image_tokens(1024, 640, (n_w, n_h)) == 273 + (10 * 3 + 1) * 20
    exp = []
    for R in range(n_h * q):  # mosaic rows
        for C in range(n_w * q):
            t = (R // q) * n_w + C // q
            exp.append(1000 * t + 10 * (R % q) + C % q)
        exp.append(-1.0)
    for r in range(16):
        exp += [50000 + 10 * r + c for c in range(16)] + [-1.0]
    exp.append(-2.0)
    assert seq == exp
    # Splice: placeholder rows are overwritten in order; other rows stay token embeddings.
    ids = torch.tensor([[0, 5, 7, 7, 7, 6]])
    mask = ids == 7
    emb = torch.arange(3 * D, dtype=torch.float32).reshape(3, D)
    with torch.no_grad():
        out = m.embed_inputs(ids, emb, mask)[0]
        tok = m.language_model.embed_tokens(ids)[0]
    assert torch.equal(out[2:5], emb) and torch.equal(out[[0, 1, 5]], tok[[0, 1, 5]])


def test_kv_cache_generation_equals_recomputation():
    m = small_model()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(2, SMALL["vocab_size"], (12,), generator=g)
    got = greedy_generate(m, ids, max_new_tokens=10)
    seq = ids.tolist()
    with torch.no_grad():
        for _ in range(10):
            seq.append(int(m(torch.tensor([seq])).logits[0, -1].argmax()))
    assert got == seq[12:]


def test_ngram_rule():
    ng = NoRepeatNGram(ngram_size=3, window_size=6, whitelist={9})
    assert ng.banned([1, 2]) == set()
    assert ng.banned([1, 2, 3, 1, 2]) == {3}
    assert ng.banned([1, 2, 9, 1, 2]) == set()  # whitelisted
    assert ng.banned([1, 2, 3, 0, 0, 0, 0, 1, 2]) == set()  # outside the window of 6
    assert ng.banned([1, 2, 3, 0, 1, 2, 4, 1, 2]) == {4}  # starts 3..6 only
    assert NoRepeatNGram(3, 9, set()).banned([1, 2, 3, 0, 1, 2, 4, 1, 2]) == {3, 4}


def test_interpolations_run_in_fp32():
    g = torch.Generator().manual_seed(4)
    pos = torch.randn(1, 64, 64, 8, generator=g).to(torch.bfloat16)
    ref = F.interpolate(pos.float().permute(0, 3, 1, 2), size=(40, 40), mode="bicubic", antialias=True,
                        align_corners=False).to(torch.bfloat16).permute(0, 2, 3, 1)
    assert torch.equal(resize_sam_pos_embed(pos, 40), ref)
    assert resize_sam_pos_embed(pos, 64) is pos
    table = torch.randn(257, 8, generator=g)
    assert torch.equal(resize_clip_pos_embed(table, 16), table)
    assert torch.equal(resize_clip_pos_embed(table, 10)[0], table[0])
    rel = torch.randn(127, 8, generator=g)
    assert torch.equal(resize_rel_pos(rel, 127), rel) and resize_rel_pos(rel, 79).shape == (79, 8)


def test_training_forward_loss():
    m = small_model().train()
    B, n = 2, num_image_tokens(512)
    T = n + 9
    ids = torch.randint(2, SMALL["vocab_size"], (B, T))
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[:, 1:1 + n] = True
    labels = ids.clone()
    labels[:, : 1 + n] = -100
    x = torch.randn(B, 3, 512, 512)
    out = m(ids, pixel_values=x, images_seq_mask=mask, labels=labels, return_logits=False)
    full = m(ids, pixel_values=x, images_seq_mask=mask, labels=labels)
    assert out.vision_tokens.shape == (B, 64, SMALL["hidden_size"])
    close(out.loss, full.loss, 1e-5, "loss")
    ref = F.cross_entropy(full.logits[:, :-1].reshape(-1, SMALL["vocab_size"]), labels[:, 1:].reshape(-1))
    close(out.loss, ref, 1e-5, "loss vs plain CE")
    out.loss.backward()
    assert m.sam_model.patch_embed.projection.weight.grad is not None
    assert m.language_model.layers[1].mlp.experts.gate_up_proj.grad is not None


def test_run_ocr_end_to_end():
    from tokenizers import Tokenizer, models, pre_tokenizers

    from optimem_ref import run_ocr

    vocab = {f"w{i}": i for i in range(SMALL["vocab_size"] - 1)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w2"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<image>"])
    assert tok.token_to_id("<image>") == SMALL["vocab_size"] - 1
    m = small_model()
    img = Image.new("RGB", (900, 500), (250, 250, 240))
    for mode in ("tiny", "gundam"):
        text = run_ocr(m, tok, img, prompt="<image>\nw5 w6 ", mode=mode, max_new_tokens=4)
        assert isinstance(text, str) and len(text.split()) <= 4


def main() -> int:
    torch.set_num_threads(2)
    tests = [(n, f) for n, f in globals().items() if n.startswith("test_") and callable(f)]
    failed = 0
    for name, fn in tests:
        t = time.time()
        try:
            fn()
            print(f"ok    {name} ({time.time() - t:.1f}s)")
        except Exception as e:  # report every failure, then exit non-zero
            failed += 1
            print(f"FAIL  {name}: {type(e).__name__}: {e}")
    print(f"{len(tests) - failed}/{len(tests)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
