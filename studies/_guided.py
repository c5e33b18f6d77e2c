"""Drawing candidates of a search space outside Optuna (the `auto` sampler in a search),
through the space's own `sample`, so that conditional parameters appear exactly where
they apply."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any


class GuidedTrial:
    """A `TrialLike` that takes `fixed` values where they are legal and draws the other
    parameters uniformly with `rng`; `params` records what was taken, `choices` what
    each parameter offered."""

    def __init__(self, rng: random.Random, fixed: Mapping[str, Any] | None = None) -> None:
        self.rng = rng
        self.fixed = dict(fixed or {})
        self.params: dict[str, Any] = {}
        self.choices: dict[str, tuple[Any, ...]] = {}

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        options = tuple(choices)
        self.choices[name] = options
        given = name in self.fixed and self.fixed[name] in options
        value = self.fixed[name] if given else self.rng.choice(options)
        self.params[name] = value
        return value


def space_choices(space: Any, quant: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[Any, ...]]:
    """Every parameter the space's `sample` can suggest, with its choices: the space's
    own choices (conditional ones included) and what one draw adds (AnyRes grid sets,
    the schemes per profile)."""
    draw = GuidedTrial(random.Random(0))
    space.sample(draw, quant)
    return {**{k: tuple(v) for k, v in space.choices.items()}, **draw.choices}


def complete_params(
    space: Any, quant: Mapping[str, tuple[str, ...]], params: Mapping[str, Any], rng: random.Random
) -> dict[str, Any]:
    """`params` as the space's `sample` would take them: given values kept where legal,
    the rest (a new draw when `params` is empty, conditional parameters a change calls
    for) drawn with `rng`, parameters that no longer apply dropped."""
    trial = GuidedTrial(rng, params)
    space.sample(trial, quant)
    return trial.params


def arch_of(space: Any, quant: Mapping[str, tuple[str, ...]], params: Mapping[str, Any]) -> Any:
    """The candidate (`ArchConfig`) of complete `params`."""
    return space.sample(GuidedTrial(random.Random(0), params), quant)
