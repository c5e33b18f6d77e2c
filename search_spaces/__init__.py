"""What can vary: the architecture config, the search space and the model family
(transformers' LLaVA-NeXT with vlmnas's adapters)."""

from ._adapters import Gate, GatedCrossAttentionBlock, ImageMLP, VlmDecoderLayer
from ._arch import (
    AdaptConfig,
    ArchConfig,
    FusionConfig,
    LanguageModelConfig,
    RecipeConfig,
    TokensConfig,
    VisionTowerConfig,
)
from ._backbone import (
    Backbone,
    BackboneError,
    backbone_for,
    cut_down,
    inspect_backbone,
    register_backbone,
)
from ._cutdown import (
    add_lora,
    block_influence,
    drop_layers,
    merge_lora,
    restrict_pinpoints,
    truncate_vision,
)
from ._family import (
    FAMILY,
    VlmModel,
    build_model,
    hf_config,
    is_plain,
    load_pretrained,
    model_from_config,
    save_pretrained,
)
from ._generation import EncodedVQA, decode_accuracy, exact_match, greedy_decode
from ._packing import (
    grid_of,
    image_index,
    image_processor,
    max_image_tokens,
    newline_index,
    pad_indices,
    pinpoints_px,
    tiles_of,
)
from ._pretrained import PretrainedSpace
from ._space import SearchSpace, SearchSpaceError

__all__ = [
    "FAMILY",
    "AdaptConfig",
    "Backbone",
    "BackboneError",
    "PretrainedSpace",
    "TokensConfig",
    "backbone_for",
    "cut_down",
    "inspect_backbone",
    "register_backbone",
    "ArchConfig",
    "Gate",
    "GatedCrossAttentionBlock",
    "ImageMLP",
    "VlmDecoderLayer",
    "VlmModel",
    "add_lora",
    "block_influence",
    "drop_layers",
    "merge_lora",
    "restrict_pinpoints",
    "truncate_vision",
    "grid_of",
    "hf_config",
    "image_index",
    "image_processor",
    "is_plain",
    "load_pretrained",
    "model_from_config",
    "save_pretrained",
    "max_image_tokens",
    "newline_index",
    "pad_indices",
    "pinpoints_px",
    "tiles_of",
    "EncodedVQA",
    "FusionConfig",
    "LanguageModelConfig",
    "RecipeConfig",
    "SearchSpace",
    "SearchSpaceError",
    "VisionTowerConfig",
    "build_model",
    "decode_accuracy",
    "exact_match",
    "greedy_decode",
]
