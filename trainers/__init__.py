"""How a candidate learns: data, the Lightning module, `fit` and its weights cache."""

from ._cache import cache_key, cached_fit
from ._fit import (
    ExactMatchAccuracy,
    TrainerConfig,
    TrainResult,
    VQAModule,
    fit,
    load_trained,
    model_for,
    needs_training,
    save_weights,
    torch_forward,
    train_rows,
)
from ._recipes import Teacher, align, contrastive_loss, distillation_loss, similarities
from ._teacher import study_teacher

__all__ = [
    "ExactMatchAccuracy",
    "TrainResult",
    "Teacher",
    "TrainerConfig",
    "VQAModule",
    "align",
    "cache_key",
    "cached_fit",
    "contrastive_loss",
    "distillation_loss",
    "fit",
    "load_trained",
    "model_for",
    "needs_training",
    "save_weights",
    "similarities",
    "study_teacher",
    "torch_forward",
    "train_rows",
]
