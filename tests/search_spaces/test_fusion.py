"""Fusion placement, gating, attention masks and modality FFN sharing."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from search_spaces import (
    ArchConfig,
    ImageMLP,
    LanguageModelConfig,
    VisionTowerConfig,
    image_index,
    is_plain,
)
from search_spaces._arch import FusionConfig
from tests._archs import IMAGE_ID, random_inputs, random_model

LM = LanguageModelConfig(depth=2, width=32, heads=2, mlp_ratio=2)
VISION = VisionTowerConfig(depth=2, width=32, heads=2)
GRIDS = ((1, 1), (1, 2))
HIDDEN = LM.mlp_ratio * LM.width  # hidden units of each LM layer's MLP


def arch(**fusion) -> ArchConfig:
    return ArchConfig(vision=VISION, lm=LM, grid_pinpoints=GRIDS, fusion=FusionConfig(**fusion))


def layers(m) -> torch.nn.ModuleList:
    return m.hf.model.language_model.layers


@contextlib.contextmanager
def without_cross_blocks(m):
    """The model with every layer's cross-attention block taken out, for the block."""
    blocks = [layer.xattn for layer in layers(m)]
    for layer in layers(m):
        layer.xattn = None
    try:
        yield m
    finally:
        for layer, block in zip(layers(m), blocks, strict=True):
            layer.xattn = block


def logits(m, pixels, index, ids) -> torch.Tensor:
    with torch.no_grad():
        return m(pixels, index, ids)


@pytest.mark.parametrize("gating", ["tanh", "channel", "token"])
@pytest.mark.parametrize("placement", ["cross_attention", "hybrid"])
def test_zero_initialised_gates_leave_text_path_unchanged(placement: str, gating: str) -> None:
    a = arch(placement=placement, xattn_layers=(0, 1), gating=gating)
    m = random_model(a)
    assert all(layer.xattn is not None for layer in layers(m))
    pixels, index, ids = random_inputs(a)
    with_blocks = logits(m, pixels, index, ids)
    with without_cross_blocks(m):
        without = logits(m, pixels, index, ids)
    torch.testing.assert_close(with_blocks, without, atol=1e-6, rtol=0)
    if placement == "cross_attention":  # the image reaches the text only through the gates
        other = logits(m, torch.randn_like(pixels), index, ids)
        torch.testing.assert_close(other, with_blocks, atol=1e-6, rtol=0)


@pytest.mark.parametrize("gating", ["tanh", "channel", "token"])
@pytest.mark.parametrize("placement", ["cross_attention", "hybrid"])
def test_zero_gated_candidate_equals_the_plain_model_without_its_cross_blocks(
    placement: str, gating: str
) -> None:
    """Cross blocks with zero-initialised gates start as the identity: the candidate gives
    transformers' LLaVA-NeXT's logits, with the candidate's weights but its cross blocks.
    A hybrid candidate splices the image in as LLaVA-NeXT does; cross attention keeps
    `<image>` one text token, which LLaVA-NeXT without pixels reads as a word."""
    a = arch(placement=placement, xattn_layers=(0, 1), gating=gating)
    candidate = random_model(a, seed=0)
    plain_arch = dataclasses.replace(a, fusion=FusionConfig())
    assert is_plain(plain_arch) and not is_plain(a)
    plain = random_model(plain_arch, seed=1)
    weights = {k: v for k, v in candidate.hf.state_dict().items() if ".xattn." not in k}
    assert len(weights) < len(candidate.hf.state_dict())
    plain.hf.load_state_dict(weights)  # strict: every other weight has its counterpart

    hw = (32, 64)  # the 1x2 grid: three tiles
    pixels, index, ids = random_inputs(a, image_hw=hw, image_pos=2)
    expected = logits(candidate, pixels, index, ids)
    with torch.no_grad():
        if placement == "hybrid":
            torch.testing.assert_close(logits(plain, pixels, index, ids), expected)
            out = plain.hf(
                input_ids=ids, pixel_values=pixels[:, :3], image_sizes=torch.tensor([hw] * 2)
            )
        else:
            out = plain.hf(input_ids=ids)  # no pixels: text only
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-4)


def test_ungated_cross_attention_does_use_the_image() -> None:
    a = arch(placement="cross_attention", xattn_layers=(0,), gating="none")
    m = random_model(a)
    pixels, index, ids = random_inputs(a)
    assert not torch.allclose(
        logits(m, pixels, index, ids), logits(m, torch.randn_like(pixels), index, ids), atol=1e-4
    )


def _attention_weights(m, pixels, index, ids) -> list[torch.Tensor]:
    """Softmax weights of every LM self-attention layer, (B, heads, S, S) each: the eager
    attention returns them, and a hook on each layer's attention keeps them."""
    captured: list[torch.Tensor] = []
    m.hf.set_attn_implementation("eager")
    hooks = [
        layer.self_attn.register_forward_hook(lambda _m, _a, out: captured.append(out[1]))
        for layer in layers(m)
    ]
    try:
        logits(m, pixels, index, ids)
    finally:
        for hook in hooks:
            hook.remove()
        m.hf.set_attn_implementation("sdpa")
    assert len(captured) == LM.depth
    return captured


def test_full_mask_is_causal_only() -> None:
    a = arch(image_attention="full")
    pixels, index, ids = random_inputs(a, image_pos=3)
    for w in _attention_weights(random_model(a), pixels, index, ids):
        causal = torch.ones_like(w[0, 0], dtype=torch.bool).tril()
        assert (w[:, :, ~causal] == 0).all()  # no attention to the future
        assert (w[:, :, causal] > 0).all()  # and nothing else blocked


def test_image_no_text_blocks_exactly_image_to_text() -> None:
    a = arch(image_attention="image_no_text")
    pixels, index, ids = random_inputs(a, image_pos=3)  # three text tokens precede the image
    is_img = ids[0] == IMAGE_ID
    assert is_img[3:].any() and not is_img[:3].any()
    blocked = is_img[:, None] & ~is_img[None, :]
    for w in _attention_weights(random_model(a), pixels, index, ids):
        causal = torch.ones_like(w[0, 0], dtype=torch.bool).tril()
        assert (w[:, :, blocked & causal] == 0).all()
        assert (w[:, :, ~blocked & causal] > 0).all()


def test_text_only_layers_hide_image_from_text_from_the_chosen_layer() -> None:
    a = arch(image_attention="text_only", text_only_from=1)
    pixels, index, ids = random_inputs(a, image_pos=0)
    is_img = ids[0] == IMAGE_ID
    text_to_image = ~is_img[:, None] & is_img[None, :]
    first, second = _attention_weights(random_model(a), pixels, index, ids)
    causal = torch.ones_like(first[0, 0], dtype=torch.bool).tril()
    assert (first[:, :, text_to_image & causal] > 0).all()  # layer 0: full
    assert (second[:, :, text_to_image] == 0).all()  # layer 1: text is blind to the image
    assert (second[:, :, ~text_to_image & causal] > 0).all()


def test_padding_tiles_and_slots_are_hidden_from_cross_attention() -> None:
    a = arch(placement="cross_attention", xattn_layers=(0, 1), gating="none")
    m = random_model(a)
    hw = (32, 32)  # the 1x1 grid: two of the three tiles are the image's
    pixels, index, ids = random_inputs(a, image_hw=hw)
    assert (pixels[:, 2] == 0).all()
    expected = logits(m, pixels, index, ids)
    changed = pixels.clone()
    changed[:, 2:] = torch.randn_like(changed[:, 2:])
    torch.testing.assert_close(logits(m, changed, index, ids), expected, atol=1e-5, rtol=0)
    # the index's padding slots (past the image's own visual tokens) count for nothing:
    # unpadded, the same image gives the same logits
    own = torch.from_numpy(image_index(hw, a)).expand(2, -1)
    assert own.shape[1] < index.shape[1]
    torch.testing.assert_close(logits(m, pixels, own, ids), expected, atol=1e-5, rtol=0)


def _image_mlps(m) -> list[ImageMLP | None]:
    return [getattr(layer, "image_mlp", None) for layer in layers(m)]


def test_share_ratio_one_is_the_plain_model() -> None:
    a = arch(share_ratio=1.0)
    assert is_plain(a)
    m = random_model(a)
    assert _image_mlps(m) == [None] * LM.depth
    assert not any(isinstance(x, ImageMLP) for x in m.modules())


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5])
def test_share_ratio_adds_private_image_units_by_the_hand_count(share: float) -> None:
    shared = round(share * HIDDEN)
    for mlp in _image_mlps(random_model(arch(share_ratio=share))):
        assert isinstance(mlp, ImageMLP) and mlp.shared == shared
        # gate, up (width -> private) and down (private -> width), no biases as Llama's
        private = HIDDEN - shared
        assert sum(p.numel() for p in mlp.parameters()) == 3 * LM.width * private


def test_share_ratio_changes_model_parameters_by_exactly_the_private_units() -> None:
    counts = {
        s: sum(p.numel() for p in random_model(arch(share_ratio=s)).parameters())
        for s in (0.0, 0.5, 1.0)
    }
    for s in (0.0, 0.5):
        private = HIDDEN - round(s * HIDDEN)
        assert counts[s] - counts[1.0] == LM.depth * 3 * LM.width * private


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_private_image_units_start_as_copies_so_outputs_are_unchanged(share: float) -> None:
    a = arch(share_ratio=share)
    m = random_model(a, seed=0)
    plain = random_model(arch(), seed=1)
    weights = {k: v for k, v in m.hf.state_dict().items() if ".image_mlp." not in k}
    plain.hf.load_state_dict(weights)
    pixels, index, ids = random_inputs(a, image_pos=3)
    torch.testing.assert_close(
        logits(m, pixels, index, ids), logits(plain, pixels, index, ids), atol=1e-5, rtol=1e-5
    )


def _routing_case(share: float):
    """One LM layer's MLP with its ImageMLP, and four tokens: image, text, image, text."""
    m = random_model(arch(share_ratio=share))
    layer = layers(m)[0]
    x = torch.randn(1, 4, LM.width, generator=torch.Generator().manual_seed(1))
    is_image = torch.tensor([1.0, 0.0, 1.0, 0.0]).reshape(1, 4, 1)
    return layer.mlp, layer.image_mlp, x, is_image


def _perturbed(module: torch.nn.Module, **slices) -> None:
    with torch.no_grad():
        for name, where in slices.items():
            getattr(module, name).weight[where] += 0.5


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_text_tokens_never_use_the_image_units(share: float) -> None:
    mlp, image_mlp, x, is_image = _routing_case(share)
    with torch.no_grad():
        before = image_mlp(x, mlp, is_image)
        torch.testing.assert_close(before, mlp(x))  # at initialisation: the layer's own MLP
        _perturbed(image_mlp, gate_proj=slice(None), up_proj=slice(None), down_proj=slice(None))
        after = image_mlp(x, mlp, is_image)
        torch.testing.assert_close(after[:, 1::2], mlp(x)[:, 1::2])  # text: as before
        assert (after[:, 0::2] - before[:, 0::2]).abs().amax() > 1e-3  # image: its own units


@pytest.mark.parametrize("share", [0.0, 0.5])
def test_image_tokens_use_the_shared_units_and_not_the_texts_private_ones(share: float) -> None:
    mlp, image_mlp, x, is_image = _routing_case(share)
    s = image_mlp.shared
    with torch.no_grad():
        before = image_mlp(x, mlp, is_image)
        _perturbed(mlp, gate_proj=slice(s, None), down_proj=(slice(None), slice(s, None)))
        text_private = image_mlp(x, mlp, is_image)
        torch.testing.assert_close(text_private[:, 0::2], before[:, 0::2])
        assert (text_private[:, 1::2] - before[:, 1::2]).abs().amax() > 1e-3
        if s:  # the shared units serve both
            _perturbed(mlp, gate_proj=slice(None, s))
            shared = image_mlp(x, mlp, is_image)
            assert ((shared - text_private).abs().amax(-1) > 1e-4).all()


def test_pooling_and_feature_layer_change_tokens_and_layers() -> None:
    pooled = dataclasses.replace(VISION, pooling="avg2x2")
    assert ArchConfig(vision=pooled).image_tokens * 4 == ArchConfig(vision=VISION).image_tokens
    a = ArchConfig(vision=pooled, lm=LM, grid_pinpoints=GRIDS)
    pixels, index, _ = random_inputs(a)
    tokens, real = random_model(a).encode_image(pixels, index)
    assert tokens.shape[:2] == index.shape and real.all()  # the largest grid: no padding
    m = random_model(
        ArchConfig(
            vision=dataclasses.replace(VISION, feature_layer="second_last"),
            lm=LM,
            grid_pinpoints=GRIDS,
        )
    )
    assert len(m.vision_tower.encoder.layers) == VISION.depth - 1


@pytest.mark.parametrize(
    ("fusion", "needle"),
    [
        ({"placement": "cross_attention"}, "needs xattn_layers"),
        ({"placement": "early", "gating": "tanh"}, "apply only to cross_attention or hybrid"),
        ({"placement": "cross_attention", "xattn_layers": (0, 2)}, "xattn_layers=[0, 2]"),
        ({"image_attention": "text_only", "text_only_from": 2}, "text_only_from=2"),
        ({"share_ratio": 1.5}, "share_ratio=1.5"),
        (
            {"placement": "cross_attention", "xattn_layers": (0,), "share_ratio": 0.5},
            "apply only to early or hybrid",
        ),
    ],
)
def test_inconsistent_fusion_is_rejected(fusion: dict, needle: str) -> None:
    with pytest.raises(ValueError, match="invalid ArchConfig") as err:
        arch(**fusion)
    assert needle in str(err.value)
