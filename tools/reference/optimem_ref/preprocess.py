"""Pillow preprocessing of the HF `infer()` path (spec §3.1-3.4), written here to the spec.

transformers' DeepseekOcr2 image processors implement DeepSeek-OCR-2's different tiling (768-px
tiles, other limits), so none of it is reused.

- load: PIL open, EXIF transpose, RGB.
- crop (Gundam) mode: tiles only if W > 640 or H > 640 (hard-coded 640); tiles from
  `dynamic_preprocess` with min 2 / max 9 and 640-px tiles (HF hard-codes them); global view =
  `ImageOps.pad(image, (base, base), color=(127,127,127))` (bicubic contain + centred paste).
- no-crop modes: if image_size <= 640, first stretch-resize to (image_size, image_size) (BICUBIC,
  Pillow's resize default); then `ImageOps.pad` to (image_size, image_size).
- normalise: (u8 / 255 - 0.5) / 0.5 in fp32, NCHW.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from .config import q_tokens

PAD_COLOR = (127, 127, 127)  # int(0.5 * 255), spec §2.1
HF_TILE_SIZE = 640  # `dynamic_preprocess` default; HF infer() ignores the mode's image_size
CROP_THRESHOLD = 640  # "W > 640 or H > 640", hard-coded

# mode -> (base_size, image_size, crop_mode), spec §3.1 (OCR-HFRUN)
MODES = {
    "tiny": (512, 512, False),
    "small": (640, 640, False),
    "base": (1024, 1024, False),
    "large": (1280, 1280, False),
    "gundam": (1024, 640, True),
}


def load_image(path) -> Image.Image:
    img = Image.open(path)
    img = ImageOps.exif_transpose(img)
    return img.convert("RGB")


def candidate_grids(min_num: int = 2, max_num: int = 9) -> list[tuple[int, int]]:
    """(i, j) = (tiles across, tiles down) with min_num <= i*j <= max_num, in the order of the
    official code: a Python set sorted (stably) by i*j. Spec §3.3 lists the CPython 3.11 order."""
    target_ratios = set(
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    )
    return sorted(target_ratios, key=lambda x: x[0] * x[1])


def find_closest_aspect_ratio(aspect_ratio: float, target_ratios, width: int, height: int,
                              image_size: int = HF_TILE_SIZE) -> tuple[int, int]:
    """Smallest |W/H - i/j|; on an exact tie switch to the later candidate iff W*H > 0.5*size^2*i*j."""
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def choose_grid(width: int, height: int, min_num: int = 2, max_num: int = 9,
                image_size: int = HF_TILE_SIZE) -> tuple[int, int]:
    """(nW, nH) for an image of width x height (no threshold check)."""
    return find_closest_aspect_ratio(width / height, candidate_grids(min_num, max_num), width, height, image_size)


def dynamic_preprocess(image: Image.Image, min_num: int = 2, max_num: int = 9,
                       image_size: int = HF_TILE_SIZE) -> tuple[list[Image.Image], tuple[int, int]]:
    """Resize (BICUBIC) to (size*nW, size*nH) and crop size x size tiles row-major."""
    w, h = image.size
    n_w, n_h = choose_grid(w, h, min_num, max_num, image_size)
    resized = image.resize((image_size * n_w, image_size * n_h), Image.Resampling.BICUBIC)
    tiles = []
    for i in range(n_w * n_h):
        c, r = i % n_w, i // n_w
        tiles.append(resized.crop((c * image_size, r * image_size, (c + 1) * image_size, (r + 1) * image_size)))
    return tiles, (n_w, n_h)


@dataclass
class PreparedImage:
    """One image ready for the encoder: the global view, the tiles (row-major) and the grid (nW, nH)
    (None when untiled), plus the sizes the token count is computed from."""

    global_view: Image.Image
    tiles: list[Image.Image]
    grid: tuple[int, int] | None
    base_size: int
    tile_size: int

    @property
    def num_tokens(self) -> int:
        return num_image_tokens(self.base_size, self.tile_size, self.grid)


def prepare_image(image: Image.Image, mode: str | tuple[int, int, bool] = "small", min_num: int = 2,
                  max_num: int = 9) -> PreparedImage:
    """HF `infer()` preprocessing for one RGB image (spec §3.2)."""
    base_size, image_size, crop_mode = MODES[mode] if isinstance(mode, str) else mode
    if image.mode != "RGB":
        image = image.convert("RGB")
    if crop_mode:
        w, h = image.size
        tiles, grid = [], None
        if w > CROP_THRESHOLD or h > CROP_THRESHOLD:
            tiles, grid = dynamic_preprocess(image, min_num, max_num, HF_TILE_SIZE)
        glob = ImageOps.pad(image, (base_size, base_size), color=PAD_COLOR)
        return PreparedImage(glob, tiles, grid, base_size, HF_TILE_SIZE)
    if image_size <= 640:
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    glob = ImageOps.pad(image, (image_size, image_size), color=PAD_COLOR)
    return PreparedImage(glob, [], None, image_size, image_size)


def num_image_tokens(base_size: int, tile_size: int = HF_TILE_SIZE, grid: tuple[int, int] | None = None) -> int:
    """Placeholders per image (spec §3.4): q_b(q_b+1) + 1 [+ (q_t nW + 1)(q_t nH) when tiled]."""
    qb = q_tokens(base_size)
    n = qb * (qb + 1) + 1
    if grid is not None and (grid[0] > 1 or grid[1] > 1):
        qt = q_tokens(tile_size)
        n += (qt * grid[0] + 1) * (qt * grid[1])
    return n


def to_array(image: Image.Image) -> np.ndarray:
    """u8 [H, W, 3]."""
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def normalize(u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """u8 [..., H, W, 3] -> fp32 [..., 3, H, W] = (x / 255 - 0.5) / 0.5 (ToTensor + Normalize)."""
    t = torch.as_tensor(u8)
    t = t.movedim(-1, -3).contiguous().to(torch.float32).div(255.0)
    return (t - 0.5) / 0.5


def pixel_values(prepared: PreparedImage) -> tuple[torch.Tensor, torch.Tensor | None]:
    """([1,3,Sb,Sb] global, [n,3,St,St] tiles or None), fp32 normalised."""
    g = normalize(to_array(prepared.global_view))[None]
    tiles = None
    if prepared.tiles:
        tiles = normalize(np.stack([to_array(t) for t in prepared.tiles]))
    return g, tiles
