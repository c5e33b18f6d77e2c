"""The search: study config, trial ordering, the Ray Tune + Optuna driver, Pareto, export."""

from ._config import ConfigError, Objective, StudySpec, VlmnasConfig, load_config
from ._pareto import dominates, pareto_front
from ._trial import TrialOutcome, run_trial

__all__ = [
    "ConfigError",
    "Objective",
    "StudySpec",
    "TrialOutcome",
    "VlmnasConfig",
    "dominates",
    "load_config",
    "pareto_front",
    "run_trial",
]
