"""`ArchConfig`: one candidate of the LLaVA-NeXT-style model family, as a frozen value."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

FUSIONS = ("early",)


@dataclass(frozen=True)
class VisionTowerConfig:
    """A ViT over square tiles: patch embedding, then `depth` encoder layers."""

    depth: int = 2
    width: int = 64
    heads: int = 4
    mlp_ratio: int = 2
    patch_size: int = 8
    tile_size: int = 32

    @property
    def patches_per_tile(self) -> int:
        return (self.tile_size // self.patch_size) ** 2


@dataclass(frozen=True)
class LanguageModelConfig:
    """A causal decoder over the text sequence with image tokens spliced in."""

    depth: int = 2
    width: int = 96
    heads: int = 4
    mlp_ratio: int = 2


@dataclass(frozen=True)
class ArchConfig:
    """Everything that defines a candidate.

    `grid_pinpoints` are AnyRes grid shapes as (rows, cols) of tiles; the image is
    resized into the best-fitting grid (LLaVA-NeXT's `select_best_resolution`), split
    into `rows * cols` tiles, and a downscaled global view is prepended.

    `quant` maps a hardware profile name to its quantization scheme. It is part of
    `arch_id` but not of `weights_id`: the same trained weights serve every scheme.
    """

    vision: VisionTowerConfig = field(default_factory=VisionTowerConfig)
    lm: LanguageModelConfig = field(default_factory=LanguageModelConfig)
    grid_pinpoints: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (2, 1), (2, 2))
    projector_depth: int = 2
    fusion: str = "early"
    quant: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        problems = []
        for tower in ("vision", "lm"):
            cfg = getattr(self, tower)
            if cfg.width % cfg.heads:
                problems.append(
                    f"{tower}.heads={cfg.heads} does not divide {tower}.width={cfg.width}"
                )
            if cfg.depth < 1:
                problems.append(f"{tower}.depth={cfg.depth}: must be >= 1")
        if self.vision.tile_size % self.vision.patch_size:
            problems.append(
                f"vision.patch_size={self.vision.patch_size} does not divide "
                f"vision.tile_size={self.vision.tile_size}"
            )
        if not self.grid_pinpoints or any(r < 1 or c < 1 for r, c in self.grid_pinpoints):
            problems.append(
                f"grid_pinpoints={self.grid_pinpoints}: need >= 1 grid of rows, cols >= 1"
            )
        if self.projector_depth not in (1, 2):
            problems.append(f"projector_depth={self.projector_depth}: allowed 1 or 2")
        if self.fusion not in FUSIONS:
            problems.append(f"fusion={self.fusion!r}: allowed {list(FUSIONS)}")
        if problems:
            raise ValueError("invalid ArchConfig: " + "; ".join(problems))

    @property
    def max_tiles(self) -> int:
        """Tiles per image including the global view (the model's static tile count)."""
        return 1 + max(r * c for r, c in self.grid_pinpoints)

    @property
    def image_tokens(self) -> int:
        """Visual tokens the language model sees per image (padded tiles included)."""
        return self.max_tiles * self.vision.patches_per_tile

    def quant_for(self, profile: str) -> str:
        return dict(self.quant).get(profile, "fp32")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON/YAML-safe dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ArchConfig keys {unknown}; allowed {sorted(known)}")
        kwargs = dict(data)
        if "vision" in kwargs:
            kwargs["vision"] = VisionTowerConfig(**kwargs["vision"])
        if "lm" in kwargs:
            kwargs["lm"] = LanguageModelConfig(**kwargs["lm"])
        if "grid_pinpoints" in kwargs:
            kwargs["grid_pinpoints"] = tuple(tuple(g) for g in kwargs["grid_pinpoints"])
        if "quant" in kwargs:
            q = kwargs["quant"]
            items = q.items() if isinstance(q, dict) else q
            kwargs["quant"] = tuple(sorted((str(p), str(s)) for p, s in items))
        return cls(**kwargs)

    @property
    def arch_id(self) -> str:
        """Stable hash of the canonical config (sorted-key JSON), quantization included."""
        return _hash(self.to_dict())

    @property
    def weights_id(self) -> str:
        """Hash of the architecture part only: what training produces weights for."""
        d = self.to_dict()
        d.pop("quant")
        return _hash(d)


def _hash(data: dict[str, Any]) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]
