"""DeepEncoder: SAM-B ViTDet + neck + 16x compressor, CLIP-L fed by SAM, linear projector (spec §2).

Assembled from maintained transformers modules:
- `transformers.models.deepseek_ocr2` `DeepseekOcr2SamVisionEncoder`: patch embed, abs pos-embed with
  bicubic+antialias fp32 resize, windowed/global blocks with decomposed rel-pos (SDPA), neck
  (conv1x1, LayerNorm2d, conv3x3, LayerNorm2d) and the two stride-2 convs (`proj.conv1/conv2` =
  official `net_2/net_3`, widths taken from our config: 512, 1024 officially).
- `transformers.models.clip` `CLIPEncoder` (pre-LN layers, quick_gelu, SDPA, separate q/k/v; the
  official fused `qkv_proj` is split/joined at load/save in weights.py).
Written here to the spec (and why):
- `SamRelPosAttention.get_rel_pos`: the rel-pos table resize runs in fp32 and only when the length
  differs (OCR-SAM); transformers always interpolates in the parameter dtype (differs in bf16) and
  builds its coordinate grid on the CPU.
- `ClipEmbeddings`: SAM features as patch embeddings + CLS + position table resized with bicubic
  **antialias** in fp32 (OCR-CLIP `get_abs_pos`); transformers' CLIPVisionEmbeddings resizes without
  antialias and only from pixels.
- The CLIP tower has no post-LN (official); we simply do not use CLIPVisionTransformer.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers.models.clip.configuration_clip import CLIPVisionConfig
from transformers.models.clip.modeling_clip import CLIPEncoder
from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import DeepseekOcr2SamVisionConfig
from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import (
    DeepseekOcr2SamVisionEncoder,
    DeepseekOcr2SamVisionSdpaAttention,
)

from .config import ClipConfig, OcrConfig, SamConfig
from .interp import resize_clip_pos_embed, resize_rel_pos


def sam_hf_config(s: SamConfig) -> DeepseekOcr2SamVisionConfig:
    cfg = DeepseekOcr2SamVisionConfig(
        hidden_size=s.embed_dim,
        output_channels=s.out_chans,
        num_hidden_layers=s.depth,
        num_attention_heads=s.num_heads,
        num_channels=3,
        image_size=s.img_size,
        patch_size=s.patch_size,
        hidden_act="gelu",  # exact erf GELU (nn.GELU), spec §2.2
        layer_norm_eps=1e-6,
        qkv_bias=True,
        mlp_ratio=s.mlp_ratio,
        use_abs_pos=True,
        use_rel_pos=True,
        window_size=s.window_size,
        global_attn_indexes=list(s.global_attn_indexes),
        downsample_channels=[s.net_2_chans, s.net_3_chans],
    )
    cfg._attn_implementation = "sdpa"
    return cfg


def clip_hf_config(c: ClipConfig) -> CLIPVisionConfig:
    cfg = CLIPVisionConfig(
        hidden_size=c.hidden_size,
        intermediate_size=c.ffn_hidden_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        image_size=c.image_size,
        patch_size=c.patch_size,
        hidden_act="quick_gelu",  # x * sigmoid(1.702 x), spec §2.3
        layer_norm_eps=1e-5,
        attention_dropout=0.0,
    )
    cfg._attn_implementation = "sdpa"
    return cfg


class SamRelPosAttention(DeepseekOcr2SamVisionSdpaAttention):
    """transformers' SDPA SAM attention with the rel-pos resize of OCR-SAM (fp32, only if needed)."""

    def get_rel_pos(self, q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
        max_rel_dist = int(2 * max(q_size, k_size) - 1)
        table = resize_rel_pos(rel_pos, max_rel_dist)
        dev = rel_pos.device
        q_coords = torch.arange(q_size, device=dev)[:, None] * max(k_size / q_size, 1.0)
        k_coords = torch.arange(k_size, device=dev)[None, :] * max(q_size / k_size, 1.0)
        relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
        return table[relative_coords.long()]


class SamEncoder(DeepseekOcr2SamVisionEncoder):
    """`sam_model`: transformers' SAM encoder with `SamRelPosAttention` in every block.

    Internal names follow transformers (`layers.N.layer_norm1`, `neck.conv1`, `proj.conv1`);
    weights.py maps them to the official ones (`blocks.N.norm1`, `neck.0`, `net_2`).
    """

    def __init__(self, s: SamConfig):
        cfg = sam_hf_config(s)
        super().__init__(cfg)
        for i, layer in enumerate(self.layers):
            window = s.window_size if i not in s.global_attn_indexes else 0
            layer.attn = SamRelPosAttention(cfg, window)

    def forward_detailed(self, pixel_values: torch.Tensor, collect: dict | None = None) -> torch.Tensor:
        """Same computation as `DeepseekOcr2SamVisionEncoder.forward`, optionally recording stages.

        Returns the `net_3` output, NCHW (B, net_3_chans, S/64, S/64).
        """
        x = self.patch_embed(pixel_values)
        x = x + self.interpolate_pos_encoding(x.shape[1], x.shape[2])
        if collect is not None:
            collect["sam_patch_embed"] = x
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if collect is not None:
                collect[f"sam_block_{i}"] = x
        x = self.neck(x)
        if collect is not None:
            collect["sam_neck"] = x
        x = self.proj.conv1(x)
        if collect is not None:
            collect["sam_net_2"] = x
        x = self.proj.conv2(x)
        if collect is not None:
            collect["sam_out"] = x
        return x

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:  # noqa: D401
        return self.forward_detailed(pixel_values)


class ClipEmbeddings(nn.Module):
    """`vision_model.embeddings`: CLS + SAM features + resized position table (OCR-CLIP).

    `patch_embedding` is kept only because the checkpoint has it; it is never used (spec §2.3).
    """

    def __init__(self, c: ClipConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(c.hidden_size))
        self.patch_embedding = nn.Conv2d(3, c.hidden_size, kernel_size=c.patch_size, stride=c.patch_size, bias=False)
        self.patch_embedding.requires_grad_(False)
        self.position_embedding = nn.Embedding(c.pos_grid * c.pos_grid + 1, c.hidden_size)

    def forward(self, sam_features: torch.Tensor) -> torch.Tensor:
        b, d, h, w = sam_features.shape
        if h != w:
            raise ValueError(f"CLIP position resize needs a square grid, got {h}x{w}")
        patch = sam_features.flatten(2).transpose(1, 2)  # (B, h*w, D), row-major
        cls = self.class_embedding.to(patch.dtype).expand(b, 1, -1)
        x = torch.cat([cls, patch], dim=1)
        pos = resize_clip_pos_embed(self.position_embedding.weight, h)
        return x + pos.to(x.dtype).unsqueeze(0)


class ClipVisionModel(nn.Module):
    """`vision_model`: embeddings -> pre_layrnorm (sic, eps 1e-5) -> transformers CLIPEncoder. No post-LN."""

    def __init__(self, c: ClipConfig):
        super().__init__()
        self.hf_config = clip_hf_config(c)
        self.embeddings = ClipEmbeddings(c)
        self.pre_layrnorm = nn.LayerNorm(c.hidden_size, eps=1e-5)
        self.transformer = CLIPEncoder(self.hf_config)

    def forward(self, sam_features: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) SAM output -> (B, 1 + h*w, D), CLS first."""
        x = self.pre_layrnorm(self.embeddings(sam_features))
        return self.transformer(inputs_embeds=x).last_hidden_state


class Projector(nn.Module):
    """`projector.layers`: one Linear(clip + sam channels -> n_embed) with bias (spec §2.4)."""

    def __init__(self, cfg: OcrConfig):
        super().__init__()
        self.layers = nn.Linear(cfg.projector_input_dim, cfg.n_embed, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
