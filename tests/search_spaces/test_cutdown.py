"""Cutting a llava-hf LLaVA-NeXT down (`search_spaces._cutdown`), on a tiny checkpoint."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoProcessor, LlavaNextForConditionalGeneration

from search_spaces import (
    ArchConfig,
    GatedCrossAttentionBlock,
    ImageMLP,
    LanguageModelConfig,
    VisionTowerConfig,
    VlmDecoderLayer,
    VlmModel,
    image_index,
    max_image_tokens,
    pad_indices,
)
from search_spaces._cutdown import (
    add_lora,
    block_influence,
    drop_layers,
    merge_lora,
    restrict_pinpoints,
    truncate_vision,
)
from tests._checkpoints import PINPOINTS, tiny_llava_checkpoint

# (height, width) of the test images: a square that fills the 2x2 grid, and a wide one
# that the processor unpads
SIZES = [(64, 64), (40, 70)]
QUESTIONS = ["what shape is the red object?", "how many objects are there?"]
LM_LAYERS = 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llava_checkpoint(tmp_path_factory.mktemp("llava") / "tiny", lm_layers=LM_LAYERS)


def _load(folder: Path) -> LlavaNextForConditionalGeneration:
    return LlavaNextForConditionalGeneration.from_pretrained(folder).eval()


def _inputs(processor: Any, sizes=SIZES, questions=QUESTIONS) -> Any:
    """A right-padded batch: one image of each size and its question, chat-formatted."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True,
        )
        for q in questions
    ]
    return processor(images=images, text=texts, padding=True, return_tensors="pt")


@torch.no_grad()
def _logits(hf: Any, inputs: Any) -> torch.Tensor:
    return hf(**inputs).logits


def test_tiny_checkpoint_loads_offline_and_generates(checkpoint: Path, monkeypatch) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the tiny checkpoint must load without the network")

    monkeypatch.setattr(socket, "socket", no_network)
    hf = _load(checkpoint)
    processor = AutoProcessor.from_pretrained(checkpoint)
    config = hf.config
    assert config.vision_feature_layer == -2
    assert config.vision_config.intermediate_size == 37
    assert config.text_config.num_key_value_heads == 2
    assert config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")
    assert processor.image_processor.image_grid_pinpoints == PINPOINTS
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]}],
        add_generation_prompt=True,
    )
    assert text == "USER: <image>\nwhat? ASSISTANT:"
    inputs = _inputs(processor)
    # the processor's <image> count is the model's feature count (else forward raises)
    out = hf.generate(**inputs, max_new_tokens=4, min_new_tokens=4)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 4)


def test_truncate_vision_keeps_outputs_and_drops_layers(checkpoint: Path, tmp_path: Path) -> None:
    full, hf = _load(checkpoint), _load(checkpoint)
    inputs = _inputs(AutoProcessor.from_pretrained(checkpoint))
    truncate_vision(hf, -2)  # the checkpoint's vision_feature_layer: the 2nd of 3 layers

    assert len(hf.model.vision_tower.encoder.layers) == 2
    assert hf.config.vision_config.num_hidden_layers == 2
    assert hf.config.vision_feature_layer == -1
    assert torch.equal(_logits(hf, inputs), _logits(full, inputs))
    gone = "model.vision_tower.encoder.layers.2."
    assert any(k.startswith(gone) for k in full.state_dict())
    assert set(hf.state_dict()) == {k for k in full.state_dict() if not k.startswith(gone)}
    # a plain LLaVA-NeXT again: transformers reloads it alone, same outputs
    hf.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert not any(".encoder.layers.2." in k for k in f.keys())
    reloaded = _load(tmp_path)
    assert reloaded.config.vision_feature_layer == -1
    assert torch.equal(_logits(reloaded, inputs), _logits(full, inputs))
    for bad in (0, -3, 3):  # the embeddings, and past the remaining 2 layers
        with pytest.raises(ValueError, match=f"feature_layer={bad}"):
            truncate_vision(hf, bad)


def _vlm_batch(processor: Any, arch: ArchConfig, sizes, questions) -> tuple[Any, tuple]:
    """The processor's batch and the same rows as `VlmModel` inputs."""
    inputs = _inputs(processor, sizes, questions)
    pixels = torch.zeros(len(sizes), arch.max_tiles, 3, 32, 32)
    pixels[:, : inputs["pixel_values"].shape[1]] = inputs["pixel_values"]
    indices = [image_index(hw, arch) for hw in sizes]
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert [int(n) for n in (inputs["input_ids"] == image_id).sum(1)] == [len(i) for i in indices]
    index = torch.from_numpy(pad_indices(indices, arch, max_image_tokens(arch)))
    return inputs, (pixels, index, inputs["input_ids"])


def test_block_influence_is_shortgpts_over_non_padding_tokens(checkpoint: Path) -> None:
    hf = _load(checkpoint)
    processor = AutoProcessor.from_pretrained(checkpoint)
    with pytest.raises(ValueError, match="truncate_vision"):  # VlmModel reads the last layer
        block_influence(VlmModel(hf, ArchConfig()), [])
    truncate_vision(hf, -2)
    arch = ArchConfig(
        vision=VisionTowerConfig(depth=2, width=32, heads=4, patch_size=8, tile_size=32),
        lm=LanguageModelConfig(depth=LM_LAYERS, width=32, heads=4),
        grid_pinpoints=((1, 1), (1, 2), (2, 1), (2, 2)),
    )
    model = VlmModel(hf, arch)
    inputs, batch = _vlm_batch(processor, arch, SIZES, QUESTIONS)
    assert (inputs["attention_mask"] == 0).any()  # the rows differ in length: padding

    # Reference: transformers' own hidden states, row by row without padding;
    # hidden_states[i] enters layer i, hidden_states[i + 1] leaves it (but the last one
    # is after the final norm, so the last layer is checked below).
    sims, tokens = torch.zeros(LM_LAYERS - 1, dtype=torch.float64), 0
    for row in range(len(SIZES)):
        real = inputs["attention_mask"][row].bool()
        with torch.no_grad():
            hs = hf(
                input_ids=inputs["input_ids"][row : row + 1, real],
                pixel_values=inputs["pixel_values"][row : row + 1],
                image_sizes=inputs["image_sizes"][row : row + 1],
                output_hidden_states=True,
            ).hidden_states
        for i in range(LM_LAYERS - 1):
            sims[i] += torch.cosine_similarity(hs[i][0], hs[i + 1][0], dim=-1).double().sum()
        tokens += int(real.sum())
    expected = [1.0 - float(s) / tokens for s in sims]

    influence = block_influence(model, [batch])
    assert len(influence) == LM_LAYERS
    np.testing.assert_allclose(influence[:-1], expected, atol=1e-5)
    assert all(b > 1e-3 for b in influence)  # random layers do turn their inputs
    # the same tokens in two batches: the same mean (each token weighs the same)
    halves = [tuple(t[r : r + 1] for t in batch) for r in range(len(SIZES))]
    np.testing.assert_allclose(block_influence(model, halves), influence, atol=1e-6)

    # a layer whose residual branches are zero is the identity: influence 0
    last = hf.model.language_model.layers[-1]
    with torch.no_grad():
        last.self_attn.o_proj.weight.zero_()
        last.mlp.down_proj.weight.zero_()
    after = block_influence(model, [batch])
    assert abs(after[-1]) < 1e-6
    np.testing.assert_allclose(after[:-1], influence[:-1], atol=1e-6)


def test_drop_layers_renumbers_and_cached_generation_agrees(
    checkpoint: Path, tmp_path: Path
) -> None:
    hf = _load(checkpoint)
    inputs = _inputs(AutoProcessor.from_pretrained(checkpoint))
    layers = hf.model.language_model.layers
    layers[3] = VlmDecoderLayer(layers[3], hf.config.text_config, 3)  # vlmnas's layer_idx too
    hf.config.text_config.layer_types = ["full_attention"] * LM_LAYERS
    before = {i: layers[i].self_attn.q_proj.weight for i in (0, 3)}

    drop_layers(hf, [2, 1])

    kept = hf.model.language_model.layers
    assert len(kept) == 2
    assert kept[0].self_attn.q_proj.weight is before[0]
    assert kept[1].self_attn.q_proj.weight is before[3]
    assert [layer.self_attn.layer_idx for layer in kept] == [0, 1]
    assert kept[1].layer_idx == 1
    assert hf.config.text_config.num_hidden_layers == 2
    assert hf.config.text_config.layer_types == ["full_attention"] * 2
    assert not any(k.startswith("model.language_model.layers.2.") for k in hf.state_dict())
    # the KV cache is indexed by layer_idx: cached decoding must see the same model
    with torch.no_grad():
        cached = hf.generate(**inputs, max_new_tokens=6, min_new_tokens=6, use_cache=True)
        plain = hf.generate(**inputs, max_new_tokens=6, min_new_tokens=6, use_cache=False)
    assert torch.equal(cached, plain)
    # transformers reloads the cut model alone (as plain Llama layers)
    hf.save_pretrained(tmp_path)
    reloaded = _load(tmp_path)
    assert len(reloaded.model.language_model.layers) == 2
    torch.testing.assert_close(_logits(reloaded, inputs), _logits(hf, inputs))
    with pytest.raises(ValueError, match=r"\[2\] out of range"):
        drop_layers(hf, [2])
    with pytest.raises(ValueError, match="leaves none"):
        drop_layers(hf, [0, 1])


def test_restrict_pinpoints_changes_model_and_processor(checkpoint: Path) -> None:
    hf = _load(checkpoint)
    processor = AutoProcessor.from_pretrained(checkpoint)

    def tiles_and_length(size: tuple[int, int]) -> tuple[int, int]:
        one = _inputs(processor, [size], QUESTIONS[:1])
        return one["pixel_values"].shape[1], one["input_ids"].shape[1]

    before = [tiles_and_length(size) for size in SIZES]
    assert [tiles for tiles, _ in before] == [5, 5]  # both in the 2x2 grid, + the base view

    kept = restrict_pinpoints(hf, processor, 3)

    assert kept == [[32, 32], [32, 64], [64, 32]]
    assert hf.config.image_grid_pinpoints == kept
    assert processor.image_processor.image_grid_pinpoints == kept
    after = [tiles_and_length(size) for size in SIZES]
    # the square image now takes the 1x1 grid, fewer tokens; the wide one the 1x2 grid,
    # the same tokens (the 2x2 grid's were unpadded to its 4x8 patches) from fewer tiles
    assert [tiles for tiles, _ in after] == [2, 3]
    assert after[0][1] < before[0][1] and after[1][1] == before[1][1]
    _logits(hf, _inputs(processor))  # the model unpacks as many features as were counted
    for bad in (1, 0):
        with pytest.raises(ValueError, match=rf"max_tiles={bad} .*max_tiles >= 2"):
            restrict_pinpoints(hf, processor, bad)
    assert hf.config.image_grid_pinpoints == kept  # unchanged by the failed calls
    assert processor.image_processor.image_grid_pinpoints == kept


def _lora_names(model: Any) -> set[str]:
    return {
        name.removeprefix("base_model.model.")
        for name, m in model.named_modules()
        if hasattr(m, "lora_A")
    }


def test_lora_targets_lm_projections_and_merges_to_plain_llava(
    checkpoint: Path, tmp_path: Path
) -> None:
    projections = [f"self_attn.{p}_proj" for p in "qkvo"] + [
        f"mlp.{p}_proj" for p in ("gate", "up", "down")
    ]
    expected = {
        f"model.language_model.layers.{i}.{p}" for i in range(LM_LAYERS) for p in projections
    }
    # vlmnas adapters: a cross-attention block (q/k/v/o_proj) and an image MLP
    # (gate/up/down_proj) get no LoRA; the vision tower's q/k/v_proj neither
    with_adapters = _load(checkpoint)
    layers, text_config = (
        with_adapters.model.language_model.layers,
        with_adapters.config.text_config,
    )
    layer = VlmDecoderLayer(layers[0], text_config, 0)
    layer.xattn = GatedCrossAttentionBlock(text_config, "tanh")
    layer.image_mlp = ImageMLP(layer.mlp, 32)
    layers[0] = layer
    assert _lora_names(add_lora(with_adapters, rank=2)) == expected

    hf = _load(checkpoint)
    processor = AutoProcessor.from_pretrained(checkpoint)
    inputs = _inputs(processor)
    base = _logits(hf, inputs)
    peft_model = add_lora(hf, rank=4)
    assert _lora_names(peft_model) == expected
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    config = peft_model.peft_config["default"]
    assert (config.r, config.lora_alpha) == (4, 8)

    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model.train()
    for _ in range(3):
        loss = peft_model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()
    tuned = _logits(peft_model, inputs)
    assert (tuned - base).abs().max() > 1e-3  # the adapters learned something

    merged = merge_lora(peft_model)
    assert type(merged) is LlavaNextForConditionalGeneration
    assert not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(_logits(merged, inputs), tuned, atol=1e-5, rtol=0)
    merged.save_pretrained(tmp_path)
    assert not (tmp_path / "adapter_config.json").exists()
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert not any("lora" in k for k in f.keys())
    reloaded = _load(tmp_path)
    assert not any("lora" in k for k in reloaded.state_dict())
    torch.testing.assert_close(_logits(reloaded, inputs), tuned, atol=1e-5, rtol=0)
