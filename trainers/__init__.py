"""How a candidate learns: data, the Lightning module, `fit` and its weights cache."""

from ._cache import cache_key, cached_fit
from ._fit import (
    ExactMatchAccuracy,
    TrainerConfig,
    TrainResult,
    VQAModule,
    fit,
    model_for,
    torch_forward,
)

__all__ = [
    "ExactMatchAccuracy",
    "TrainResult",
    "TrainerConfig",
    "VQAModule",
    "cache_key",
    "cached_fit",
    "fit",
    "model_for",
    "torch_forward",
]
