"""How a candidate learns: data, the Lightning module, and `fit`."""

from ._fit import ExactMatchAccuracy, TrainerConfig, TrainResult, VQAModule, fit, torch_forward

__all__ = [
    "ExactMatchAccuracy",
    "TrainResult",
    "TrainerConfig",
    "VQAModule",
    "fit",
    "torch_forward",
]
