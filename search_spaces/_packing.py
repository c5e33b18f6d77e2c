"""LLaVA-NeXT's AnyRes packing as a gather index, computed on the host.

transformers' `LlavaNextModel.pack_image_features` turns the tile features of one image
into its visual tokens: the base tile's patches, then the grid tiles' patches laid out as
one (rows * g) x (cols * g) feature map, cropped to the image's aspect ratio
(`unpad_image`), with an `image_newline` vector after every row. How many tokens that
gives depends on the image's size, which is why the packing stays out of every exported
graph (the trap of exporting it: data-dependent shapes). Here the same arithmetic yields,
per image, the index of each visual token in the flat per-image feature table

    [tile 0 patch 0, ..., tile T-1 patch P-1, image_newline, zeros]

so that the model gathers its tokens with one static `gather`; `padding_index` (the zero
row) fills the slots past an image's own token count. `tests/search_spaces/test_family.py`
checks the result against transformers' own forward, token for token.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import numpy as np
from transformers.image_processing_utils import select_best_resolution

from ._arch import ArchConfig


def pinpoints_px(arch: ArchConfig) -> list[list[int]]:
    """AnyRes grids in pixels, (height, width), the form transformers' config and image
    processor take (`image_grid_pinpoints`)."""
    tile = arch.vision.tile_size
    return [[r * tile, c * tile] for r, c in arch.grid_pinpoints]


def grid_of(image_hw: tuple[int, int], arch: ArchConfig) -> tuple[int, int]:
    """(rows, cols) of grid tiles the image processor cuts an image of (height, width)
    into (`select_best_resolution`, as transformers does)."""
    h, w = select_best_resolution(tuple(image_hw), pinpoints_px(arch))
    return h // arch.vision.tile_size, w // arch.vision.tile_size


def tiles_of(image_hw: tuple[int, int], arch: ArchConfig) -> int:
    """Tiles the image processor returns for one image: the base view plus the grid."""
    rows, cols = grid_of(image_hw, arch)
    return 1 + rows * cols


def newline_index(arch: ArchConfig) -> int:
    return arch.max_tiles * arch.vision.tokens_per_tile


def padding_index(arch: ArchConfig) -> int:
    return newline_index(arch) + 1


def image_index(image_hw: tuple[int, int], arch: ArchConfig) -> np.ndarray:
    """The visual tokens of one image of (height, width) as indices into the flat feature
    table (module docstring); (n_tokens,) int64."""
    per_tile = arch.vision.tokens_per_tile
    g = int(round(per_tile**0.5))  # tokens per tile side (pooling halves it)
    rows, cols = grid_of(image_hw, arch)
    # feature map position (y, x) -> tile 1 + (y // g) * cols + x // g, patch (y % g, x % g)
    y, x = np.meshgrid(np.arange(rows * g), np.arange(cols * g), indexing="ij")
    flat = (1 + (y // g) * cols + x // g) * per_tile + (y % g) * g + (x % g)
    flat = _unpad(flat, image_hw)
    newline = np.full((flat.shape[0], 1), newline_index(arch))
    grid = np.concatenate([flat, newline], axis=1).reshape(-1)
    return np.concatenate([np.arange(per_tile), grid]).astype(np.int64)


def _unpad(feature_map: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray:
    """transformers' `unpad_image` on a (height, width) map: drop the rows or columns that
    the processor's centred padding filled."""
    oh, ow = original_hw
    ch, cw = feature_map.shape
    if ow / oh > cw / ch:
        new_h = int(round(oh * (cw / ow), 7))
        pad = (ch - new_h) // 2
        return feature_map[pad : ch - pad, :]
    new_w = int(round(ow * (ch / oh), 7))
    pad = (cw - new_w) // 2
    return feature_map[:, pad : cw - pad]


def pad_indices(
    indices: list[np.ndarray], arch: ArchConfig, length: int | None = None
) -> np.ndarray:
    """Stack per-image indices into (N, length) padded with `padding_index`."""
    length = length or max(len(i) for i in indices)
    out = np.full((len(indices), length), padding_index(arch), dtype=np.int64)
    for row, idx in enumerate(indices):
        out[row, : len(idx)] = idx
    return out


def max_image_tokens(arch: ArchConfig) -> int:
    """The most visual tokens any image gets: the base tile plus the largest grid with its
    newlines (before unpadding): the static width of `image_index`."""
    per_tile = arch.vision.tokens_per_tile
    g = int(round(per_tile**0.5))
    return per_tile + max(r * g * (c * g + 1) for r, c in arch.grid_pinpoints)


def image_processor(arch: ArchConfig) -> Any:
    """LLaVA-NeXT's image processor for `arch`'s tiles and AnyRes grids (the PIL backend:
    the torchvision one is not installed). Pixels are normalised to [-1, 1]. A candidate
    cut from a checkpoint gets the checkpoint's own processor, its grids restricted as
    the candidate's are."""
    if arch.backbone is not None:
        return _checkpoint_processor(arch.backbone, json.dumps(pinpoints_px(arch)))
    from transformers import LlavaNextImageProcessorPil
    from transformers.image_utils import PILImageResampling

    tile = arch.vision.tile_size
    return LlavaNextImageProcessorPil(
        resample=PILImageResampling.BILINEAR,  # as vlmnas always tiled (HF's default: bicubic)
        size={"shortest_edge": tile},
        crop_size={"height": tile, "width": tile},
        image_grid_pinpoints=pinpoints_px(arch),
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


@lru_cache(maxsize=8)
def _checkpoint_processor(backbone_id: str, pinpoints: str) -> Any:
    from transformers import AutoImageProcessor

    from ._backbone import _REGISTRY, BackboneError

    if backbone_id not in _REGISTRY:
        raise BackboneError(f"backbone {backbone_id!r} is not loaded in this process")
    processor = AutoImageProcessor.from_pretrained(_REGISTRY[backbone_id].path, backend="pil")
    processor.image_grid_pinpoints = json.loads(pinpoints)
    return processor
