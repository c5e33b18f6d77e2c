"""`ArchConfig`: one candidate of the LLaVA-NeXT-style model family, as a frozen value."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import field
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from common import CONFIG, allowed_text, checked, choices

_C = TypeVar("_C")

# Closed choice sets: `choices(Placement)` gives the values for messages and sampling.
Placement = Literal["early", "cross_attention", "hybrid"]
Gating = Literal["none", "tanh", "channel", "token"]
ImageAttention = Literal["full", "image_no_text", "text_only"]
# The search space names the cross-attention layers by pattern; `xattn_layer_set` turns
# a pattern into the layer indices an `ArchConfig` holds.
XattnPattern = Literal["all", "every_2nd", "lower_half", "upper_half"]
FeatureLayer = Literal["last", "second_last"]
Pooling = Literal["none", "avg2x2"]
Activation = Literal["gelu", "gelu_tanh"]
PosEncoding = Literal["learnable", "sincos_2d"]
Positive = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]

_INVALID = "invalid ArchConfig: "


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
    raise ValueError(
        f"xattn_layers pattern {pattern!r}; allowed {allowed_text(choices(XattnPattern))}"
    )


@checked(ValueError, where="vision", intro=_INVALID)
@dataclass(frozen=True, config=CONFIG)
class VisionTowerConfig:
    """A ViT over square tiles: patch embedding, then `depth` encoder layers.

    `feature_layer` picks the hidden state the projector reads (LLaVA uses the second to
    last); `pooling=avg2x2` averages 2x2 neighbouring patch features, a quarter of the
    visual tokens per tile.
    """

    depth: Positive = 2
    width: Positive = 64
    heads: Positive = 4
    mlp_ratio: Positive = 2
    patch_size: Positive = 8
    tile_size: Positive = 32
    feature_layer: FeatureLayer = "last"
    pooling: Pooling = "none"
    # Image-token positions: `learnable` (a trained table over the tile's patch grid) or
    # `sincos_2d` (fixed 2D sinusoidal over the patch's row and column, frozen).
    pos_encoding: PosEncoding = "learnable"
    # Feed-forward hidden size where it is not `mlp_ratio * width` (a checkpoint's own).
    intermediate: Positive | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = _heads_problems("vision", self.width, self.heads)
        if self.tile_size % self.patch_size:
            problems.append(
                f"vision.patch_size={self.patch_size} does not divide"
                f" vision.tile_size={self.tile_size}"
            )
        elif self.pooling == "avg2x2" and (self.tile_size // self.patch_size) % 2:
            problems.append(
                "vision.pooling=avg2x2 needs an even patch grid,"
                f" got {self.tile_size // self.patch_size}"
            )
        if self.feature_layer == "second_last" and self.depth < 2:
            problems.append("vision.feature_layer=second_last needs vision.depth >= 2")
        return _raise_any(self, problems)

    @property
    def patches_per_tile(self) -> int:
        return (self.tile_size // self.patch_size) ** 2

    @property
    def tokens_per_tile(self) -> int:
        return self.patches_per_tile // (4 if self.pooling == "avg2x2" else 1)

    @property
    def hidden(self) -> int:
        return self.intermediate or self.mlp_ratio * self.width

    @property
    def layers_run(self) -> int:
        """Encoder layers actually computed (the last is skipped for `second_last`)."""
        return self.depth - (1 if self.feature_layer == "second_last" else 0)


@checked(ValueError, where="lm", intro=_INVALID)
@dataclass(frozen=True, config=CONFIG)
class LanguageModelConfig:
    """A causal decoder over the text sequence with image tokens spliced in.

    For a candidate cut from a checkpoint, `depth` counts the layers kept: the
    checkpoint's `depth + drop_layers` minus the `drop_layers` of lowest block influence
    (ShortGPT), chosen on calibration rows when the candidate is built.
    """

    depth: Positive = 2
    width: Positive = 96
    heads: Positive = 4
    mlp_ratio: Positive = 2
    intermediate: Positive | None = None  # where it is not mlp_ratio * width
    kv_heads: Positive | None = None  # grouped-query attention; None: = heads
    drop_layers: Annotated[int, Field(ge=0)] = 0

    @property
    def hidden(self) -> int:
        return self.intermediate or self.mlp_ratio * self.width

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        return _raise_any(self, _heads_problems("lm", self.width, self.heads))


@checked(ValueError, where="fusion", intro=_INVALID)
@dataclass(frozen=True, config=CONFIG)
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

    The defaults of the cross-only and early-only fields are their values where they do
    not apply. Layer indices are checked against `lm.depth` by `ArchConfig`.
    """

    placement: Placement = "early"
    xattn_layers: tuple[Annotated[int, Field(ge=0)], ...] = ()
    gating: Gating = "none"
    image_attention: ImageAttention = "full"
    text_only_from: Positive | None = None
    share_ratio: Fraction = 1.0

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = []
        if self.cross and not self.xattn_layers:
            problems.append(f"fusion.placement={self.placement!r} needs xattn_layers")
        if not self.cross and (self.xattn_layers or self.gating != "none"):
            problems.append("fusion.xattn_layers/gating apply only to cross_attention or hybrid")
        if len(set(self.xattn_layers)) != len(self.xattn_layers):
            problems.append(f"fusion.xattn_layers={list(self.xattn_layers)}: repeats a layer")
        if self.image_attention == "text_only" and self.text_only_from is None:
            problems.append("fusion.image_attention=text_only needs fusion.text_only_from")
        if self.image_attention != "text_only" and self.text_only_from is not None:
            problems.append("fusion.text_only_from applies only to image_attention=text_only")
        if not self.early and (self.image_attention != "full" or self.share_ratio != 1.0):
            problems.append("fusion.image_attention/share_ratio apply only to early or hybrid")
        return _raise_any(self, problems)

    @property
    def early(self) -> bool:
        return self.placement in ("early", "hybrid")

    @property
    def cross(self) -> bool:
        return self.placement in ("cross_attention", "hybrid")


@checked(ValueError, where="recipe", intro=_INVALID)
@dataclass(frozen=True, config=CONFIG)
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

    align_epochs: Annotated[int, Field(ge=0)] = 0
    distill_weight: Fraction = 0.0
    distill_temperature: Annotated[float, Field(gt=0.0)] = 2.0
    augment: bool = False
    filter_threshold: Annotated[float, Field(ge=-1.0, le=1.0)] = -1.0

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = []
        if self.filter_threshold > -1.0 and self.align_epochs == 0:
            problems.append(
                f"recipe.filter_threshold={self.filter_threshold} needs recipe.align_epochs > 0"
                " (the similarity comes from the stage-1 aligned model)"
            )
        return _raise_any(self, problems)


@checked(ValueError, where="tokens", intro=_INVALID)
@dataclass(frozen=True, config=CONFIG)
class TokensConfig:
    """Visual-token pruning inside the LM, training-free (FastV, Chen et al. 2024): after
    LM layer `prune_layer`, keep the `1 - prune_ratio` share of each image's tokens that
    the last prompt token attends to most (0 = off)."""

    prune_layer: Positive = 2
    prune_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0


@checked(ValueError, where="adapt", intro=_INVALID)
@dataclass(frozen=True, config=CONFIG)
class AdaptConfig:
    """How a candidate cut from a checkpoint is fine-tuned: `lora_rank` 0 trains nothing
    of the checkpoint (training-free, or only the new adapters), else LoRA (peft) of that
    rank on the LM's attention and MLP projections, merged before export."""

    lora_rank: Annotated[int, Field(ge=0)] = 0


@checked(ValueError, intro=_INVALID)
@dataclass(frozen=True, config=CONFIG)
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
    grid_pinpoints: Annotated[tuple[tuple[Positive, Positive], ...], Field(min_length=1)] = (
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
    )
    projector_depth: Literal[1, 2] = 2  # 1 = linear (LLaVA-1), 2 = MLP (LLaVA-1.5/NeXT)
    # Feed-forward and projector activation. An exact GELU exports as Erf, which the
    # Hexagon NPU cannot run; gelu_tanh can. Part of the search for NPU targets.
    activation: Activation = "gelu"
    fusion: FusionConfig = field(default_factory=FusionConfig)
    quant: tuple[tuple[str, str], ...] = ()
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    # The checkpoint a candidate is cut from (`backbone_id`: a hash of its config and
    # weights), None for a candidate trained from scratch.
    backbone: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        f, depth = self.fusion, self.lm.depth
        problems = []
        if any(i >= depth for i in f.xattn_layers):
            problems.append(
                f"fusion.xattn_layers={list(f.xattn_layers)}: indices must be in"
                f" [0, {depth - 1}] (lm.depth={depth})"
            )
        if self.tokens.prune_ratio > 0 and self.tokens.prune_layer >= depth:
            problems.append(
                f"tokens.prune_layer={self.tokens.prune_layer}: must be < lm.depth={depth}"
            )
        if self.adapt.lora_rank and self.backbone is None:
            problems.append("adapt.lora_rank applies to a candidate cut from a checkpoint")
        if f.text_only_from is not None and f.text_only_from >= depth:
            problems.append(
                f"fusion.text_only_from={f.text_only_from}: must be in [1, {depth - 1}]"
                f" (lm.depth={depth})"
            )
        return _raise_any(self, problems)

    @property
    def max_tiles(self) -> int:
        """Tiles per image including the global view (the model's static tile count)."""
        return 1 + max(r * c for r, c in self.grid_pinpoints)

    @property
    def image_tokens(self) -> int:
        """Tile features the vision tower computes per image (`max_tiles` tiles, padding
        tiles included): the tower's static workload. How many of them reach the LM
        depends on the image's size (LLaVA-NeXT's unpadding): `image_tokens_max`, and
        the trial's `image_tokens` metric."""
        return self.max_tiles * self.vision.tokens_per_tile

    @property
    def image_tokens_max(self) -> int:
        """The most visual tokens any image gives the LM (base tile, largest grid, a
        newline per grid row)."""
        from ._packing import max_image_tokens

        return max_image_tokens(self)

    def quant_for(self, profile: str) -> str:
        return dict(self.quant).get(profile, "fp32")

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON/YAML-safe dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchConfig:
        """The inverse of `to_dict`; `quant` may also be a mapping profile -> scheme."""
        kwargs = dict(data)
        if "quant" in kwargs:
            q = kwargs["quant"]
            items = q.items() if isinstance(q, Mapping) else q
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


def _heads_problems(tower: str, width: int, heads: int) -> list[str]:
    if width % heads:
        return [f"{tower}.heads={heads} does not divide {tower}.width={width}"]
    return []


def _raise_any(config: _C, problems: list[str]) -> _C:
    if problems:
        raise ValueError("; ".join(problems))
    return config


# (section, field, default) of fields added after the first release
_ADDED_LATER = (
    ("vision", "pos_encoding", "learnable"),
    ("vision", "intermediate", None),
    ("lm", "intermediate", None),
    ("lm", "kv_heads", None),
    ("lm", "drop_layers", 0),
)


def _hash(data: dict[str, Any]) -> str:
    # Fields added after the first release enter the hash only away from their default,
    # so ids of earlier studies, caches and tables stay valid.
    data = dict(data)
    if data.get("recipe") == dataclasses.asdict(RecipeConfig()):
        data.pop("recipe")
    for section, key, default in _ADDED_LATER:
        part = data.get(section)
        if isinstance(part, dict) and part.get(key) == default:
            data[section] = {k: v for k, v in part.items() if k != key}
    for name, section_default in (("tokens", TokensConfig()), ("adapt", AdaptConfig())):
        if data.get(name) == dataclasses.asdict(section_default):
            data.pop(name)
    if data.get("backbone") is None:
        data.pop("backbone", None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]
