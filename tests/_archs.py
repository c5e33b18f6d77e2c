"""Architectures shared by the tests (the `tiny_arch` fixture returns `TINY_ARCH`), and
the model inputs they build the same way: random rows for a model of one architecture,
and the encoded validation rows as ONNX feeds or torch tensors."""

from __future__ import annotations

import numpy as np
import torch

from search_spaces import (
    ArchConfig,
    EncodedVQA,
    LanguageModelConfig,
    VisionTowerConfig,
    VlmModel,
    build_model,
    image_index,
    max_image_tokens,
    pad_indices,
    tiles_of,
)

# The smallest candidate the search space builds: one layer of width 32 per tower.
TINY_ARCH = ArchConfig(
    vision=VisionTowerConfig(depth=1, width=32, heads=2),
    lm=LanguageModelConfig(depth=1, width=32, heads=2),
    grid_pinpoints=((1, 1), (1, 2), (2, 1)),
)

# The token ids of the random rows: `<image>` as `trainers.data.WordTokenizer` numbers it,
# words from FIRST_WORD on.
IMAGE_ID = 2
FIRST_WORD = 5
VOCAB = 30


def random_model(arch: ArchConfig, *, vocab_size: int = VOCAB, seed: int = 0) -> VlmModel:
    """The untrained candidate of `arch` in eval mode, for the random rows below."""
    return build_model(arch, vocab_size=vocab_size, image_token_id=IMAGE_ID, seed=seed).eval()


def largest_image(arch: ArchConfig) -> tuple[int, int]:
    """(height, width) of an image that fills `arch`'s largest grid exactly: every tile
    real and nothing unpadded."""
    rows, cols = max(arch.grid_pinpoints, key=lambda g: g[0] * g[1])
    return rows * arch.vision.tile_size, cols * arch.vision.tile_size


def random_inputs(
    arch: ArchConfig,
    *,
    batch: int = 2,
    text_len: int = 10,
    image_pos: int = 0,
    image_hw: tuple[int, int] | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixel_values, image_index, input_ids) of `batch` random rows as `encode_eval`
    lays them out, each with one image of `image_hw` (default `largest_image`).

    Pixels are random on the image's own tiles and zero on the padding tiles;
    `image_index` is padded to `max_image_tokens`; the text is `text_len` random words
    with `<image>` at `image_pos`, which early fusion expands to one id per visual token
    (the rows are not right-padded: every position is text or image).
    """
    hw = image_hw or largest_image(arch)
    g = torch.Generator().manual_seed(seed)
    side = arch.vision.tile_size
    pixels = torch.zeros(batch, arch.max_tiles, 3, side, side)
    real = tiles_of(hw, arch)
    pixels[:, :real] = torch.randn(batch, real, 3, side, side, generator=g)
    tokens = image_index(hw, arch)
    index = torch.from_numpy(pad_indices([tokens] * batch, arch, max_image_tokens(arch)))
    words = torch.randint(FIRST_WORD, VOCAB, (batch, text_len), generator=g)
    n_image = len(tokens) if arch.fusion.early else 1
    image = torch.full((batch, n_image), IMAGE_ID)
    ids = torch.cat([words[:, :image_pos], image, words[:, image_pos + 1 :]], dim=1)
    return pixels, index, ids


def onnx_feeds(part: EncodedVQA) -> dict[str, np.ndarray]:
    """Encoded rows as the exported graph's inputs."""
    return {
        "pixel_values": part.pixel_values,
        "image_index": part.image_index,
        "input_ids": part.prompt_ids,
    }


def torch_inputs(
    part: EncodedVQA, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encoded rows as a `VlmModel`'s inputs on `device`, the pixels in `dtype`."""
    return (
        torch.from_numpy(part.pixel_values).to(device, dtype),
        torch.from_numpy(np.ascontiguousarray(part.image_index)).to(device),
        torch.from_numpy(np.ascontiguousarray(part.prompt_ids)).to(device),
    )
