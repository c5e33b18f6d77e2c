"""What can vary: the architecture config, the search space and the model family."""

from ._anyres import anyres_tiles, select_best_grid
from ._arch import (
    ArchConfig,
    FusionConfig,
    LanguageModelConfig,
    RecipeConfig,
    VisionTowerConfig,
)
from ._generation import EncodedVQA, decode_accuracy, exact_match, greedy_decode
from ._model import LlavaNextModel, build_model
from ._space import SearchSpace, SearchSpaceError

__all__ = [
    "ArchConfig",
    "EncodedVQA",
    "FusionConfig",
    "LanguageModelConfig",
    "LlavaNextModel",
    "RecipeConfig",
    "SearchSpace",
    "SearchSpaceError",
    "VisionTowerConfig",
    "anyres_tiles",
    "build_model",
    "decode_accuracy",
    "exact_match",
    "greedy_decode",
    "select_best_grid",
]
