"""`SearchSpace`: which `ArchConfig`s a study may propose, read from a YAML file.

The YAML mirrors `ArchConfig`: every leaf is a list of choices (a one-element list fixes
the value). `grid_pinpoints` is a mapping from a name to a list of [rows, cols] grids, so
the sampler sees a categorical over names. Sampling is define-by-run on an Optuna trial;
parameter names are the dotted paths (`lm.width`), plus `quant.<profile>` per profile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from ._arch import FUSIONS, ArchConfig, LanguageModelConfig, VisionTowerConfig

CONF_DIR = Path(__file__).parent / "conf" / "search_space"

# Leaves of the YAML and the type of their choices.
_INT_LEAVES = {
    "vision.depth",
    "vision.width",
    "vision.heads",
    "vision.mlp_ratio",
    "vision.patch_size",
    "vision.tile_size",
    "lm.depth",
    "lm.width",
    "lm.heads",
    "lm.mlp_ratio",
    "projector_depth",
}
_STR_LEAVES = {"fusion"}
_SECTIONS = {"vision", "lm"}


class SearchSpaceError(ValueError):
    """A search-space definition that cannot be sampled; the message names key and value."""


class TrialLike(Protocol):
    """The part of `optuna.Trial` that sampling uses."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class SearchSpace:
    name: str
    choices: Mapping[str, tuple[Any, ...]]  # dotted key -> choices
    pinpoint_sets: Mapping[str, tuple[tuple[int, int], ...]]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, name: str) -> SearchSpace:
        """Validate a parsed space; raises `SearchSpaceError` naming the first bad key."""
        where = f"search_space {name!r}"
        if not isinstance(data, Mapping):
            raise SearchSpaceError(f"{where}: expected a mapping, got {type(data).__name__}")
        allowed_top = _SECTIONS | {k for k in _INT_LEAVES | _STR_LEAVES if "." not in k}
        allowed_top |= {"grid_pinpoints"}
        choices: dict[str, tuple[Any, ...]] = {}
        for key, value in data.items():
            if key not in allowed_top:
                raise SearchSpaceError(
                    f"{where}: unknown key {key!r}; allowed {sorted(allowed_top)}"
                )
            if key in _SECTIONS:
                if not isinstance(value, Mapping):
                    raise SearchSpaceError(f"{where}: {key} must be a mapping, got {value!r}")
                for sub, leaf in value.items():
                    path = f"{key}.{sub}"
                    if path not in _INT_LEAVES:
                        allowed = sorted(k.split(".")[1] for k in _INT_LEAVES if k.startswith(key))
                        raise SearchSpaceError(
                            f"{where}: unknown key {path!r}; allowed under {key}: {allowed}"
                        )
                    choices[path] = _leaf(where, path, leaf, int)
            elif key != "grid_pinpoints":
                choices[key] = _leaf(where, key, value, int if key in _INT_LEAVES else str)
        pinpoints = _pinpoints(where, data.get("grid_pinpoints"))
        for bad in set(choices.get("fusion", ())) - set(FUSIONS):
            raise SearchSpaceError(f"{where}: fusion={bad!r} not allowed; allowed {list(FUSIONS)}")
        for tower in _SECTIONS:
            for width in choices.get(f"{tower}.width", ()):
                for heads in choices.get(f"{tower}.heads", ()):
                    if width % heads:
                        raise SearchSpaceError(
                            f"{where}: {tower}.heads={heads} does not divide {tower}.width={width};"
                            " every heads choice must divide every width choice"
                        )
        return cls(name=name, choices=choices, pinpoint_sets=pinpoints)

    @classmethod
    def load(cls, name_or_path: str) -> SearchSpace:
        """Load `conf/search_space/<name>.yaml`, or a YAML file given by path."""
        path = Path(name_or_path)
        if not path.suffix:
            path = CONF_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in CONF_DIR.glob("*.yaml"))
            raise SearchSpaceError(f"search_space {name_or_path!r} not found; known: {known}")
        return cls.from_mapping(yaml.safe_load(path.read_text()) or {}, name=path.stem)

    def sample(self, trial: TrialLike, quant_schemes: Mapping[str, tuple[str, ...]]) -> ArchConfig:
        """Propose one `ArchConfig`; `quant_schemes` maps profile -> legal schemes."""
        values = {
            key: trial.suggest_categorical(key, list(opts)) for key, opts in self.choices.items()
        }
        pinpoint_name = trial.suggest_categorical("grid_pinpoints", list(self.pinpoint_sets))
        quant = {
            profile: trial.suggest_categorical(f"quant.{profile}", list(schemes))
            for profile, schemes in sorted(quant_schemes.items())
        }
        return self._to_arch(values, self.pinpoint_sets[pinpoint_name], quant)

    def _to_arch(
        self,
        values: Mapping[str, Any],
        pinpoints: tuple[tuple[int, int], ...],
        quant: Mapping[str, str],
    ) -> ArchConfig:
        vision = {k.split(".")[1]: v for k, v in values.items() if k.startswith("vision.")}
        lm = {k.split(".")[1]: v for k, v in values.items() if k.startswith("lm.")}
        top = {k: v for k, v in values.items() if "." not in k}
        return ArchConfig(
            vision=VisionTowerConfig(**vision),
            lm=LanguageModelConfig(**lm),
            grid_pinpoints=pinpoints,
            quant=tuple(sorted(quant.items())),
            **top,
        )


def _leaf(where: str, path: str, value: Any, kind: type) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise SearchSpaceError(f"{where}: {path}={value!r} must be a list of choices")
    if not value:
        raise SearchSpaceError(f"{where}: {path} is an empty choice list; give at least one value")
    for v in value:
        if not isinstance(v, kind) or isinstance(v, bool):
            raise SearchSpaceError(f"{where}: {path} choice {v!r} must be {kind.__name__}")
        if kind is int and v < 1:
            raise SearchSpaceError(f"{where}: {path} choice {v} must be >= 1")
    if len(set(value)) != len(value):
        raise SearchSpaceError(f"{where}: {path}={value} repeats a choice")
    return tuple(value)


def _pinpoints(where: str, value: Any) -> dict[str, tuple[tuple[int, int], ...]]:
    if not isinstance(value, Mapping) or not value:
        raise SearchSpaceError(
            f"{where}: grid_pinpoints={value!r} must be a non-empty mapping name -> [[rows, cols], ...]"
        )
    sets = {}
    for name, grids in value.items():
        ok = (
            isinstance(grids, list)
            and grids
            and all(
                isinstance(g, list)
                and len(g) == 2
                and all(isinstance(x, int) and x >= 1 for x in g)
                for g in grids
            )
        )
        if not ok:
            raise SearchSpaceError(
                f"{where}: grid_pinpoints.{name}={grids!r} must be a non-empty list of [rows, cols]"
                " with positive integers"
            )
        sets[str(name)] = tuple((r, c) for r, c in grids)
    return sets
