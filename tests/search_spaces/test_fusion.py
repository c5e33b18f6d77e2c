"""Fusion placement, gating, attention masks and modality FFN sharing."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from search_spaces import ArchConfig, LanguageModelConfig, VisionTowerConfig, build_model
from search_spaces._arch import FusionConfig
from search_spaces._model import ModalityFFN

LM = LanguageModelConfig(depth=2, width=32, heads=2, mlp_ratio=2)
VISION = VisionTowerConfig(depth=2, width=32, heads=2)
GRIDS = ((1, 1), (1, 2))


def arch(**fusion) -> ArchConfig:
    return ArchConfig(vision=VISION, lm=LM, grid_pinpoints=GRIDS, fusion=FusionConfig(**fusion))


def inputs(a: ArchConfig, img_pos: int = 0, length: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 30, (2, length), generator=g)
    ids[:, img_pos] = 2
    return torch.randn(2, a.max_tiles, 3, 32, 32, generator=g), torch.ones(2, a.max_tiles), ids


def model(a: ArchConfig):
    torch.manual_seed(0)
    return build_model(a, vocab_size=30, max_text_len=10, image_token_id=2).eval()


@pytest.mark.parametrize("gating", ["tanh", "channel", "token"])
@pytest.mark.parametrize("placement", ["cross_attention", "hybrid"])
def test_zero_initialised_gates_leave_text_path_unchanged(placement: str, gating: str) -> None:
    a = arch(placement=placement, xattn_layers=(0, 1), gating=gating)
    m = model(a)
    pixels, mask, ids = inputs(a)
    with torch.no_grad():
        with_blocks = m(pixels, mask, ids)
        blocks, m.xattn = m.xattn, torch.nn.ModuleDict()
        without = m(pixels, mask, ids)
        m.xattn = blocks
    assert torch.allclose(with_blocks, without, atol=1e-6)
    if placement == "cross_attention":  # the image reaches the text only through the gates
        with torch.no_grad():
            assert torch.allclose(m(torch.randn_like(pixels), mask, ids), with_blocks, atol=1e-6)


def test_ungated_cross_attention_does_use_the_image() -> None:
    a = arch(placement="cross_attention", xattn_layers=(0,), gating="none")
    m = model(a)
    pixels, mask, ids = inputs(a)
    with torch.no_grad():
        assert not torch.allclose(
            m(pixels, mask, ids), m(torch.randn_like(pixels), mask, ids), atol=1e-4
        )


def _attention_weights(m, pixels, mask, ids):
    """Softmax weights of every LM self-attention layer, captured by a hook on softmax."""
    captured = []
    original = torch.softmax

    def spy(x, dim):
        out = original(x, dim=dim)
        captured.append(out)
        return out

    torch.softmax = spy
    try:
        with torch.no_grad():
            m(pixels, mask, ids)
    finally:
        torch.softmax = original
    # vision tower layers come first; the LM's follow, one per block
    return captured[-len(m.blocks) :]


def _layout(a: ArchConfig, img_pos: int, length: int = 10):
    n = a.image_tokens
    s = length - 1 + n
    is_img = torch.zeros(s, dtype=torch.bool)
    is_img[img_pos : img_pos + n] = True
    return is_img


def test_full_mask_is_causal_only() -> None:
    a = arch(image_attention="full")
    pixels, mask, ids = inputs(a, img_pos=3)
    for w in _attention_weights(model(a), pixels, mask, ids):
        causal = torch.ones_like(w[0, 0], dtype=torch.bool).tril()
        assert (w[:, :, ~causal] == 0).all()  # no attention to the future
        assert (w[:, :, causal] > 0).all()  # and nothing else blocked


def test_image_no_text_blocks_exactly_image_to_text() -> None:
    a = arch(image_attention="image_no_text")
    pixels, mask, ids = inputs(a, img_pos=3)  # three text tokens precede the image
    is_img = _layout(a, 3)
    blocked = is_img[:, None] & ~is_img[None, :]
    for w in _attention_weights(model(a), pixels, mask, ids):
        causal = torch.ones_like(w[0, 0], dtype=torch.bool).tril()
        assert (w[:, :, blocked & causal] == 0).all()
        assert (w[:, :, ~blocked & causal] > 0).all()


def test_text_only_layers_hide_image_from_text_from_the_chosen_layer() -> None:
    a = arch(image_attention="text_only", text_only_from=1)
    pixels, mask, ids = inputs(a, img_pos=0)
    is_img = _layout(a, 0)
    text_to_image = ~is_img[:, None] & is_img[None, :]
    first, second = _attention_weights(model(a), pixels, mask, ids)
    causal = torch.ones_like(first[0, 0], dtype=torch.bool).tril()
    assert (first[:, :, text_to_image & causal] > 0).all()  # layer 0: full
    assert (second[:, :, text_to_image] == 0).all()  # layer 1: text is blind to the image
    assert (second[:, :, ~text_to_image & causal] > 0).all()


def test_padding_tiles_are_hidden_from_cross_attention() -> None:
    a = arch(placement="cross_attention", xattn_layers=(0, 1), gating="none")
    m = model(a)
    pixels, mask, ids = inputs(a)
    mask[:, 2:] = 0
    changed = pixels.clone()
    changed[:, 2:] = torch.randn_like(changed[:, 2:])
    with torch.no_grad():
        assert torch.allclose(m(pixels, mask, ids), m(changed, mask, ids), atol=1e-5)


@pytest.mark.parametrize(
    ("share", "expected"),
    [
        # width 64, hidden 128. share 1: one MLP 64->128->64
        (1.0, (64 * 128 + 128) + (128 * 64 + 64)),
        # share 0.5: shared 64 units, and 64 private units for text and again for image
        (0.5, 3 * ((64 * 64 + 64) + (64 * 64 + 64))),
        # share 0: two full MLPs (a visual expert)
        (0.0, 2 * ((64 * 128 + 128) + (128 * 64 + 64))),
    ],
)
def test_share_ratio_parameter_count_matches_hand_count(share: float, expected: int) -> None:
    ffn = ModalityFFN(64, 128, share)
    assert sum(p.numel() for p in ffn.parameters()) == expected


def test_share_ratio_changes_model_parameters_by_exactly_the_ffn_difference() -> None:
    counts = {}
    for share in (0.0, 0.5, 1.0):
        counts[share] = sum(p.numel() for p in model(arch(share_ratio=share)).parameters())
    per_layer = {
        s: sum(p.numel() for p in ModalityFFN(32, 64, s).parameters()) for s in (0.0, 0.5, 1.0)
    }
    for s in (0.0, 0.5):
        assert counts[s] - counts[1.0] == LM.depth * (per_layer[s] - per_layer[1.0])


def test_modality_ffn_routes_tokens_by_modality() -> None:
    torch.manual_seed(0)
    ffn = ModalityFFN(8, 16, 0.0)
    x = torch.randn(1, 4, 8)
    is_image = torch.tensor([1.0, 0.0, 1.0, 0.0]).reshape(1, 4, 1)
    out = ffn(x, is_image)
    assert torch.allclose(out[0, 0], ffn.image(x)[0, 0]) and torch.allclose(
        out[0, 1], ffn.text(x)[0, 1]
    )


def test_pooling_and_feature_layer_change_tokens_and_layers() -> None:
    pooled = dataclasses.replace(VISION, pooling="avg2x2")
    assert ArchConfig(vision=pooled).image_tokens * 4 == ArchConfig(vision=VISION).image_tokens
    m = model(
        ArchConfig(
            vision=dataclasses.replace(VISION, feature_layer="second_last"),
            lm=LM,
            grid_pinpoints=GRIDS,
        )
    )
    assert len(m.vision.blocks) == VISION.depth - 1


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
