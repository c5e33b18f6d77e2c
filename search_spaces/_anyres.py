"""LLaVA-NeXT's AnyRes image preprocessing, for square tiles of `tile` pixels.

Follows `select_best_resolution` / `resize_and_pad_image` / `divide_to_patches` of
LLaVA-NeXT: choose the grid that keeps the most of the original resolution (ties: the
least padding), resize keeping the aspect ratio, pad to the grid centred, cut into tiles,
and prepend a global view (the whole image resized to one tile).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pillow is imported where images are decoded: a GPU host may lack it
    from PIL import Image

# Per-channel normalisation to roughly [-1, 1]; padding is 0 after normalisation.
_MEAN = 127.5
_STD = 127.5


def select_best_grid(
    image_hw: tuple[int, int], grids: tuple[tuple[int, int], ...], tile: int
) -> tuple[int, int]:
    """The (rows, cols) grid whose resolution best fits an image of (height, width)."""
    oh, ow = image_hw
    best: tuple[int, int] | None = None
    best_effective, best_wasted = -1, math.inf
    for rows, cols in grids:
        h, w = rows * tile, cols * tile
        scale = min(w / ow, h / oh)
        dw, dh = int(ow * scale), int(oh * scale)
        effective = min(dw * dh, ow * oh)
        wasted = w * h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (rows, cols), effective, wasted
    assert best is not None, "grids must not be empty"
    return best


def _resize_and_pad(image: Image.Image, target_hw: tuple[int, int]) -> np.ndarray:
    """Resize keeping aspect ratio, then centre on a zero canvas: (H, W, 3) float32."""
    from PIL import Image

    th, tw = target_hw
    ow, oh = image.size
    sw, sh = tw / ow, th / oh
    if sw < sh:
        nw, nh = tw, min(math.ceil(oh * sw), th)
    else:
        nh, nw = th, min(math.ceil(ow * sh), tw)
    resized = _normalise(image.resize((nw, nh), Image.Resampling.BILINEAR))
    canvas = np.zeros((th, tw, 3), dtype=np.float32)
    top, left = (th - nh) // 2, (tw - nw) // 2
    canvas[top : top + nh, left : left + nw] = resized
    return canvas


def _normalise(image: Image.Image) -> np.ndarray:
    return (np.asarray(image.convert("RGB"), dtype=np.float32) - _MEAN) / _STD


def anyres_tiles(
    image: Image.Image, grids: tuple[tuple[int, int], ...], tile: int, max_tiles: int
) -> tuple[np.ndarray, np.ndarray]:
    """Tile one image for the model.

    Returns `pixel_values` (max_tiles, 3, tile, tile) float32 with the global view first
    and the grid tiles row-major after it, zero-padded up to `max_tiles`, and
    `tile_mask` (max_tiles,) float32, 1 for real tiles and 0 for padding.
    """
    from PIL import Image

    rows, cols = select_best_grid((image.height, image.width), grids, tile)
    if 1 + rows * cols > max_tiles:
        raise ValueError(
            f"grid {rows}x{cols} needs {1 + rows * cols} tiles > max_tiles={max_tiles}"
        )
    grid = _resize_and_pad(image, (rows * tile, cols * tile))
    tiles = [_normalise(image.resize((tile, tile), Image.Resampling.BILINEAR))]
    for r in range(rows):
        for c in range(cols):
            tiles.append(grid[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile])
    pixel_values = np.zeros((max_tiles, 3, tile, tile), dtype=np.float32)
    pixel_values[: len(tiles)] = np.stack(tiles).transpose(0, 3, 1, 2)
    tile_mask = np.zeros(max_tiles, dtype=np.float32)
    tile_mask[: len(tiles)] = 1.0
    return pixel_values, tile_mask
