"""The model family: transformers' LLaVA-NeXT, and vlmnas's static view of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaNextForConditionalGeneration

from search_spaces import (
    ArchConfig,
    EncodedVQA,
    FusionConfig,
    VisionTowerConfig,
    build_model,
    exact_match,
    greedy_decode,
    image_index,
    image_processor,
    is_plain,
    load_pretrained,
    max_image_tokens,
    pad_indices,
    save_pretrained,
    tiles_of,
)

# (height, width) of the shapes-VQA canvases: every AnyRes grid and unpadding case
SIZES = [(64, 64), (64, 96), (96, 64), (64, 128), (128, 64), (96, 96)]
ARCH = ArchConfig()  # the default: LLaVA-NeXT's own settings at a small size
IMAGE = 2


def _batch(arch: ArchConfig, sizes=SIZES, text=(7, 8, 9, 3), seed=0):
    """Processed images of `sizes` and LLaVA-NeXT prompts: <image> expanded, then text."""
    rng = np.random.default_rng(seed)
    proc = image_processor(arch)
    pixels = np.zeros((len(sizes), arch.max_tiles, 3, 32, 32), np.float32)
    indices, hw = [], []
    for i, (h, w) in enumerate(sizes):
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        out = proc(img, return_tensors="np")
        tiles = out["pixel_values"][0]
        pixels[i, : len(tiles)] = tiles
        indices.append(image_index((h, w), arch))
        hw.append(tuple(out["image_sizes"][0]))
    counts = [len(i) for i in indices]
    length = max(counts) + len(text)
    ids = np.zeros((len(sizes), length), np.int64)
    for i, n in enumerate(counts):
        ids[i, :n] = IMAGE
        ids[i, n : n + len(text)] = text
    return pixels, pad_indices(indices, arch), ids, counts, hw


def test_packing_matches_the_image_processor_tiles():
    for h, w in SIZES:
        out = image_processor(ARCH)(Image.new("RGB", (w, h)), return_tensors="np")
        assert out["pixel_values"].shape[1] == tiles_of((h, w), ARCH)
        assert len(image_index((h, w), ARCH)) <= max_image_tokens(ARCH)


def test_plain_candidate_computes_what_transformers_computes():
    model = build_model(ARCH, vocab_size=20, image_token_id=IMAGE, seed=0).eval()
    assert is_plain(ARCH)
    pixels, index, ids, counts, hw = _batch(ARCH)
    with torch.no_grad():
        ours = model(torch.from_numpy(pixels), torch.from_numpy(index), torch.from_numpy(ids))
        for i, (n, size) in enumerate(zip(counts, hw, strict=True)):
            length = n + 4  # one image per call: transformers' own packing and splice
            ref = model.hf(
                input_ids=torch.from_numpy(ids[i : i + 1, :length]),
                pixel_values=torch.from_numpy(pixels[i : i + 1, : tiles_of(size, ARCH)]),
                image_sizes=torch.tensor([size]),
            ).logits
            torch.testing.assert_close(ours[i : i + 1, :length], ref, rtol=1e-5, atol=1e-5)


def test_padding_tiles_and_index_slots_are_invisible():
    model = build_model(ARCH, vocab_size=20, image_token_id=IMAGE, seed=0).eval()
    pixels, index, ids, counts, hw = _batch(ARCH, sizes=[(64, 128)])
    assert tiles_of(hw[0], ARCH) < ARCH.max_tiles
    changed = pixels.copy()
    changed[0, tiles_of(hw[0], ARCH) :] = 1.0
    with torch.no_grad():
        a = model(torch.from_numpy(pixels), torch.from_numpy(index), torch.from_numpy(ids))
        b = model(torch.from_numpy(changed), torch.from_numpy(index), torch.from_numpy(ids))
        torch.testing.assert_close(a, b)
        changed[0, 1] += 1.0  # a real tile does matter
        c = model(torch.from_numpy(changed), torch.from_numpy(index), torch.from_numpy(ids))
    assert not torch.allclose(a, c, atol=1e-5)


def test_plain_candidate_saves_as_a_plain_llava_next(tmp_path):
    model = build_model(ARCH, vocab_size=20, image_token_id=IMAGE, seed=1).eval()
    save_pretrained(model, tmp_path)
    hf = LlavaNextForConditionalGeneration.from_pretrained(tmp_path).eval()
    pixels, index, ids, counts, hw = _batch(ARCH, sizes=[(96, 64)])
    with torch.no_grad():
        ours = model(torch.from_numpy(pixels), torch.from_numpy(index), torch.from_numpy(ids))
        ref = hf(
            input_ids=torch.from_numpy(ids),
            pixel_values=torch.from_numpy(pixels[:, : tiles_of(hw[0], ARCH)]),
            image_sizes=torch.tensor(hw),
        ).logits
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "arch",
    [
        ArchConfig(
            fusion=FusionConfig(
                placement="hybrid",
                xattn_layers=(0,),
                gating="token",
                share_ratio=0.5,
                image_attention="text_only",
                text_only_from=1,
            ),
            projector_depth=1,
        ),
        ArchConfig(
            vision=VisionTowerConfig(pooling="avg2x2", pos_encoding="sincos_2d"),
            fusion=FusionConfig(placement="cross_attention", xattn_layers=(1,), gating="tanh"),
        ),
    ],
    ids=["hybrid", "cross_attention"],
)
def test_every_candidate_reloads_through_load_pretrained(arch, tmp_path):
    model = build_model(arch, vocab_size=20, image_token_id=IMAGE, seed=2).eval()
    for p in model.parameters():  # move the zero-initialised gates too
        p.data.add_(0.01 * torch.randn_like(p)) if p.requires_grad else None
    assert not is_plain(arch)
    save_pretrained(model, tmp_path)
    loaded = load_pretrained(tmp_path)
    pixels, index, ids, _, _ = _batch(arch, sizes=[(64, 64), (128, 64)])
    if not arch.fusion.early:
        ids = ids[:, -5:].copy()
        ids[:, 0] = IMAGE
    args = (torch.from_numpy(pixels), torch.from_numpy(index), torch.from_numpy(ids))
    with torch.no_grad():
        torch.testing.assert_close(loaded(*args), model(*args))


def test_load_pretrained_refuses_a_folder_without_a_record(tmp_path):
    model = build_model(ARCH, vocab_size=20, image_token_id=IMAGE, seed=1)
    model.hf.config.vlmnas = {}
    model.hf.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no vlmnas record"):
        load_pretrained(tmp_path)


def test_greedy_decode_and_exact_match_with_scripted_model() -> None:
    # a fake "model" that answers token 7 then end token (4) whatever it is asked
    def forward(pixels, index, ids):
        logits = np.zeros((*ids.shape, 10), dtype=np.float32)
        prev = ids
        logits[..., 7] = np.where(prev == 7, 0, 1)
        logits[..., 4] = np.where(prev == 7, 2, 0)
        return logits

    prompts = np.array([[2, 5, 3, 0, 0, 0], [2, 6, 6, 3, 0, 0]])
    batch = EncodedVQA(
        pixel_values=np.zeros((2, 1, 3, 4, 4), np.float32),
        tile_mask=np.ones((2, 1), np.float32),
        image_index=np.zeros((2, 1), np.int64),
        prompt_ids=prompts,
        prompt_lens=np.array([3, 4]),
        answer_ids=np.array([[7, -1], [7, 7]]),
        eos_id=4,
        pad_id=0,
    )
    out = greedy_decode(forward, batch, max_new_tokens=3)
    assert out.tolist() == [[7, 4, -1], [7, 4, -1]]
    assert exact_match(out, batch).tolist() == [True, False]
