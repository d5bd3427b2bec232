"""The three fixed resizes of the DeepEncoder (spec §2.2, §2.3, §9 item 4).

- SAM absolute position embedding: (1, 64, 64, C) NHWC -> (1, g, g, C), torch bicubic,
  antialias=True, align_corners=False, computed in fp32 and cast back (OCR-SAM `get_abs_pos`).
- CLIP position embedding: (257, D) -> (1 + g*g, D); CLS row kept, the 16x16 grid resized as above
  (OCR-CLIP `get_abs_pos`).
- SAM relative-position table: (L, c) -> (2*size - 1, c), torch linear, align_corners=False, fp32
  (OCR-SAM `get_rel_pos`); applied only when the length differs.

These are written here (not taken from transformers) because the maintained CLIP module resizes
without antialias and the maintained SAM rel-pos resize runs in the parameter dtype (see README).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resize_sam_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, G, G, C) NHWC -> (1, grid, grid, C). Identity when grid == G."""
    if pos_embed.shape[1] == grid and pos_embed.shape[2] == grid:
        return pos_embed
    dtype = pos_embed.dtype
    x = pos_embed.permute(0, 3, 1, 2).to(torch.float32)
    x = F.interpolate(x, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    return x.to(dtype).permute(0, 2, 3, 1)


def resize_clip_pos_embed(table: torch.Tensor, grid: int) -> torch.Tensor:
    """(1 + G*G, D) with CLS first -> (1 + grid*grid, D). Identity when grid == G."""
    n, dim = table.shape
    src = int(math.isqrt(n - 1))
    if src * src != n - 1:
        raise ValueError(f"CLIP position table of {n} rows is not 1 + a square grid")
    if src == grid:
        return table
    dtype = table.dtype
    cls_pos, grid_pos = table[:1], table[1:]
    x = grid_pos.reshape(1, src, src, dim).permute(0, 3, 1, 2).to(torch.float32)
    x = F.interpolate(x, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    x = x.to(dtype).permute(0, 2, 3, 1).reshape(grid * grid, dim)
    return torch.cat([cls_pos, x], dim=0)


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """(L, c) -> (length, c) with linear interpolation in fp32. Identity when L == length."""
    if rel_pos.shape[0] == length:
        return rel_pos
    dtype = rel_pos.dtype
    x = rel_pos.to(torch.float32).reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1)
    x = F.interpolate(x, size=length, mode="linear", align_corners=False)
    return x.reshape(-1, length).permute(1, 0).to(dtype)
