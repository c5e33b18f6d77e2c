"""Cutting a trained LLaVA-NeXT down: model surgery on a loaded llava-hf checkpoint.

A user who owns a LLaVA-NeXT checkpoint (llava-hf format, e.g. llava-v1.6-vicuna-7b: a
CLIP ViT-L read at `vision_feature_layer=-2`, a Llama/Vicuna or Mistral decoder) shrinks
it with these functions, each in place on a `LlavaNextForConditionalGeneration` (`hf`),
leaving a model that transformers still loads and runs as a plain LLaVA-NeXT:

- `truncate_vision`: drop the vision encoder layers past the feature layer (free: the
  outputs do not change);
- `block_influence` + `drop_layers`: ShortGPT's layer pruning of the language model;
- `restrict_pinpoints`: fewer AnyRes grids, so fewer tiles and visual tokens per image;
- `add_lora` + `merge_lora`: LoRA fine-tuning of the language model to heal the cut,
  merged back into plain weights.

They change the transformers model and its config only; a vlmnas candidate's
`config.vlmnas` record (its `ArchConfig`) is not rewritten here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import LlavaNextForConditionalGeneration

    from ._family import VlmModel

# The language model's attention and MLP projections, and nothing else: not the vision
# tower's q/k/v_proj, nor those of vlmnas's cross-attention blocks (`layers.N.xattn.*`) or
# image MLPs (`layers.N.image_mlp.*`). peft matches a string `target_modules` with
# `re.fullmatch` against each module's name in the LLaVA-NeXT model.
LORA_TARGETS = (
    r"model\.language_model\.layers\.\d+\."
    r"(?:self_attn\.(?:q_proj|k_proj|v_proj|o_proj)|mlp\.(?:gate_proj|up_proj|down_proj))"
)


def _configs(*configs: Any) -> list[Any]:
    """The distinct config objects among `configs` (a submodel may hold its own copy)."""
    return list({id(c): c for c in configs if c is not None}.values())


def _vision_encoder(hf: LlavaNextForConditionalGeneration) -> Any:
    tower: Any = hf.model.vision_tower
    # transformers 5 flattened CLIPVisionModel (`vision_tower.encoder`); older releases
    # and other towers keep a `vision_model` in between.
    return getattr(tower, "vision_model", tower).encoder


def truncate_vision(hf: LlavaNextForConditionalGeneration, feature_layer: int) -> None:
    """Keep the vision encoder layers up to the one whose output `feature_layer` selects
    and delete the rest; then the feature layer is the last (`vision_feature_layer=-1`).

    `feature_layer` indexes the tower's hidden states as transformers'
    `vision_feature_layer` does: `hidden_states[0]` is the embeddings, `hidden_states[k]`
    the output of encoder layer k - 1, negative indices count from the current depth
    (LLaVA's -2 keeps all layers but the last). With `feature_layer` equal to the config's
    `vision_feature_layer`, `hf(...)` computes exactly what it did before, since LLaVA
    (Liu et al., "Visual Instruction Tuning", 2023; LLaVA-1.5/NeXT) reads the penultimate
    CLIP layer and never uses the layers after it; their weights are removed from the
    module tree, so from `state_dict` and from what `save_pretrained` writes.
    `vision_config.num_hidden_layers` is set to the new depth (transformers resolves the
    negative hidden-state index from it). Raises ValueError for a feature layer outside
    the encoder layers, and for a config that concatenates several feature layers.
    """
    if not isinstance(hf.config.vision_feature_layer, int):
        raise ValueError(
            f"vision_feature_layer={hf.config.vision_feature_layer!r} concatenates several"
            " layers; truncate_vision handles one feature layer"
        )
    layers = _vision_encoder(hf).layers
    depth = len(layers)
    if not (-depth <= feature_layer <= -1 or 1 <= feature_layer <= depth):
        raise ValueError(
            f"feature_layer={feature_layer}: must select an encoder layer's output,"
            f" in [-{depth}, -1] or [1, {depth}] (vision depth {depth};"
            f" {-depth - 1} and 0 are the embeddings)"
        )
    keep = feature_layer if feature_layer > 0 else depth + 1 + feature_layer
    del layers[keep:]
    tower_config = getattr(hf.model.vision_tower, "config", None)
    for config in _configs(hf.config.vision_config, tower_config):
        config.num_hidden_layers = keep
    for config in _configs(hf.config, getattr(hf.model, "config", None)):
        config.vision_feature_layer = -1


def _decoder_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@torch.no_grad()
def block_influence(model: VlmModel, batches: Iterable[Sequence[torch.Tensor]]) -> list[float]:
    """ShortGPT's Block Influence of every language-model layer (Men et al., "ShortGPT:
    Layers in Large Language Models are More Redundant Than You Expect", 2024):

        BI_i = 1 - mean over tokens t of cos(x_i[t], x_{i+1}[t])

    where x_i is layer i's input hidden state and x_{i+1} its output. A layer that barely
    turns its input (low BI) is the first to remove (`drop_layers` of the lowest ones).

    `batches` are the calibration data, tuples `(pixel_values, image_index, input_ids)` as
    `VlmModel.forward` takes them (optionally a fourth (B, L) mask of the positions to
    count); the mean is over every non-padding position of every batch (text and image
    tokens; padding is where `input_ids == text_config.pad_token_id`, or the mask's zeros
    when given), each token weighing the same. The inputs and outputs come from
    forward hooks on `model.hf.model.language_model.layers[i]`, computed in eval mode
    without gradients, in float32.

    `VlmModel` reads the vision tower's last hidden state: a llava-hf checkpoint read at
    `vision_feature_layer=-2` must go through `truncate_vision` first (ValueError if not).
    """
    hf = model.hf
    config: Any = hf.config
    if config.vision_feature_layer != -1:
        raise ValueError(
            f"vision_feature_layer={config.vision_feature_layer!r}: VlmModel reads the"
            " vision tower's last layer; call truncate_vision(hf, feature_layer) first"
        )
    layers: Any = hf.model.language_model.layers
    pad_id = config.text_config.pad_token_id
    param = next(model.parameters())
    sums = torch.zeros(len(layers), dtype=torch.float64)
    count = 0
    seen: dict[int, torch.Tensor] = {}
    current: dict[str, torch.Tensor] = {}

    def hook(i: int) -> Callable[..., None]:
        def record(_m: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            cos = nn.functional.cosine_similarity(
                _decoder_input(args, kwargs).float(), out.float(), dim=-1
            )
            seen[i] = cos[current["mask"]].double().sum()

        return record

    handles = [
        layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)
    ]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            pixel_values, image_index, input_ids = batch[:3]
            if len(batch) > 3:
                mask = batch[3].to(param.device).bool()
            elif pad_id is not None:
                mask = input_ids.to(param.device) != pad_id
            else:
                mask = torch.ones_like(input_ids, dtype=torch.bool, device=param.device)
            current["mask"] = mask
            seen.clear()
            model(
                pixel_values.to(param.device, param.dtype),
                image_index.to(param.device),
                input_ids.to(param.device),
            )
            if len(seen) != len(layers):
                raise RuntimeError(f"the hooks saw {len(seen)} of {len(layers)} LM layers")
            sums += torch.stack([seen[i].cpu() for i in range(len(layers))])
            count += int(mask.sum())
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("block_influence: the batches hold no non-padding token")
    return [1.0 - float(s) / count for s in sums]


def drop_layers(hf: LlavaNextForConditionalGeneration, indices: Iterable[int]) -> None:
    """Delete the language model's decoder layers `indices` (ShortGPT's layer removal,
    Men et al. 2024: remove the layers of lowest `block_influence`; Gromov et al., "The
    Unreasonable Ineffectiveness of the Deeper Layers", 2024, prune blocks of layers by the
    same input/output angular distance and heal the cut with (Q)LoRA: `add_lora`).

    The remaining layers keep their weights and order and are renumbered 0..n-1: every
    int `layer_idx` attribute inside a layer (`self_attn.layer_idx`, which indexes the KV
    cache, and vlmnas's `VlmDecoderLayer.layer_idx`, which indexes its masks) becomes its
    new position. `text_config.num_hidden_layers` becomes n (transformers sizes the KV
    cache from it and runs `layers[:num_hidden_layers]`); a `layer_types` list (and a
    heterogeneous `per_layer_config`) is cut to the kept layers. Raises ValueError for an
    index out of range or when nothing would be left.
    """
    layers = hf.model.language_model.layers
    depth = len(layers)
    drop = set(indices)
    bad = sorted(i for i in drop if not (isinstance(i, int) and 0 <= i < depth))
    if bad:
        raise ValueError(f"drop_layers: indices {bad} out of range [0, {depth - 1}]")
    if len(drop) >= depth:
        raise ValueError(f"drop_layers: dropping {sorted(drop)} leaves none of {depth} layers")
    kept = [i for i in range(depth) if i not in drop]
    new_layers = nn.ModuleList([layers[i] for i in kept])
    for new, layer in enumerate(new_layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                cast(Any, module).layer_idx = new
    hf.model.language_model.layers = new_layers
    lm_config = getattr(hf.model.language_model, "config", None)
    for config in _configs(hf.config.text_config, lm_config):
        _cut_config(config, kept)


def _cut_config(config: Any, kept: list[int]) -> None:
    overrides = None
    if getattr(config, "is_heterogeneous", False):
        spec = config._heterogeneity_spec.per_layer_overrides
        overrides = {new: spec[old] for new, old in enumerate(kept) if spec.get(old)}
        config.per_layer_config = None
    layer_types = getattr(config, "layer_types", None)
    config.num_hidden_layers = len(kept)
    if layer_types is not None:
        config.layer_types = [layer_types[i] for i in kept]
    if overrides:
        config.per_layer_config = overrides


def _tiles(pinpoint: Sequence[int], tile: int) -> int:
    height, width = pinpoint
    return (height // tile) * (width // tile) + 1


def restrict_pinpoints(
    hf: LlavaNextForConditionalGeneration, processor: Any, max_tiles: int
) -> list[list[int]]:
    """Keep the AnyRes grids (`image_grid_pinpoints`, (height, width) in pixels) whose
    tiles, rows * cols plus the base view, number at most `max_tiles`, and return them.

    LLaVA-NeXT (Liu et al., "LLaVA-NeXT: Improved reasoning, OCR, and world knowledge",
    2024) picks among these grids per image (`select_best_resolution`); its visual tokens,
    the bulk of the LM's sequence, grow with the tile count, so fewer grids are a cheaper
    model that still reads every image (fitted into the best grid kept). Both
    `hf.config.image_grid_pinpoints` (which the model unpacks tiles by) and
    `processor.image_processor.image_grid_pinpoints` (which the processor tiles and counts
    `<image>` tokens by) change: transformers reads them from both, and they must agree.
    Raises ValueError, changing nothing, when no grid is left (naming `max_tiles` and the
    range that keeps one) or when the two lists already disagree.
    """
    config: Any = hf.config
    tile = config.vision_config.image_size
    current = [list(p) for p in config.image_grid_pinpoints]
    theirs = [list(p) for p in processor.image_processor.image_grid_pinpoints]
    if current != theirs:
        raise ValueError(
            f"the model's image_grid_pinpoints {current} and the image processor's {theirs}"
            " differ: fix the pair before restricting them"
        )
    kept = [p for p in current if _tiles(p, tile) <= max_tiles]
    if not kept:
        fewest = min(_tiles(p, tile) for p in current)
        raise ValueError(
            f"max_tiles={max_tiles} keeps no grid of {current}: allowed max_tiles >= {fewest}"
            f" (the smallest grid's {fewest} tiles; the largest has"
            f" {max(_tiles(p, tile) for p in current)})"
        )
    for cfg in _configs(config, getattr(hf.model, "config", None)):
        cfg.image_grid_pinpoints = [list(p) for p in kept]
    processor.image_processor.image_grid_pinpoints = [list(p) for p in kept]
    return kept


def add_lora(
    hf: LlavaNextForConditionalGeneration, rank: int, alpha: int | None = None
) -> PeftModel:
    """Wrap `hf` in peft LoRA adapters (Hu et al., "LoRA: Low-Rank Adaptation of Large
    Language Models", 2021) on the language model's attention and MLP projections
    (`q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj` under
    `model.language_model`, `LORA_TARGETS`): every linear layer of the decoder blocks,
    which QLoRA (Dettmers et al., 2023) found needed to match full fine-tuning and where
    LLaVA-1.5's LoRA recipe puts its adapters too. The vision tower, the projector, the
    embeddings, the LM head and vlmnas's cross-attention adapters stay frozen. `alpha`
    defaults to 2 * rank (LLaVA-1.5's lora_r=128, lora_alpha=256); no dropout.

    peft modifies `hf` in place (its targeted Linears become LoRA layers) and freezes
    every other parameter; only the adapters train. `merge_lora` undoes the wrapping.
    """
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise ValueError(f"rank={rank}: LoRA needs rank >= 1")
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank if alpha is None else alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=LORA_TARGETS,
    )
    return get_peft_model(hf, config)


def merge_lora(peft_model: PeftModel) -> LlavaNextForConditionalGeneration:
    """Fold the LoRA updates into the weights (W + alpha/r * B A, peft's
    `merge_and_unload`) and return the plain `LlavaNextForConditionalGeneration`, whose
    `save_pretrained` writes a LLaVA-NeXT folder with no adapter keys, loadable by
    `from_pretrained` alone. Its parameters stay as peft left them: frozen
    (`requires_grad=False`)."""
    from transformers import LlavaNextForConditionalGeneration

    merged = peft_model.merge_and_unload()
    if not isinstance(merged, LlavaNextForConditionalGeneration):
        raise TypeError(f"merge_lora: got a {type(merged).__name__}, not a LLaVA-NeXT model")
    return merged
