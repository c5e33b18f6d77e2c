"""The study's Optuna sampler, built the same way by `search`, tabular replay and
`vlmnas replay`."""

from __future__ import annotations

import optuna

from ._config import StudySpec

SAMPLERS = ("nsga2", "nsga3", "tpe", "gp", "random")


def make_sampler(spec: StudySpec, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The study's Optuna sampler, seeded with `study.seed + offset` (`sampler_named`).
    A search passes the number of trials already in its store as `offset`, so that a
    resumed study (whose sampler's random state is not stored) does not repeat the
    proposals of its first run. `auto` chooses in the driver (`_auto.py`) and enqueues
    every parameter, so Optuna's own sampler is only a seeded random one there."""
    seed = spec.seed + offset
    if spec.sampler == "auto":
        return optuna.samplers.RandomSampler(seed=seed)
    return sampler_named(spec.sampler, seed=seed, population_size=spec.population_size)


def sampler_named(name: str, *, seed: int, population_size: int = 4) -> optuna.samplers.BaseSampler:
    """Sampler `name`, seeded. The GP sampler needs torch (a dependency) and starts from
    `population_size` random trials; its categorical space is the whole search space's
    one-hot encoding. Constraints reach every sampler as the trials' constraint values
    (`Trial.set_constraint`): nsga2, nsga3, tpe and gp rank infeasible trials behind
    feasible ones; random ignores them."""
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)
    if name == "nsga3":
        return optuna.samplers.NSGAIIISampler(population_size=population_size, seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=population_size)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler {name!r} unknown; allowed {list(SAMPLERS)}")
