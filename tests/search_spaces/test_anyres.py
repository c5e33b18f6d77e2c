from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from search_spaces import anyres_tiles, select_best_grid

GRIDS = ((1, 1), (1, 2), (2, 1), (2, 2), (1, 3), (3, 1))


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        # square image: 2x2 keeps 64x64 of 64x64 (all of it), the others less
        ((64, 64), (2, 2)),
        # wide 64x128 (h x w): 1x2 holds 32x64 = 2048 px, 1x3 holds 32x64 too after
        # scaling to fit (scale min(96/128, 32/64) = 0.5), with more waste; 2x2 holds
        # 32x64 as well (scale 0.5) -> 1x2 wins on waste
        ((64, 128), (1, 2)),
        # tall 128x64: mirror of the above
        ((128, 64), (2, 1)),
        # very wide 32x96: 1x3 keeps every pixel
        ((32, 96), (1, 3)),
        # tiny image: every grid keeps all 10x10 px; 1x1 wastes least
        ((10, 10), (1, 1)),
    ],
)
def test_select_best_grid_hand_worked(hw: tuple[int, int], expected: tuple[int, int]) -> None:
    assert select_best_grid(hw, GRIDS, 32) == expected


def test_tiles_global_view_first_then_grid_row_major_padded() -> None:
    # 64 wide x 32 high: left half red, right half blue -> grid 1x2
    img = np.zeros((32, 64, 3), dtype=np.uint8)
    img[:, :32] = (255, 0, 0)
    img[:, 32:] = (0, 0, 255)
    pixels, mask = anyres_tiles(Image.fromarray(img), ((1, 1), (1, 2), (2, 2)), 32, max_tiles=5)
    assert pixels.shape == (5, 3, 32, 32)
    assert mask.tolist() == [1, 1, 1, 0, 0]
    red, blue = pixels[1], pixels[2]
    assert red[0].mean() > 0.9 and red[2].mean() < -0.9  # tile 1 is the left (red) half
    assert blue[2].mean() > 0.9 and blue[0].mean() < -0.9
    glob = pixels[0]  # global view holds both colours
    assert glob[0, :, :8].mean() > 0.9 and glob[2, :, -8:].mean() > 0.9
    assert not pixels[3:].any()


def test_aspect_kept_with_padding() -> None:
    # 32x48 image into a 1x2 grid (32x64): resized keeps 32 high, 48 wide, centred
    img = Image.fromarray(np.full((32, 48, 3), 255, dtype=np.uint8))
    pixels, _ = anyres_tiles(img, ((1, 2),), 32, max_tiles=3)
    row = np.concatenate([pixels[1][0, 16], pixels[2][0, 16]])
    assert (row[:8] == 0).all() and (row[-8:] == 0).all() and (row[8:56] == 1).all()
