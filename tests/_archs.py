"""Architectures shared by the tests (the `tiny_arch` fixture returns `TINY_ARCH`)."""

from __future__ import annotations

from search_spaces import ArchConfig, LanguageModelConfig, VisionTowerConfig

# The smallest candidate the search space builds: one layer of width 32 per tower.
TINY_ARCH = ArchConfig(
    vision=VisionTowerConfig(depth=1, width=32, heads=2),
    lm=LanguageModelConfig(depth=1, width=32, heads=2),
    grid_pinpoints=((1, 1), (1, 2), (2, 1)),
)
