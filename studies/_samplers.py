"""The study's Optuna sampler, built the same way by `search`, tabular replay and
`vlmnas replay`."""

from __future__ import annotations

import optuna

from ._config import StudySpec

SAMPLERS = ("nsga2", "nsga3", "tpe", "gp", "random")


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """The study's Optuna sampler, seeded (`sampler_named`)."""
    return sampler_named(spec.sampler, seed=spec.seed, population_size=spec.population_size)


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
