from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from search_spaces import image_processor
from tests._archs import TINY_ARCH
from trainers.data import (
    PARAPHRASE_WORDS,
    Record,
    ShapesVQAConfig,
    WordTokenizer,
    augment_batch,
    generate_shapes_vqa,
    load_llava_json,
    paraphrase,
    policy_for,
)

IMAGE = "<image>\n"
NO_GEOMETRY = {"crop_scale": (1.0, 1.0), "max_rotation_deg": 0.0}


@pytest.fixture(scope="module")
def shapes_records(tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    root = tmp_path_factory.mktemp("augment") / "shapes"
    generate_shapes_vqa(root, ShapesVQAConfig(seed=11, train_images=40, val_images=2))
    return load_llava_json(root, "train")


def _pixels(batch: int, tiles: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # In [0.1, 0.9] with random signs: asymmetric, never exactly 0 (0 means padding).
    magnitude = 0.1 + 0.8 * torch.rand(batch, tiles, 3, size, size, generator=g)
    sign = torch.randint(0, 2, magnitude.shape, generator=g) * 2 - 1
    return magnitude * sign


def _run(pixels: torch.Tensor, flip: list[bool], jit: list[bool], seed: int = 0, **kw):
    return augment_batch(
        pixels,
        torch.ones(pixels.shape[:2]),
        torch.tensor(flip),
        torch.tensor(jit),
        torch.Generator().manual_seed(seed),
        **kw,
    )


def _record(*turns: tuple[str, str]) -> Record:
    first = ((IMAGE + turns[0][0], turns[0][1]),)
    return Record("r", Path("x.png"), first + tuple(turns[1:]))


def test_policy_matches_whole_words_case_insensitively() -> None:
    assert policy_for(_record(("how many objects are there?", "two"))) == (True, True)
    assert policy_for(_record(("which is the Leftmost shape?", "circle"))) == (False, True)
    assert policy_for(_record(("where is it?", "RIGHT"))) == (False, True)
    assert policy_for(_record(("what Colour is it?", "dark"))) == (True, False)
    assert policy_for(_record(("a?", "b"), ("is it cyan?", "no"))) == (True, False)
    # Substrings of other words do not count.
    assert policy_for(_record(("is it bright or redone?", "bright"))) == (True, True)


def test_policy_on_generated_shapes_records(shapes_records: list[Record]) -> None:
    lr_ids = {
        r.ident
        for r in shapes_records
        if any(text in ("left", "right") for turn in r.turns for text in turn)
    }
    assert lr_ids and len(lr_ids) < len(shapes_records), "data must have both kinds"
    for r in shapes_records:
        allow_flip, allow_jitter = policy_for(r)
        assert allow_flip == (r.ident not in lr_ids), r.turns
        # Every record has a colour-naming attribute or existence question.
        assert not allow_jitter, r.turns


def test_flip_only_where_allowed() -> None:
    pixels = _pixels(2)
    assert not torch.allclose(pixels[0], pixels[0].flip(-1))
    out = _run(pixels, [True, False], [True, True], flip_p=1.0, jitter=0.0, **NO_GEOMETRY)
    torch.testing.assert_close(out[0], pixels[0].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], pixels[1], atol=1e-5, rtol=0)


def test_jitter_only_where_allowed() -> None:
    pixels = _pixels(2)
    out = _run(pixels, [True, True], [False, True], flip_p=0.0, jitter=0.3, **NO_GEOMETRY)
    torch.testing.assert_close(out[0], pixels[0], atol=1e-5, rtol=0)
    assert (out[1] - pixels[1]).abs().max() > 0.01
    assert out.abs().max() <= 1.0


def test_crop_and_rotation_change_every_sample_the_same_way_per_tile() -> None:
    pixels = _pixels(2).clone()
    pixels[:, 1] = pixels[:, 0]  # two identical tiles in each sample
    out = _run(pixels, [False, False], [False, False], crop_scale=(0.5, 0.6), max_rotation_deg=20)
    for i in range(2):
        assert (out[i] - pixels[i]).abs().max() > 0.1
        torch.testing.assert_close(out[i, 1], out[i, 0])


def test_padding_stays_padding_and_input_is_untouched() -> None:
    pixels = _pixels(2, tiles=4)
    pixels[0, :, :, :2] = -1.0  # letterbox rows inside real tiles (the processor's -1)
    before = pixels.clone()
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    out = augment_batch(
        pixels,
        mask,
        torch.tensor([True, True]),
        torch.tensor([True, True]),
        torch.Generator().manual_seed(3),
        jitter=0.5,
        flip_p=1.0,
        **NO_GEOMETRY,
    )
    assert torch.equal(pixels, before)
    assert torch.equal(out[mask == 0], pixels[mask == 0]), "padding tiles are left as they are"
    assert torch.all(out[mask == 1].abs().sum() > 0)
    assert torch.all(out[0, :2, :, :2] == -1.0), "padding pixels are not jittered"


def test_letterbox_padding_of_the_image_processor_is_not_jittered() -> None:
    """The padding the image processor puts around a wide image in its grid tiles (-1
    after normalisation) is padding to augmentation too: it is not jittered."""
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (20, 64, 3), dtype=np.uint8))
    tiles = torch.from_numpy(image_processor(TINY_ARCH)(wide, return_tensors="np")["pixel_values"])
    assert tiles.shape[1] == TINY_ARCH.max_tiles  # the base view and the 1x2 grid
    pixels, mask = tiles, torch.ones(1, TINY_ARCH.max_tiles)
    grid = pixels[0, 1:3]  # the 1x2 grid's tiles, the image centred with rows above and below
    letterbox = (grid == grid[0, 0, 0, 0]).all(dim=(0, 1, 3))  # (rows,) padding rows
    assert letterbox[0] and letterbox[-1] and not letterbox.all()
    for seed in range(4):  # brighter and darker: a darker shift clamps to -1 anyway
        out = augment_batch(
            pixels,
            mask,
            torch.tensor([False]),
            torch.tensor([True]),
            torch.Generator().manual_seed(seed),
            jitter=0.5,
            **NO_GEOMETRY,
        )
        changed = (out[0, 1:3, :, letterbox] - grid[:, :, letterbox]).abs().max()
        assert changed == 0, f"seed {seed}: padding {float(grid[0, 0, 0, 0])} jittered by {changed}"
        assert (out[0, 1:3, :, ~letterbox] - grid[:, :, ~letterbox]).abs().max() > 0.01


def test_same_seed_same_output_other_seed_other_output() -> None:
    pixels = _pixels(3)
    a = _run(pixels, [True] * 3, [True] * 3, seed=5)
    b = _run(pixels, [True] * 3, [True] * 3, seed=5)
    c = _run(pixels, [True] * 3, [True] * 3, seed=6)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="tile_mask"):
        augment_batch(
            _pixels(2),
            torch.ones(2, 2),
            torch.tensor([True, True]),
            torch.tensor([True, True]),
            torch.Generator(),
        )


def _words(text: str) -> set[str]:
    return set(WordTokenizer.build([text]).vocab[5:])


def test_paraphrase_keeps_answers_and_image_token(shapes_records: list[Record]) -> None:
    rng = random.Random(0)
    changed_kinds: set[str] = set()
    paraphrased = []
    for r in shapes_records:
        p = paraphrase(r, rng)
        paraphrased.append(p)
        assert [a for _, a in p.turns] == [a for _, a in r.turns]
        assert p.kinds == r.kinds and p.ident == r.ident and p.image == r.image
        assert p.turns[0][0].startswith(IMAGE)
        assert sum(q.count("<image>") for q, _ in p.turns) == 1
        for (old, _), (new, _), kind in zip(r.turns, p.turns, r.kinds or (), strict=True):
            if new != old:
                changed_kinds.add(kind)
                assert _words(new) - _words(old) <= PARAPHRASE_WORDS, new
    assert changed_kinds == {"attribute", "counting", "spatial", "existence"}
    # A tokenizer built with PARAPHRASE_WORDS knows every paraphrased question.
    texts = [t for r in shapes_records for turn in r.turns for t in turn]
    tok = WordTokenizer.build([*texts, *PARAPHRASE_WORDS])
    for p in paraphrased:
        for q, _ in p.turns:
            assert tok.unk_id not in tok.encode(q), q


def test_paraphrase_leaves_unknown_questions() -> None:
    r = _record(("describe the picture?", "shapes"), ("is there a red object?", "yes"))
    rng = random.Random(1)
    outs = {paraphrase(r, rng).turns for _ in range(20)}
    assert all(turns[0] == r.turns[0] for turns in outs)
    assert len({turns[1][0] for turns in outs}) == 3  # original + two rewrites
