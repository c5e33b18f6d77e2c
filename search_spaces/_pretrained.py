"""`PretrainedSpace`: the ways to cut a LLaVA-NeXT checkpoint down, read from YAML.

The YAML (`conf/search_space/llava_next_pretrained.yaml`) names the knobs, each a list of
choices; `bind(backbone)` checks every choice against the checkpoint (`backbone.path`)
before any trial, and `to_arch` turns sampled values into the `ArchConfig` of the cut
candidate: the checkpoint's own description (`backbone_arch`) with the knobs applied.

- `tokens.max_tiles`: `all`, or the most tiles (base view included) an image may get:
  the checkpoint's AnyRes grids with at most that many (processor and config together).
- `tokens.pooling`: `none` or `avg2x2` (a 2x2 average of each tile's patch features).
- `tokens.prune_ratio`, `tokens.prune_layer`: FastV, training-free (`TokensConfig`).
- `vision.feature_layer`: the tower's hidden state the projector reads, counted as
  transformers counts (`-1` the last layer's output, `-2` the one before, ...; the
  layers after it are removed).
- `lm.drop_layers`: how many LM layers to remove, those of lowest block influence
  (ShortGPT), measured on calibration rows when the candidate is built.
- `adapt.lora_rank`: 0 (nothing of the checkpoint trains) or a LoRA rank.
- `fusion.placement` (`early` as the checkpoint is, `hybrid`, `cross_attention`),
  `fusion.xattn_layers`, `fusion.gating`, `fusion.share_ratio`: adapters installed into
  the LM (zero-initialised gates; an image FFN initialised from the shared one).

Trial 0 is the checkpoint unchanged: the `baseline` holds the value of each knob that
changes nothing, checked to be among the choices.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from common import allowed_text
from common import choices as literal_choices

from ._arch import ArchConfig, FusionConfig, TokensConfig, XattnPattern, xattn_layer_set
from ._backbone import Backbone
from ._space import SearchSpaceError, TrialLike, _PathTrial

KNOBS = (
    "tokens.max_tiles",
    "tokens.pooling",
    "tokens.prune_ratio",
    "tokens.prune_layer",
    "vision.feature_layer",
    "lm.drop_layers",
    "adapt.lora_rank",
    "fusion.placement",
    "fusion.xattn_layers",
    "fusion.gating",
    "fusion.share_ratio",
)
_CROSS_ONLY = ("fusion.xattn_layers", "fusion.gating")
_CONDITIONAL = (*_CROSS_ONLY, "fusion.share_ratio", "tokens.prune_layer")
_UNCHANGED = {
    "tokens.max_tiles": "all",
    "tokens.pooling": "none",
    "tokens.prune_ratio": 0.0,
    "lm.drop_layers": 0,
    "adapt.lora_rank": 0,
    "fusion.placement": "early",
    # conditional (on placement), but it applies to early fusion, so trial 0 names it:
    # a knob missing from the enqueued baseline would be sampled
    "fusion.share_ratio": 1.0,
}


@dataclass(frozen=True)
class PretrainedSpace:
    name: str
    choices: Mapping[str, tuple[Any, ...]]
    backbone: Backbone | None = None
    baseline: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "pretrained"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, name: str) -> PretrainedSpace:
        where = f"search_space {name!r}"
        choices: dict[str, tuple[Any, ...]] = {}
        for section, values in data.items():
            if section in ("kind", "baseline"):
                continue
            if not isinstance(values, Mapping):
                raise SearchSpaceError(f"{where}: {section} must be a mapping, got {values!r}")
            for sub, leaf in values.items():
                key = f"{section}.{sub}"
                if key not in KNOBS:
                    raise SearchSpaceError(f"{where}: unknown key {key!r}; allowed {list(KNOBS)}")
                if not isinstance(leaf, list) or not leaf:
                    raise SearchSpaceError(f"{where}: {key} must be a non-empty list of choices")
                choices[key] = tuple(leaf)
        missing = [k for k in KNOBS if k not in choices]
        if missing:
            raise SearchSpaceError(f"{where}: missing keys {missing}; give each a list of choices")
        _check_static(where, choices)
        return cls(name=name, choices=choices)

    @classmethod
    def load(cls, path: Path) -> PretrainedSpace:
        return cls.from_mapping(yaml.safe_load(path.read_text()) or {}, name=path.stem)

    # -- bound to a checkpoint ------------------------------------------------------
    def bind(self, backbone: Backbone) -> PretrainedSpace:
        """Check every choice against `backbone` and fix the baseline (the checkpoint
        unchanged); raises `SearchSpaceError` naming the first bad value."""
        where = f"search_space {self.name!r} on backbone.path={str(backbone.path)!r}"
        arch = backbone.arch
        most = arch.max_tiles
        for v in self.choices["tokens.max_tiles"]:
            if v != "all" and not (isinstance(v, int) and 2 <= v <= most):
                raise SearchSpaceError(
                    f"{where}: tokens.max_tiles={v!r}; allowed 'all' or 2..{most} (the"
                    " checkpoint's largest grid plus its base view)"
                )
        depth_v = _full_vision_depth(backbone)
        for v in self.choices["vision.feature_layer"]:
            if not (isinstance(v, int) and -depth_v <= v <= -1):
                raise SearchSpaceError(
                    f"{where}: vision.feature_layer={v!r}; allowed -1..-{depth_v} (the"
                    f" checkpoint's tower has {depth_v} layers)"
                )
        depth = arch.lm.depth
        for v in self.choices["lm.drop_layers"]:
            if not (isinstance(v, int) and 0 <= v <= depth - 2):
                raise SearchSpaceError(
                    f"{where}: lm.drop_layers={v!r}; allowed 0..{depth - 2} (of {depth} layers)"
                )
        least = depth - max(self.choices["lm.drop_layers"])
        for v in self.choices["tokens.prune_layer"]:
            if not (isinstance(v, int) and 1 <= v < least):
                raise SearchSpaceError(
                    f"{where}: tokens.prune_layer={v!r}; allowed 1..{least - 1} (fewer than"
                    " the LM layers left after lm.drop_layers)"
                )
        own = int(backbone.config.vision_feature_layer)
        baseline = {**_UNCHANGED, "vision.feature_layer": own}
        for key, value in baseline.items():
            if value not in self.choices[key]:
                raise SearchSpaceError(
                    f"{where}: {key} must offer {value!r}, the checkpoint unchanged (trial 0)"
                )
        bound = replace(self, backbone=backbone, baseline=baseline)
        for params in bound.grid({}):  # every combination must make a valid candidate
            try:
                bound.to_arch(params)
            except ValueError as exc:
                raise SearchSpaceError(f"{where}: {params} is no candidate: {exc}") from None
        return bound

    def sample(self, trial: TrialLike, quant_schemes: Mapping[str, tuple[str, ...]]) -> ArchConfig:
        return self.to_arch(self._sample_values(trial, quant_schemes))

    def grid(self, quant_schemes: Mapping[str, tuple[str, ...]]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        paths: list[list[int]] = [[]]
        while paths:
            trial = _PathTrial(paths.pop())
            self._sample_values(trial, quant_schemes)
            found.append(trial.params)
            paths.extend(trial.siblings)
        return found

    def _sample_values(
        self, trial: TrialLike, quant: Mapping[str, tuple[str, ...]]
    ) -> dict[str, Any]:
        """The knob values `trial` picks, conditionals only where they apply (what
        `sample` builds a candidate from and `grid` enumerates)."""
        values: dict[str, Any] = {}

        def suggest(key: str) -> None:
            values[key] = trial.suggest_categorical(key, list(self.choices[key]))

        for key in KNOBS:
            if key not in _CONDITIONAL:
                suggest(key)
        if values["tokens.prune_ratio"] > 0:
            suggest("tokens.prune_layer")
        if values["fusion.placement"] != "early":
            for key in _CROSS_ONLY:
                suggest(key)
        if values["fusion.placement"] != "cross_attention":
            suggest("fusion.share_ratio")
        for profile, schemes in sorted(quant.items()):
            values[f"quant.{profile}"] = trial.suggest_categorical(
                f"quant.{profile}", list(schemes)
            )
        return values

    def to_arch(self, values: Mapping[str, Any]) -> ArchConfig:
        """The candidate the knob `values` cut from the bound checkpoint."""
        if self.backbone is None:
            raise SearchSpaceError(f"search_space {self.name!r} needs backbone.path=DIR")
        arch = self.backbone.arch
        v = {**self.baseline, **values}
        grids = arch.grid_pinpoints
        if v["tokens.max_tiles"] != "all":
            grids = tuple((r, c) for r, c in grids if 1 + r * c <= v["tokens.max_tiles"])
            if not grids:
                raise ValueError(f"tokens.max_tiles={v['tokens.max_tiles']} leaves no AnyRes grid")
        full_v = _full_vision_depth(self.backbone)
        vision = replace(
            arch.vision,
            depth=full_v + 1 + int(v["vision.feature_layer"]),
            feature_layer="last",
            pooling=v["tokens.pooling"],
        )
        drop = int(v["lm.drop_layers"])
        lm = replace(arch.lm, depth=arch.lm.depth - drop, drop_layers=drop)
        placement = v["fusion.placement"]
        fusion_args: dict[str, Any] = {"placement": placement}
        if placement != "early":
            fusion_args["xattn_layers"] = xattn_layer_set(v["fusion.xattn_layers"], lm.depth)
            fusion_args["gating"] = v["fusion.gating"]
        if placement != "cross_attention":
            fusion_args["share_ratio"] = float(v.get("fusion.share_ratio", 1.0))
        fusion = FusionConfig(**fusion_args)
        ratio = float(v["tokens.prune_ratio"])
        tokens = TokensConfig(
            prune_layer=int(v.get("tokens.prune_layer", 2)) if ratio else 2, prune_ratio=ratio
        )
        quant = tuple(
            sorted((k.split(".", 1)[1], s) for k, s in v.items() if k.startswith("quant."))
        )
        return ArchConfig.from_dict(
            {
                **replace(
                    arch, vision=vision, lm=lm, grid_pinpoints=grids, fusion=fusion, tokens=tokens
                ).to_dict(),
                "adapt": {"lora_rank": int(v["adapt.lora_rank"])},
                "quant": quant,
            }
        )

    def baseline_params(self, quant_schemes: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
        return {**self.baseline, **{f"quant.{p}": s[0] for p, s in sorted(quant_schemes.items())}}

    def baseline_outside(self, baseline: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {}  # bind() refused a space whose choices leave the checkpoint out


def _full_vision_depth(backbone: Backbone) -> int:
    return int(backbone.config.vision_config.num_hidden_layers)


def _check_static(where: str, choices: Mapping[str, tuple[Any, ...]]) -> None:
    """What can be checked without the checkpoint."""
    allowed = {
        "tokens.pooling": ("none", "avg2x2"),
        "fusion.placement": ("early", "hybrid", "cross_attention"),
        "fusion.xattn_layers": literal_choices(XattnPattern),
        "fusion.gating": ("none", "tanh", "channel", "token"),
    }
    for key, ok in allowed.items():
        for v in choices[key]:
            if v not in ok:
                raise SearchSpaceError(f"{where}: {key}={v!r}; allowed {allowed_text(ok)}")
    for v in choices["tokens.prune_ratio"]:
        if not (isinstance(v, (int, float)) and 0 <= v < 1):
            raise SearchSpaceError(f"{where}: tokens.prune_ratio={v!r}; allowed 0 <= r < 1")
    for v in choices["fusion.share_ratio"]:
        if not (isinstance(v, (int, float)) and 0 <= v <= 1):
            raise SearchSpaceError(f"{where}: fusion.share_ratio={v!r}; allowed 0..1")
    for v in choices["adapt.lora_rank"]:
        if not (isinstance(v, int) and v >= 0):
            raise SearchSpaceError(f"{where}: adapt.lora_rank={v!r}; allowed 0 or a rank >= 1")
