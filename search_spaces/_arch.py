"""`ArchConfig`: one candidate of the LLaVA-NeXT-style model family, as a frozen value."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

PLACEMENTS = ("early", "cross_attention", "hybrid")
GATINGS = ("none", "tanh", "channel", "token")
IMAGE_ATTENTION = ("full", "image_no_text", "text_only")
XATTN_PATTERNS = ("all", "every_2nd", "lower_half", "upper_half")
FEATURE_LAYERS = ("last", "second_last")
POOLINGS = ("none", "avg2x2")
ACTIVATIONS = ("gelu", "gelu_tanh")
POS_ENCODINGS = ("learnable", "sincos_2d")


def xattn_layer_set(pattern: str, depth: int) -> tuple[int, ...]:
    """LM layer indices that get a cross-attention block in front of them."""
    if pattern == "all":
        return tuple(range(depth))
    if pattern == "every_2nd":
        return tuple(range(0, depth, 2))
    if pattern == "lower_half":
        return tuple(range((depth + 1) // 2))
    if pattern == "upper_half":
        return tuple(range(depth // 2, depth))
    raise ValueError(f"xattn_layers pattern {pattern!r}; allowed {list(XATTN_PATTERNS)}")


@dataclass(frozen=True)
class VisionTowerConfig:
    """A ViT over square tiles: patch embedding, then `depth` encoder layers.

    `feature_layer` picks the hidden state the projector reads (LLaVA uses the second to
    last); `pooling=avg2x2` averages 2x2 neighbouring patch features, a quarter of the
    visual tokens per tile.
    """

    depth: int = 2
    width: int = 64
    heads: int = 4
    mlp_ratio: int = 2
    patch_size: int = 8
    tile_size: int = 32
    feature_layer: str = "last"
    pooling: str = "none"
    # Image-token positions: `learnable` (a trained table over the tile's patch grid) or
    # `sincos_2d` (fixed 2D sinusoidal over the patch's row and column, plus a fixed
    # sinusoidal code of the tile's slot, so that AnyRes tiles keep their place).
    pos_encoding: str = "learnable"

    @property
    def patches_per_tile(self) -> int:
        return (self.tile_size // self.patch_size) ** 2

    @property
    def tokens_per_tile(self) -> int:
        return self.patches_per_tile // (4 if self.pooling == "avg2x2" else 1)

    @property
    def layers_run(self) -> int:
        """Encoder layers actually computed (the last is skipped for `second_last`)."""
        return self.depth - (1 if self.feature_layer == "second_last" else 0)


@dataclass(frozen=True)
class LanguageModelConfig:
    """A causal decoder over the text sequence with image tokens spliced in."""

    depth: int = 2
    width: int = 96
    heads: int = 4
    mlp_ratio: int = 2


@dataclass(frozen=True)
class FusionConfig:
    """Where and how image features reach the language model.

    - `placement`: `early` (LLaVA: image tokens spliced into the LM sequence at
      `<image>`), `cross_attention` (Flamingo: image tokens stay outside the sequence;
      gated cross-attention blocks sit in front of the LM layers in `xattn_layers`), or
      `hybrid` (both).
    - `gating` of each cross-attention block: `none`, `tanh` (one zero-initialised
      scalar), `channel` (one per channel), `token` (tanh(alpha) * sigmoid(W h), an
      input-dependent gate from the text hidden state). Zero-initialised gates make a
      block start as the identity on the text path.
    - `image_attention` (early/hybrid): `full`; `image_no_text` (image tokens do not
      attend to text); `text_only` (from LM layer `text_only_from` on, text tokens no
      longer see image tokens).
    - `share_ratio` (early/hybrid): the fraction of LM feed-forward hidden units that
      image and text tokens share; the rest are modality-specific (1 = vanilla LLaVA,
      0 = a separate visual expert as in CogVLM/VLMo).
    """

    placement: str = "early"
    xattn_layers: tuple[int, ...] = ()
    gating: str = "none"
    image_attention: str = "full"
    text_only_from: int | None = None
    share_ratio: float = 1.0

    @property
    def early(self) -> bool:
        return self.placement in ("early", "hybrid")

    @property
    def cross(self) -> bool:
        return self.placement in ("cross_attention", "hybrid")


@dataclass(frozen=True)
class RecipeConfig:
    """How a candidate is trained, where a study searches or fixes it (the recipes of
    the LLaVA-NeXT article; `trainers/_fit.py` carries them out). The defaults are plain
    one-stage training.

    - `align_epochs`: stage 1 of progressive fusion, epochs of a CLIP-style contrastive
      (InfoNCE) loss that aligns the vision tower and projector with the text embedding
      before the task is tuned (0 = off).
    - `distill_weight`, `distill_temperature`: knowledge distillation from the study's
      teacher on answer-token logits; loss = (1 - w) * CE + w * T^2 * KL (0 = off).
    - `augment`: image augmentation (random resized crop, small rotation, colour
      jitter) and question paraphrase by templates, keeping answers true (no flip on
      left/right questions, no jitter on colour questions).
    - `filter_threshold`: data hygiene; after stage 1, drop training pairs whose
      image-text cosine similarity is below this (-1 = keep all; needs align_epochs).
    """

    align_epochs: int = 0
    distill_weight: float = 0.0
    distill_temperature: float = 2.0
    augment: bool = False
    filter_threshold: float = -1.0

    def problems(self) -> list[str]:
        out = []
        if self.align_epochs < 0:
            out.append(f"recipe.align_epochs={self.align_epochs}: must be >= 0")
        if not 0.0 <= self.distill_weight <= 1.0:
            out.append(f"recipe.distill_weight={self.distill_weight}: must be in [0, 1]")
        if not self.distill_temperature > 0:
            out.append(f"recipe.distill_temperature={self.distill_temperature}: must be > 0")
        if not -1.0 <= self.filter_threshold <= 1.0:
            out.append(f"recipe.filter_threshold={self.filter_threshold}: must be in [-1, 1]")
        if self.filter_threshold > -1.0 and self.align_epochs == 0:
            out.append(
                f"recipe.filter_threshold={self.filter_threshold} needs recipe.align_epochs > 0"
                " (the similarity comes from the stage-1 aligned model)"
            )
        return out


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
    # Feed-forward and projector activation. An exact GELU exports as Erf, which the
    # Hexagon NPU cannot run; gelu_tanh can. Part of the search for NPU targets.
    activation: str = "gelu"
    fusion: FusionConfig = field(default_factory=FusionConfig)
    quant: tuple[tuple[str, str], ...] = ()
    recipe: RecipeConfig = field(default_factory=RecipeConfig)

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
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation={self.activation!r}: allowed {list(ACTIVATIONS)}")
        if self.projector_depth not in (1, 2):
            problems.append(f"projector_depth={self.projector_depth}: allowed 1 or 2")
        problems += self._fusion_problems()
        problems += self.recipe.problems()
        v = self.vision
        for key, value, allowed in (
            ("vision.feature_layer", v.feature_layer, FEATURE_LAYERS),
            ("vision.pooling", v.pooling, POOLINGS),
            ("vision.pos_encoding", v.pos_encoding, POS_ENCODINGS),
        ):
            if value not in allowed:
                problems.append(f"{key}={value!r}: allowed {list(allowed)}")
        if v.feature_layer == "second_last" and v.depth < 2:
            problems.append("vision.feature_layer=second_last needs vision.depth >= 2")
        if v.pooling == "avg2x2" and (v.tile_size // v.patch_size) % 2:
            problems.append(
                f"vision.pooling=avg2x2 needs an even patch grid, got {v.tile_size // v.patch_size}"
            )
        if problems:
            raise ValueError("invalid ArchConfig: " + "; ".join(problems))

    def _fusion_problems(self) -> list[str]:
        f, depth = self.fusion, self.lm.depth
        problems = []
        for key, value, allowed in (
            ("fusion.placement", f.placement, PLACEMENTS),
            ("fusion.gating", f.gating, GATINGS),
            ("fusion.image_attention", f.image_attention, IMAGE_ATTENTION),
        ):
            if value not in allowed:
                problems.append(f"{key}={value!r}: allowed {list(allowed)}")
        if f.cross and not f.xattn_layers:
            problems.append(f"fusion.placement={f.placement!r} needs xattn_layers")
        if not f.cross and (f.xattn_layers or f.gating != "none"):
            problems.append("fusion.xattn_layers/gating apply only to cross_attention or hybrid")
        if any(not 0 <= i < depth for i in f.xattn_layers) or len(set(f.xattn_layers)) != len(
            f.xattn_layers
        ):
            problems.append(
                f"fusion.xattn_layers={list(f.xattn_layers)}: distinct indices in [0, {depth - 1}] (lm.depth={depth})"
            )
        if f.image_attention == "text_only":
            if f.text_only_from is None or not 1 <= f.text_only_from < depth:
                problems.append(
                    f"fusion.text_only_from={f.text_only_from}: must be in [1, {depth - 1}] (lm.depth={depth})"
                )
        elif f.text_only_from is not None:
            problems.append("fusion.text_only_from applies only to image_attention=text_only")
        if not f.early and (f.image_attention != "full" or f.share_ratio != 1.0):
            problems.append("fusion.image_attention/share_ratio apply only to early or hybrid")
        if not 0.0 <= f.share_ratio <= 1.0:
            problems.append(f"fusion.share_ratio={f.share_ratio}: must be in [0, 1]")
        return problems

    @property
    def max_tiles(self) -> int:
        """Tiles per image including the global view (the model's static tile count)."""
        return 1 + max(r * c for r, c in self.grid_pinpoints)

    @property
    def image_tokens(self) -> int:
        """Visual tokens the language model sees per image (padded tiles included)."""
        return self.max_tiles * self.vision.tokens_per_tile

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
        if "fusion" in kwargs:
            fusion = dict(kwargs["fusion"])
            fusion["xattn_layers"] = tuple(fusion.get("xattn_layers", ()))
            if "share_ratio" in fusion:
                fusion["share_ratio"] = float(fusion["share_ratio"])
            kwargs["fusion"] = FusionConfig(**fusion)
        if "grid_pinpoints" in kwargs:
            kwargs["grid_pinpoints"] = tuple(tuple(g) for g in kwargs["grid_pinpoints"])
        if "recipe" in kwargs:
            recipe = dict(kwargs["recipe"])
            for key in ("distill_weight", "distill_temperature", "filter_threshold"):
                if key in recipe:
                    recipe[key] = float(recipe[key])
            kwargs["recipe"] = RecipeConfig(**recipe)
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
        """Hash of what training produces weights for: architecture and recipe, not the
        quantization."""
        d = self.to_dict()
        d.pop("quant")
        return _hash(d)

    @property
    def graph_id(self) -> str:
        """Hash of what the inference graph depends on: the architecture without recipe
        or quantization (equal to `weights_id` under the default recipe). Latency and
        size are cached by it: how a model was trained does not change its speed."""
        d = self.to_dict()
        d.pop("quant")
        d.pop("recipe")
        return _hash(d)


def _hash(data: dict[str, Any]) -> str:
    # Fields added after the first release enter the hash only away from their default,
    # so ids of earlier studies, caches and tables stay valid.
    data = dict(data)
    if data.get("recipe") == dataclasses.asdict(RecipeConfig()):
        data.pop("recipe")
    vision = data.get("vision")
    if isinstance(vision, dict) and vision.get("pos_encoding") == "learnable":
        data["vision"] = {k: v for k, v in vision.items() if k != "pos_encoding"}
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]
