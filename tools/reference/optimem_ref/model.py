"""`DeepseekOCR`: the whole DeepSeek-OCR v1 model (DeepEncoder + layout + MoE decoder), config-driven.

Module tree (internal names; weights.py maps to the official ones):
  sam_model       SamEncoder (transformers DeepseekOcr2SamVisionEncoder)
  vision_model    ClipVisionModel (own embeddings + transformers CLIPEncoder)
  projector       Projector (Linear)
  image_newline, view_seperator   learned (n_embed,) vectors (typo kept)
  language_model  transformers DeepseekOcr2TextModel (embed_tokens, layers, norm, rotary)
  lm_head         Linear(hidden, vocab), untied
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .config import OcrConfig
from .decoder import Fp32RotaryEmbedding, build_text_model
from .vision import ClipVisionModel, Projector, SamEncoder
from .weights import from_official, to_official


@dataclass
class OcrOutput:
    """`logits` fp32 [B,T,V] (None when return_logits=False); `loss` mean next-token CE over labels != -100;
    `past_key_values` the KV cache when use_cache; `vision_tokens` the per-view projector outputs
    [B, h*w, n_embed] when pixel_values were given (for per-token auxiliary heads)."""

    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    past_key_values: object | None = None
    vision_tokens: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


class DeepseekOCR(nn.Module):
    def __init__(self, config: OcrConfig):
        super().__init__()
        self.config = config
        d = config.decoder
        self.sam_model = SamEncoder(config.sam)
        self.vision_model = ClipVisionModel(config.clip)
        self.projector = Projector(config)
        self.image_newline = nn.Parameter(torch.zeros(config.n_embed))
        self.view_seperator = nn.Parameter(torch.zeros(config.n_embed))
        self.language_model = build_text_model(d)
        self.lm_head = nn.Linear(d.hidden_size, d.vocab_size, bias=False)
        if d.tie_word_embeddings:
            self.lm_head.weight = self.language_model.embed_tokens.weight

    # ------------------------------------------------------------------ vision
    def encode_images(self, pixel_values: torch.Tensor, collect: dict | None = None) -> torch.Tensor:
        """Per-view DeepEncoder output before layout.

        pixel_values: [B, 3, S, S] normalised views of one size (global views or tiles).
        Returns [B, (S/64)^2, n_embed], row-major over the S/64 x S/64 grid.
        `collect` (optional dict) receives the intermediate stages named as in the fixtures.
        """
        sam = self.sam_model.forward_detailed(pixel_values, collect)  # [B, C3, h, w]
        clip = self.vision_model(sam)  # [B, 1 + h*w, D]
        features = torch.cat([clip[:, 1:], sam.flatten(2).transpose(1, 2)], dim=-1)  # CLIP first (spec §2.4)
        out = self.projector(features)
        if collect is not None:
            collect["clip_out"] = clip
            collect["features"] = features
            collect["projector_out"] = out
        return out

    def layout_global(self, vision_tokens: torch.Tensor) -> torch.Tensor:
        """No-tile layout, batched (spec §2.6): [B, h*w, D] -> [B, h*(w+1)+1, D] =
        each grid row + image_newline, then view_seperator."""
        b, hw, dim = vision_tokens.shape
        h = math.isqrt(hw)
        if h * h != hw:
            raise ValueError(f"{hw} vision tokens are not a square grid")
        grid = vision_tokens.reshape(b, h, h, dim)
        nl = self.image_newline.to(grid.dtype).expand(b, h, 1, dim)
        rows = torch.cat([grid, nl], dim=2).reshape(b, h * (h + 1), dim)
        sep = self.view_seperator.to(grid.dtype).expand(b, 1, dim)
        return torch.cat([rows, sep], dim=1)

    def layout_image(self, global_tokens: torch.Tensor, local_tokens: torch.Tensor | None = None,
                     grid: tuple[int, int] | None = None) -> torch.Tensor:
        """One image (spec §2.6): [local mosaic + newline per mosaic row] + [global + newline per row] + sep.

        global_tokens [h*w, D] (or [1, h*w, D]); local_tokens [nW*nH, h2*w2, D] in row-major tile order;
        grid = (nW, nH). Returns [N, D] with N = q_b(q_b+1)+1 [+ (q_t nW + 1)(q_t nH)].
        """
        if global_tokens.dim() == 3:
            global_tokens = global_tokens[0]
        hw, dim = global_tokens.shape
        h = math.isqrt(hw)
        g = torch.cat([global_tokens.reshape(h, h, dim), self.image_newline.to(global_tokens.dtype).expand(h, 1, dim)], 1)
        parts = []
        if local_tokens is not None and local_tokens.shape[0] > 0:
            n_w, n_h = grid
            n, hw2, _ = local_tokens.shape
            if n != n_w * n_h:
                raise ValueError(f"{n} tiles but grid {n_w}x{n_h}")
            h2 = math.isqrt(hw2)
            mosaic = local_tokens.reshape(n_h, n_w, h2, h2, dim).permute(0, 2, 1, 3, 4).reshape(n_h * h2, n_w * h2, dim)
            nl = self.image_newline.to(mosaic.dtype).expand(n_h * h2, 1, dim)
            parts.append(torch.cat([mosaic, nl], 1).reshape(-1, dim))
        parts.append(g.reshape(-1, dim))
        parts.append(self.view_seperator.to(global_tokens.dtype)[None])
        return torch.cat(parts, 0)

    def image_embeddings(self, global_pixels: torch.Tensor, local_pixels: torch.Tensor | None = None,
                         grid: tuple[int, int] | None = None, collect: dict | None = None) -> torch.Tensor:
        """One image end to end: [1,3,Sb,Sb] global (+ [n,3,640,640] tiles) -> laid-out [N, n_embed]."""
        gc = {} if collect is not None else None
        lc = {} if collect is not None else None
        local = None
        if local_pixels is not None and local_pixels.shape[0] > 0:
            local = self.encode_images(local_pixels, lc)
        glob = self.encode_images(global_pixels, gc)
        seq = self.layout_image(glob[0], local, grid)
        if collect is not None:
            collect.update({f"global.{k}": v for k, v in gc.items()})
            collect.update({f"local.{k}": v for k, v in lc.items()})
            collect["sequence"] = seq
        return seq

    # ------------------------------------------------------------------ text
    def embed_inputs(self, input_ids: torch.Tensor, image_embeds=None, images_seq_mask=None) -> torch.Tensor:
        """embed_tokens(input_ids) with the placeholder rows overwritten in order (spec §5.5).

        image_embeds: [sumN, D], [B, N, D] or a list of [N_i, D], in prompt order (batch-major).
        """
        emb = self.language_model.embed_tokens(input_ids)
        if image_embeds is None:
            return emb
        if images_seq_mask is None:
            raise ValueError("image_embeds given without images_seq_mask")
        if isinstance(image_embeds, (list, tuple)):
            image_embeds = torch.cat(list(image_embeds), 0)
        image_embeds = image_embeds.reshape(-1, emb.shape[-1])
        n_mask = int(images_seq_mask.sum())
        if n_mask != image_embeds.shape[0]:
            raise ValueError(f"{n_mask} placeholder positions but {image_embeds.shape[0]} image embeddings")
        return emb.masked_scatter(images_seq_mask.unsqueeze(-1).to(emb.device), image_embeds.to(emb.dtype))

    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                image_embeds=None, images_seq_mask: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, past_key_values=None, use_cache: bool = False,
                return_logits: bool = True, inputs_embeds: torch.Tensor | None = None,
                logits_to_keep: int = 0) -> OcrOutput:
        """input_ids [B,T]; images either as pixel_values [B,3,S,S] (one untiled global view per sample,
        laid out with `layout_global`) or as precomputed image_embeds (see embed_inputs); images_seq_mask
        [B,T] bool marks the placeholders. labels [B,T] (-100 = ignore) are the input ids themselves
        (shifted inside). With return_logits=False and labels, the LM head runs only on labelled positions.
        logits_to_keep=k>0 keeps only the last k positions' logits."""
        vision_tokens = None
        if pixel_values is not None:
            if image_embeds is not None:
                raise ValueError("give pixel_values or image_embeds, not both")
            vision_tokens = self.encode_images(pixel_values)
            image_embeds = self.layout_global(vision_tokens)
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(input_ids, image_embeds, images_seq_mask)
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache)
        hidden = out.last_hidden_state
        logits = loss = None
        if return_logits:
            h = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
            logits = self.lm_head(h).float()
        if labels is not None:
            shift_labels = labels[:, 1:]
            sel = shift_labels != -100
            if logits is not None and logits_to_keep == 0:
                sel_logits = logits[:, :-1][sel]
            else:
                sel_logits = self.lm_head(hidden[:, :-1][sel]).float()
            loss = F.cross_entropy(sel_logits, shift_labels[sel])
        return OcrOutput(logits=logits, loss=loss, past_key_values=out.past_key_values if use_cache else None,
                         vision_tokens=vision_tokens, last_hidden_state=hidden)

    # ------------------------------------------------------------------ training helpers
    def gradient_checkpointing_enable(self) -> None:
        """Recompute every SAM, CLIP and decoder layer in backward (non-reentrant checkpoint)."""
        from functools import partial

        from torch.utils.checkpoint import checkpoint
        from transformers.modeling_layers import GradientCheckpointingLayer

        for m in self.modules():
            if isinstance(m, GradientCheckpointingLayer):
                m.gradient_checkpointing = True
                m._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)

    @torch.no_grad()
    def init_weights_(self, seed: int = 0, std: float | None = None, bias_std: float = 0.0,
                      norm_std: float = 0.0, embed_std: float = 0.02) -> None:
        """Random weights. Linear/conv weights ~ N(0, std) (std=None: 1/sqrt(fan_in), keeps activations
        O(1)); biases ~ N(0, bias_std); norm weights 1 + N(0, norm_std), norm biases N(0, norm_std);
        position tables, rel-pos, class/newline/separator and token embeddings ~ N(0, embed_std);
        expert weights like Linear. Deterministic for a given seed (CPU generator)."""
        g = torch.Generator().manual_seed(seed)

        def normal_(t: torch.Tensor, s: float):
            t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float32).mul_(s).to(t.dtype))

        for name, p in self.named_parameters():
            last = name.rsplit(".", 1)[-1]
            is_norm = ("norm" in name or "layer_norm" in name or "layrnorm" in name) and p.dim() == 1
            if is_norm and last == "weight":
                p.fill_(1.0)
                if norm_std:
                    p.add_(torch.randn(p.shape, generator=g).mul_(norm_std).to(p.dtype))
            elif is_norm and last == "bias":
                normal_(p, norm_std) if norm_std else p.zero_()
            elif last == "bias":
                normal_(p, bias_std) if bias_std else p.zero_()
            elif last in ("gate_up_proj", "down_proj") and p.dim() == 3:
                normal_(p, std if std is not None else p.shape[-1] ** -0.5)
            elif p.dim() >= 2 and not any(k in name for k in ("pos_embed", "rel_pos", "embed_tokens", "position_embedding")):
                fan_in = p[0].numel()
                normal_(p, std if std is not None else fan_in ** -0.5)
            else:
                normal_(p, embed_std)

    # ------------------------------------------------------------------ checkpoint I/O
    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors under their official names (spec §6.2)."""
        return to_official(self.state_dict())

    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = torch.bfloat16,
                        max_shard_bytes: int | None = None, metadata: dict[str, str] | None = None) -> list[Path]:
        """Writes config.json and model.safetensors (official names, `dtype`, default bf16; None keeps
        the parameter dtype). With max_shard_bytes, writes model-0000i-of-0000n.safetensors parts plus
        model.safetensors.index.json instead. Returns the written weight files."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / "config.json")
        sd = {}
        for k, v in self.official_state_dict().items():
            v = v.detach()
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
            sd[k] = v.contiguous().cpu()
        meta = {"format": "pt"}
        meta.update(metadata or {})
        names = sorted(sd)
        if not max_shard_bytes:
            save_file(sd, str(directory / "model.safetensors"), metadata=meta)
            return [directory / "model.safetensors"]
        shards, cur, size = [], [], 0
        for n in names:
            b = sd[n].numel() * sd[n].element_size()
            if cur and size + b > max_shard_bytes:
                shards.append(cur)
                cur, size = [], 0
            cur.append(n)
            size += b
        if cur:
            shards.append(cur)
        files, weight_map = [], {}
        for i, part in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file({n: sd[n] for n in part}, str(directory / fname), metadata=meta)
            files.append(directory / fname)
            weight_map.update({n: fname for n in part})
        total = sum(t.numel() * t.element_size() for t in sd.values())
        with open(directory / "model.safetensors.index.json", "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
        return files

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> "DeepseekOCR":
        """Loads config.json + model.safetensors (or an index of shards) with official names.
        dtype=None keeps the file dtype. Built on the meta device, so no random init is paid."""
        directory = Path(directory)
        cfg = OcrConfig.from_file(directory / "config.json")
        with torch.device("meta"):
            model = cls(cfg)
        official = {}
        index = directory / "model.safetensors.index.json"
        if (directory / "model.safetensors").exists():
            official = load_file(str(directory / "model.safetensors"), device=str(device))
        elif index.exists():
            with open(index, encoding="utf-8") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            for fname in files:
                official.update(load_file(str(directory / fname), device=str(device)))
        else:
            raise FileNotFoundError(f"{directory}: neither model.safetensors nor model.safetensors.index.json")
        internal = from_official(official, list(model.state_dict().keys()))
        if dtype is not None:
            internal = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in internal.items()}
        model.load_state_dict(internal, strict=True, assign=True)
        model._rebuild_buffers(torch.device(device))
        return model

    def _rebuild_buffers(self, device: torch.device) -> None:
        """Non-persistent buffers (RoPE inverse frequencies) after a meta-device build."""
        with torch.device(device):
            self.language_model.rotary_emb = Fp32RotaryEmbedding(self.language_model.config)
        for name, b in self.named_buffers():
            if b.is_meta:
                raise RuntimeError(f"buffer `{name}` left on the meta device")

    @classmethod
    def from_config(cls, config: OcrConfig, seed: int = 0, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, **init_kw) -> "DeepseekOCR":
        """A randomly initialised model (see init_weights_)."""
        with torch.device(device):
            model = cls(config)
        model.init_weights_(seed=seed, **init_kw)
        return model.to(dtype)

    def num_parameters(self) -> int:
        """Parameters as counted in the official checkpoint (spec §6.1)."""
        return sum(t.numel() for t in self.official_state_dict().values())
