"""`SearchSpace`: which `ArchConfig`s a study may propose, read from a YAML file.

The YAML mirrors `ArchConfig`: every leaf is a list of choices (a one-element list fixes
the value). Each choice is checked against the annotation of the `ArchConfig` field it
sets (its `Literal` values, its bounds), so the space and the config cannot disagree.
`grid_pinpoints` maps a name to a list of [rows, cols] grids, so samplers see a
categorical over names. Sampling is define-by-run on an Optuna trial; parameter names
are the dotted paths (`lm.width`, `fusion.gating`), plus `quant.<profile>` per profile.

Conditional parameters are sampled only where they apply, always under the same name and
with the same choices (so Optuna's samplers see one consistent distribution per name):
`fusion.xattn_layers` and `fusion.gating` only with cross-attention (cross_attention,
hybrid); `fusion.image_attention` and `fusion.share_ratio` only with early fusion (early,
hybrid); `fusion.text_only_from` only with `image_attention=text_only`.

A `baseline` block names one value per parameter: the LLaVA-NeXT recipe that every study
runs first as its reference trial. Where an override narrows a dimension so that the
baseline's value is no longer a choice, that parameter is sampled instead (the driver
says which).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import is_pydantic_dataclass
from pydantic.fields import FieldInfo

from common import field_infos, problems

from ._arch import ArchConfig, XattnPattern, xattn_layer_set

CONF_DIR = Path(__file__).parent / "conf" / "search_space"

# The ArchConfig fields that are not lists of choices: grid_pinpoints are named sets
# (below), quant is sampled per profile from the profile's schemes.
_NOT_LEAVES = ("grid_pinpoints", "quant", "backbone")
# Where the space's choices differ from the field's values: the space names the
# cross-attention layers by pattern, the ArchConfig holds the indices (xattn_layer_set).
_CHOICE_TYPES: dict[str, Any] = {"fusion.xattn_layers": XattnPattern}
# Leaves added after the first release: a space that leaves them out fixes them at the
# field's default.
_ADDED_LATER = (
    "vision.pos_encoding",
    "vision.intermediate",
    "lm.intermediate",
    "lm.kv_heads",
    "lm.drop_layers",
    *(f"recipe.{f.name}" for f in dataclasses.fields(ArchConfig().recipe)),
    *(f"tokens.{f.name}" for f in dataclasses.fields(ArchConfig().tokens)),
    *(f"adapt.{f.name}" for f in dataclasses.fields(ArchConfig().adapt)),
)
_CROSS_ONLY = ("fusion.xattn_layers", "fusion.gating")
_EARLY_ONLY = ("fusion.image_attention", "fusion.share_ratio")
_CONDITIONAL = (*_CROSS_ONLY, *_EARLY_ONLY, "fusion.text_only_from")
# Choices are checked strictly: YAML's 3 is not "3", and true is not 1.
_STRICT = ConfigDict(strict=True)


def _leaf_types() -> dict[str, Any]:
    """Dotted leaf -> the annotation (choices, bounds) of the ArchConfig field it sets."""
    out: dict[str, Any] = {}

    def leaf(info: FieldInfo) -> Any:
        annotation = info.annotation
        # A choice is a value, never the "not set" None of an optional field.
        args = getattr(annotation, "__args__", ())
        if type(None) in args:
            (annotation,) = [a for a in args if a is not type(None)]
        return Annotated[(annotation, *info.metadata)] if info.metadata else annotation

    for name, info in field_infos(ArchConfig).items():
        if name in _NOT_LEAVES:
            continue
        section = info.annotation
        if isinstance(section, type) and is_pydantic_dataclass(section):
            for sub, sub_info in field_infos(section).items():
                out[f"{name}.{sub}"] = leaf(sub_info)
        else:
            out[name] = leaf(info)
    return {**out, **_CHOICE_TYPES}


_LEAVES = _leaf_types()
_CHECKS = {path: TypeAdapter(annotation, config=_STRICT) for path, annotation in _LEAVES.items()}
_SECTIONS = tuple(sorted({k.split(".")[0] for k in _LEAVES if "." in k}))
_DEFAULTS: dict[str, Any] = {
    f"{section}.{key}": value
    for section, values in ArchConfig().to_dict().items()
    if isinstance(values, dict)
    for key, value in values.items()
}


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
    baseline: Mapping[str, Any]  # parameter name -> value, for the reference trial

    kind = "scratch"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, name: str) -> Any:
        """Validate a parsed space; raises `SearchSpaceError` naming the first bad key.
        A space with `kind: pretrained` is a `PretrainedSpace` (cutting a checkpoint)."""
        where = f"search_space {name!r}"
        if not isinstance(data, Mapping):
            raise SearchSpaceError(f"{where}: expected a mapping, got {type(data).__name__}")
        if data.get("kind", "scratch") == "pretrained":
            from ._pretrained import PretrainedSpace

            return PretrainedSpace.from_mapping(data, name=name)
        if data.get("kind", "scratch") != "scratch":
            raise SearchSpaceError(
                f"{where}: kind={data['kind']!r}; allowed 'scratch' or 'pretrained'"
            )
        data = {k: v for k, v in data.items() if k != "kind"}
        top = sorted({k.split(".")[0] for k in _LEAVES} | {"grid_pinpoints", "baseline"})
        choices: dict[str, tuple[Any, ...]] = {}
        for key, value in data.items():
            if key not in top:
                raise SearchSpaceError(f"{where}: unknown key {key!r}; allowed {top}")
            if key in _SECTIONS:
                if not isinstance(value, Mapping):
                    raise SearchSpaceError(f"{where}: {key} must be a mapping, got {value!r}")
                for sub, leaf in value.items():
                    path = f"{key}.{sub}"
                    if path not in _LEAVES:
                        allowed = sorted(
                            k.split(".")[1] for k in _LEAVES if k.startswith(f"{key}.")
                        )
                        raise SearchSpaceError(
                            f"{where}: unknown key {path!r}; allowed under {key}: {allowed}"
                        )
                    choices[path] = _leaf(where, path, leaf)
            elif key in _LEAVES:
                choices[key] = _leaf(where, key, value)
        for key in _ADDED_LATER:
            choices.setdefault(key, (_DEFAULTS[key],))
        missing = sorted(set(_LEAVES) - set(choices))
        if missing:
            raise SearchSpaceError(f"{where}: missing keys {missing}; give each a list of choices")
        _check_combinations(where, choices)
        pinpoints = _pinpoints(where, data.get("grid_pinpoints"))
        space = cls(name=name, choices=choices, pinpoint_sets=pinpoints, baseline={})
        baseline = data.get("baseline")
        if baseline is None:
            raise SearchSpaceError(
                f"{where}: missing 'baseline' (one value per parameter, the reference trial)"
            )
        return cls(
            name=name,
            choices=choices,
            pinpoint_sets=pinpoints,
            baseline=space._check_baseline(where, baseline),
        )

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
        values: dict[str, Any] = {}

        def suggest(key: str) -> Any:
            values[key] = trial.suggest_categorical(key, list(self.choices[key]))
            return values[key]

        for key in self.choices:
            if key not in _CONDITIONAL:
                suggest(key)
        placement = values["fusion.placement"]
        if placement in ("cross_attention", "hybrid"):
            for key in _CROSS_ONLY:
                suggest(key)
        if placement in ("early", "hybrid"):
            for key in _EARLY_ONLY:
                suggest(key)
            if values["fusion.image_attention"] == "text_only":
                suggest("fusion.text_only_from")
        values["grid_pinpoints"] = trial.suggest_categorical(
            "grid_pinpoints", list(self.pinpoint_sets)
        )
        for profile, schemes in sorted(quant_schemes.items()):
            values[f"quant.{profile}"] = trial.suggest_categorical(
                f"quant.{profile}", list(schemes)
            )
        return self.to_arch(values)

    def grid(self, quant_schemes: Mapping[str, tuple[str, ...]]) -> list[dict[str, Any]]:
        """Every parameter set `sample` can propose, conditionals included (each branch
        of a conditional expands only where it applies), in a fixed order.

        Enumerated by replaying `sample` on a trial that follows a path of choice indices
        and queues the sibling paths (depth-first, in choice order), so the grid cannot drift from what `sample` does.
        """
        found: list[dict[str, Any]] = []
        paths: list[list[int]] = [[]]
        while paths:
            trial = _PathTrial(paths.pop())
            self.sample(trial, quant_schemes)
            found.append(trial.params)
            paths.extend(trial.siblings)  # last pushed = next in lexicographic order
        return found

    def to_arch(self, values: Mapping[str, Any]) -> ArchConfig:
        """Build the `ArchConfig` for sampled parameter values (as named in `sample`);
        conditional parameters left out take the field's default (their value where they
        do not apply)."""
        arch: dict[str, Any] = {name: {} for name in (*_SECTIONS, "quant")}
        for key, value in values.items():
            section, dot, sub = key.partition(".")
            if dot:
                arch.setdefault(section, {})[sub] = value
            elif key != "grid_pinpoints":
                arch[key] = value
        pattern = arch["fusion"].pop("xattn_layers", None)
        if pattern is not None:
            depth = arch["lm"].get("depth", _DEFAULTS["lm.depth"])
            arch["fusion"]["xattn_layers"] = xattn_layer_set(pattern, depth)
        arch["grid_pinpoints"] = self.pinpoint_sets[values["grid_pinpoints"]]
        return ArchConfig.from_dict(arch)

    def baseline_params(self, quant_schemes: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
        """The baseline as Optuna parameters (first legal scheme per profile); values
        outside the choices are left out, so the sampler picks them. A parameter added
        after the baseline was written (`_ADDED_LATER`) takes its default where that is
        a choice: trial 0 stays the reference even where a study widens such a choice."""
        outside = self.baseline_outside()
        kept = {k: v for k, v in self.baseline.items() if k not in outside}
        for key in _ADDED_LATER:
            if key not in self.baseline and _DEFAULTS[key] in self.choices[key]:
                kept[key] = _DEFAULTS[key]
        return {**kept, **{f"quant.{p}": s[0] for p, s in sorted(quant_schemes.items())}}

    def _check_baseline(self, where: str, baseline: Any) -> dict[str, Any]:
        if not isinstance(baseline, Mapping):
            raise SearchSpaceError(f"{where}: baseline must be a mapping parameter -> value")
        params = set(self.choices) | {"grid_pinpoints"}
        for key in baseline:
            if key not in params:
                raise SearchSpaceError(
                    f"{where}: baseline.{key} is not a parameter; allowed {sorted(params)}"
                )
        out = dict(baseline)
        if set(self.baseline_outside(out)) or not self._complete(out):
            return out  # partly sampled: cannot be checked as a whole
        try:
            self.to_arch(out)
        except ValueError as exc:
            raise SearchSpaceError(
                f"{where}: baseline is not a valid architecture: {exc}"
            ) from None
        return out

    def baseline_outside(self, baseline: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Baseline values not among the (possibly overridden) choices: left to the sampler."""
        baseline = self.baseline if baseline is None else baseline
        allowed = {**self.choices, "grid_pinpoints": tuple(self.pinpoint_sets)}
        return {k: v for k, v in baseline.items() if v not in allowed[k]}

    def _complete(self, values: Mapping[str, Any]) -> bool:
        """Every unconditional parameter has a value (later-added ones default)."""
        needed = {k for k in self.choices if k not in _CONDITIONAL and k not in _ADDED_LATER}
        return needed | {"grid_pinpoints"} <= set(values)


class _PathTrial:
    """A `TrialLike` that takes the choice indices in `path`, then the first choice of
    every later parameter, recording the paths to the other choices it passed by."""

    def __init__(self, path: list[int]) -> None:
        self.path = path
        self.taken: list[int] = []
        self.params: dict[str, Any] = {}
        self.siblings: list[list[int]] = []

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        depth = len(self.taken)
        if depth < len(self.path):
            index = self.path[depth]
        else:
            index = 0
            self.siblings += [[*self.taken, i] for i in range(len(choices) - 1, 0, -1)]
        self.taken.append(index)
        self.params[name] = choices[index]
        return choices[index]


def _leaf(where: str, path: str, value: Any) -> tuple[Any, ...]:
    """Check each choice against the ArchConfig field's annotation."""
    if not isinstance(value, list):
        raise SearchSpaceError(f"{where}: {path}={value!r} must be a list of choices")
    if not value:
        raise SearchSpaceError(f"{where}: {path} is an empty choice list; give at least one value")
    out = []
    for v in value:
        try:
            out.append(_CHECKS[path].validate_python(v))
        except ValidationError as exc:
            (problem, *_) = problems(exc, _LEAVES[path])
            if problem.span:
                rule = f"outside {problem.span}"
            elif problem.kind == "choice":
                rule = f"not allowed; {problem.rule}"
            else:
                rule = problem.rule
            raise SearchSpaceError(f"{where}: {path} choice {v!r} {rule}") from None
    if len(set(out)) != len(out):
        raise SearchSpaceError(f"{where}: {path}={value} repeats a choice")
    return tuple(out)


def _check_combinations(where: str, choices: Mapping[str, tuple[Any, ...]]) -> None:
    for tower in ("vision", "lm"):
        for width in choices[f"{tower}.width"]:
            for heads in choices[f"{tower}.heads"]:
                if width % heads:
                    raise SearchSpaceError(
                        f"{where}: {tower}.heads={heads} does not divide {tower}.width={width};"
                        " every heads choice must divide every width choice"
                    )
    min_depth = min(choices["lm.depth"])
    if "text_only" in choices["fusion.image_attention"]:
        for k in choices["fusion.text_only_from"]:
            if not 1 <= k < min_depth:
                raise SearchSpaceError(
                    f"{where}: fusion.text_only_from={k} is beyond lm.depth={min_depth} (the smallest"
                    f" depth choice); allowed layer indices 1..{min_depth - 1}"
                )
    if "second_last" in choices["vision.feature_layer"] and min(choices["vision.depth"]) < 2:
        raise SearchSpaceError(
            f"{where}: vision.feature_layer=second_last needs vision.depth >= 2 for every depth choice,"
            f" got depth choices {list(choices['vision.depth'])}"
        )
    if max(choices["recipe.filter_threshold"]) > -1.0 and min(choices["recipe.align_epochs"]) == 0:
        raise SearchSpaceError(
            f"{where}: recipe.filter_threshold choices {list(choices['recipe.filter_threshold'])}"
            " filter with the stage-1 aligned model: every recipe.align_epochs choice must be"
            f" > 0, got {list(choices['recipe.align_epochs'])}"
        )


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
