"""A local LLaVA-NeXT checkpoint as the starting point of a study (`backbone.path`).

`inspect_backbone(path)` checks the folder before any trial (config.json of a LLaVA-NeXT
with a CLIP tower and a Llama/Mistral LM, safetensors weights, a processor with a
tokenizer and a chat template) and describes the checkpoint as an `ArchConfig`
(`backbone_arch`), so that a candidate cut from it is that description with some knobs
turned (`search_spaces/_pretrained.py`). `cut_down(backbone, arch, calibration)` builds
the candidate: the checkpoint loaded, the vision tower truncated after the feature
layer, the AnyRes grids restricted, the LM layers of lowest block influence removed, and
the adapters installed. LoRA (`adapt.lora_rank`) is the trainer's part.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import torch

from ._adapters import install_adapters
from ._arch import (
    Activation,
    ArchConfig,
    FusionConfig,
    LanguageModelConfig,
    TokensConfig,
    VisionTowerConfig,
)
from ._cutdown import block_influence, drop_layers, truncate_vision
from ._family import FAMILY, VlmModel
from ._packing import pinpoints_px

_TEXT_MODELS = ("llama", "mistral")
_ACTIVATIONS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh"}


class BackboneError(ValueError):
    """A `backbone.path` that cannot serve as a study's checkpoint; one line naming why."""


@dataclass(frozen=True)
class Backbone:
    path: Path
    backbone_id: str  # hash of config.json and the weight files' names and sizes
    arch: ArchConfig  # the checkpoint as it is
    config: Any  # its LlavaNextConfig


_REGISTRY: dict[str, Backbone] = {}


def register_backbone(backbone: Backbone) -> Backbone:
    """Make `backbone` known in this process (a Ray worker gets it with the config)."""
    _REGISTRY[backbone.backbone_id] = backbone
    return backbone


def backbone_for(arch: ArchConfig) -> Backbone:
    """The checkpoint `arch` was cut from (inspected in this process)."""
    if arch.backbone is None or arch.backbone not in _REGISTRY:
        raise BackboneError(
            f"candidate {arch.arch_id} needs backbone {arch.backbone!r}: give backbone.path"
        )
    return _REGISTRY[arch.backbone]


def inspect_backbone(path: str | Path) -> Backbone:
    """Check `path` is a usable LLaVA-NeXT checkpoint folder and describe it."""
    where = f"backbone.path={str(path)!r}"
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise BackboneError(f"{where}: no such folder")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise BackboneError(f"{where}: no config.json (a transformers model folder has one)")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise BackboneError(f"{where}: config.json is not JSON ({exc})") from None
    if raw.get("model_type") != "llava_next":
        raise BackboneError(
            f"{where}: config.json has model_type={raw.get('model_type')!r}; need 'llava_next'"
        )
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise BackboneError(f"{where}: no *.safetensors weights")
    if not any(
        (folder / f).is_file() for f in ("processor_config.json", "preprocessor_config.json")
    ):
        raise BackboneError(
            f"{where}: no processor (processor_config.json or preprocessor_config.json);"
            " save it with processor.save_pretrained"
        )
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise BackboneError(f"{where}: no tokenizer (tokenizer.json or tokenizer.model)")
    from transformers import LlavaNextConfig

    config: Any = LlavaNextConfig.from_pretrained(folder)
    text_type = config.text_config.model_type
    if text_type not in _TEXT_MODELS:
        raise BackboneError(
            f"{where}: LM model_type {text_type!r}; supported: {list(_TEXT_MODELS)}"
        )
    if config.vision_config.model_type != "clip_vision_model":
        raise BackboneError(
            f"{where}: vision model_type {config.vision_config.model_type!r}; supported: CLIP"
        )
    if config.vision_feature_select_strategy != "default" or not isinstance(
        config.vision_feature_layer, int
    ):
        raise BackboneError(
            f"{where}: vision_feature_select_strategy={config.vision_feature_select_strategy!r},"
            f" vision_feature_layer={config.vision_feature_layer!r}; supported: 'default' and"
            " one layer"
        )
    digest = hashlib.sha256(config_file.read_bytes())
    for w in weights:
        digest.update(f"{w.name}:{w.stat().st_size}".encode())
    backbone = Backbone(
        folder.resolve(), digest.hexdigest()[:12], backbone_arch(config, where), config
    )
    backbone = replace(backbone, arch=replace(backbone.arch, backbone=backbone.backbone_id))
    _REGISTRY[backbone.backbone_id] = backbone
    return backbone


def backbone_arch(config: Any, where: str = "backbone") -> ArchConfig:
    """The `ArchConfig` a LLaVA-NeXT config describes, in vlmnas's canonical form for a
    checkpoint: the vision tower counted up to its feature layer (`feature_layer=last`)."""
    v, t = config.vision_config, config.text_config
    tile = int(v.image_size)
    grids = []
    for h, w in config.image_grid_pinpoints:
        if h % tile or w % tile:
            raise BackboneError(f"{where}: pinpoint {[h, w]} is not a multiple of the tile {tile}")
        grids.append((h // tile, w // tile))
    layer = int(config.vision_feature_layer)
    kept = layer + 1 + v.num_hidden_layers if layer < 0 else layer
    if not 1 <= kept <= v.num_hidden_layers:
        raise BackboneError(f"{where}: vision_feature_layer={layer} selects no encoder layer")
    act = _ACTIVATIONS.get(config.projector_hidden_act)
    if act is None:
        raise BackboneError(
            f"{where}: projector_hidden_act={config.projector_hidden_act!r}; supported:"
            f" {sorted(_ACTIVATIONS)}"
        )
    return ArchConfig(
        vision=VisionTowerConfig(
            depth=kept,
            width=v.hidden_size,
            heads=v.num_attention_heads,
            mlp_ratio=max(v.intermediate_size // v.hidden_size, 1),
            intermediate=v.intermediate_size,
            patch_size=v.patch_size,
            tile_size=tile,
        ),
        lm=LanguageModelConfig(
            depth=t.num_hidden_layers,
            width=t.hidden_size,
            heads=t.num_attention_heads,
            mlp_ratio=max(t.intermediate_size // t.hidden_size, 1),
            intermediate=t.intermediate_size,
            kv_heads=t.num_key_value_heads,
        ),
        grid_pinpoints=tuple(grids),
        activation=cast(
            Activation, act
        ),  # the projector's; the tower and LM keep the checkpoint's own
    )


def cut_down(
    backbone: Backbone, arch: ArchConfig, calibration: Iterable[tuple[torch.Tensor, ...]] = ()
) -> VlmModel:
    """The candidate `arch` (cut from `backbone`): loads the checkpoint and applies what
    `arch` changes. `calibration` batches of (pixel_values, image_index, input_ids) serve
    block influence when `lm.drop_layers` > 0."""
    from transformers import LlavaNextForConditionalGeneration

    hf = LlavaNextForConditionalGeneration.from_pretrained(backbone.path, dtype=torch.float32)
    hf.set_attn_implementation("sdpa")
    full = backbone.arch
    # keep the encoder layers up to the feature layer: hidden_states[k] is layer k's output
    vision_config: Any = hf.config.vision_config
    loaded = vision_config.num_hidden_layers
    truncate_vision(hf, arch.vision.layers_run - loaded - 1)
    hf.config.image_grid_pinpoints = pinpoints_px(arch)
    dropped: list[int] = []
    if arch.lm.drop_layers:
        # influence of the checkpoint's own layers: no pruning, no adapters yet
        plain = VlmModel(
            hf,
            replace(
                arch,
                lm=replace(arch.lm, depth=full.lm.depth, drop_layers=0),
                fusion=FusionConfig(),
                tokens=TokensConfig(),
            ),
        )
        scores = block_influence(plain, calibration)
        dropped = sorted(sorted(range(len(scores)), key=lambda i: scores[i])[: arch.lm.drop_layers])
        drop_layers(hf, dropped)
    install_adapters(hf, arch)
    hf.config.vlmnas = {
        "family": FAMILY,
        "arch": arch.to_dict(),
        "backbone": str(backbone.path),
        "dropped_layers": dropped,
    }
    return VlmModel(hf, arch)
