"""The study's Optuna sampler, built the same way by `search` and by tabular replay."""

from __future__ import annotations

import optuna

from ._config import StudySpec


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """The study's Optuna sampler, seeded. The GP sampler needs torch (a dependency) and
    starts from `population_size` random trials; its categorical space is the whole
    search space's one-hot encoding. Constraints reach every sampler as the trials'
    constraint values (`Trial.set_constraint`): nsga2, nsga3, tpe and gp rank infeasible
    trials behind feasible ones; random ignores them."""
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=spec.population_size, seed=spec.seed)
    if spec.sampler == "nsga3":
        return optuna.samplers.NSGAIIISampler(population_size=spec.population_size, seed=spec.seed)
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=spec.seed, multivariate=True)
    if spec.sampler == "gp":
        return optuna.samplers.GPSampler(seed=spec.seed, n_startup_trials=spec.population_size)
    return optuna.samplers.RandomSampler(seed=spec.seed)
