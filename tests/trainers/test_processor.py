from __future__ import annotations

import random
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from search_spaces import ArchConfig, VisionTowerConfig
from trainers.data._llava import Record, WordTokenizer, conversation_ids, records_text
from trainers.data._processor import (
    CHAT_TEMPLATE,
    PY_WHITESPACE,
    conversation_messages,
    hf_processor,
    hf_tokenizer,
)

TILE, PATCH = 32, 8
GRIDS = ((1, 1), (1, 2), (2, 1), (2, 2))
# Verbatim, these are atomic special tokens in the HF tokenizer (the chat template writes
# <sep> and <eos> as text) while WordTokenizer splits them into "<", word, ">".
ATOMIC = ("<sep>", "<eos>", "<pad>", "<unk>")

RECORD = Record(
    ident="r0",
    image=Path("/nonexistent.png"),
    turns=(
        ("<image>\nWhat shape is the RED object?", "circle"),
        ("How many objects are there, in total?", "3"),
        ("Is the circle left of the square's edge?", "yes, it is."),
    ),
)
TOK = WordTokenizer.build(
    [
        *records_text([RECORD]),
        "the blue square is left of 2 triangles; zebra-7 ok!",
        "éclair naïve straße ünïcode",
    ]
)
USER_EXAMPLE: list[dict[str, Any]] = [
    {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": "what shape is the red object?"}],
    },
    {"role": "assistant", "content": [{"type": "text", "text": "circle"}]},
    {"role": "user", "content": [{"type": "text", "text": "how many objects are there?"}]},
]


@pytest.fixture(scope="module")
def hf_tok() -> Any:  # transformers.PreTrainedTokenizerFast
    return hf_tokenizer(TOK)


@pytest.fixture(scope="module")
def processor() -> Any:  # transformers.LlavaNextProcessor
    return hf_processor(
        TOK,
        ArchConfig(
            vision=VisionTowerConfig(tile_size=TILE, patch_size=PATCH), grid_pinpoints=GRIDS
        ),
    )


def test_whitespace_set_is_pythons_backslash_s() -> None:
    everything = "".join(chr(i) for i in range(sys.maxunicode + 1) if not 0xD800 <= i < 0xE000)
    assert PY_WHITESPACE == "".join(re.findall(r"\s", everything))
    assert PY_WHITESPACE == "".join(c for c in everything if c.isspace())


FIXED_TEXTS = [
    "",
    "   ",
    "<image>\nWhat shape is the RED object?",
    "<image>",
    "<IMAGE>\nwhat",
    "see<image>here",
    "x <image> y <image>",
    "Is the circle left of the square's edge?",
    "zebra-7, 2 triangles; ok!!",
    "3.14159 and 42nd 007",
    "UPPER lower MiXeD",
    "unknownword another1 qqq",
    "tabs\tand\nnewlines\r\nand\x0bvt\x0cff",
    "odd\x1cspaces\x1d\x1e\x1fhere\x85\xa0\u2003\u3000end",
    "zero\u200bwidth",  # not whitespace in Python: one unknown char
    "éclair NAÏVE Straße ÜNÏCODE",
    "İstanbul \u212aelvin",
    "emoji 🙂 and 中文 text",
    "<Sep> <SEP> < sep > <sep",
    "<sepx> <eos >",
    "a<b>c <<image>> <im age>",
    "quote \"this\" and 'that' `code`",
]


def _random_texts(n: int, seed: int = 0) -> list[str]:
    pieces = [
        *TOK.vocab[5:],
        "the",
        "RED",
        "Circle",
        "qwerty",
        "x9",
        "12",
        "<image>",
        "<IMAGE>",
        "<",
        ">",
        "sep",
        "eos",
        "?",
        "!",
        ",",
        ".",
        "'",
        "-",
        "é",
        "ß",
        "İ",
        "\u212a",
        "🙂",
        "中",
        "\u0301",
        *PY_WHITESPACE,
        " ",
        " ",
        "\n",
    ]
    rng = random.Random(seed)
    texts: list[str] = []
    while len(texts) < n:
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 25)))
        if not any(s in text for s in ATOMIC):
            texts.append(text)
    return texts


def test_ids_equal_word_tokenizer(hf_tok: Any) -> None:
    texts = FIXED_TEXTS + _random_texts(3000)
    got = hf_tok(texts, add_special_tokens=False).input_ids
    for text, ids in zip(texts, got, strict=True):
        assert ids == TOK.encode(text), repr(text)
    # nothing is added around the text (no BOS/EOS post-processing)
    assert hf_tok(texts[2]).input_ids == TOK.encode(texts[2])
    assert hf_tok.bos_token is None


def test_special_tokens_and_ids(hf_tok: Any) -> None:
    assert len(hf_tok) == len(TOK)
    assert hf_tok.get_vocab() == {w: i for i, w in enumerate(TOK.vocab)}
    assert (hf_tok.pad_token_id, hf_tok.unk_token_id, hf_tok.eos_token_id) == (
        TOK.pad_id,
        TOK.unk_id,
        TOK.eos_id,
    )
    assert (hf_tok.image_token, hf_tok.image_token_id) == ("<image>", TOK.image_id)
    assert hf_tok.sep_token_id == TOK.sep_id
    assert {"<image>", "<sep>", "<eos>", "<pad>"} <= set(hf_tok.all_special_tokens)


def test_verbatim_special_strings_are_atomic(hf_tok: Any) -> None:
    """The one documented difference from WordTokenizer.encode."""
    for s in ATOMIC:
        assert hf_tok(f"what{s}now", add_special_tokens=False).input_ids == [
            TOK.encode("what")[0],
            TOK.vocab.index(s),
            TOK.encode("now")[0],
        ]
        assert len(TOK.encode(s)) == 3


def test_decode_joins_with_spaces(hf_tok: Any) -> None:
    ids, _ = conversation_ids(TOK, RECORD)
    assert hf_tok.decode(ids) == TOK.decode(ids)
    assert hf_tok.decode(TOK.encode("yes, it is.")) == "yes , it is ."


def test_conversation_messages() -> None:
    messages = conversation_messages(RECORD)
    assert messages[0] == {
        "role": "user",
        "content": [
            {"type": "image"},
            {"type": "text", "text": "What shape is the RED object?"},
        ],
    }
    assert messages[1] == {"role": "assistant", "content": [{"type": "text", "text": "circle"}]}
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3
    assert not any("<image>" in item.get("text", "") for m in messages for item in m["content"])
    assert sum(item["type"] == "image" for m in messages for item in m["content"]) == 1


@pytest.mark.parametrize(
    "first",
    ["<image>\nWhat shape is the RED object?", "What shape is <image> the RED object?", "<image>"],
)
def test_chat_template_renders_conversation_ids(hf_tok: Any, first: str) -> None:
    record = Record("r", RECORD.image, ((first, "circle"), *RECORD.turns[1:]))
    messages = conversation_messages(record)
    text = hf_tok.apply_chat_template(messages, tokenize=False)
    ids, is_answer = conversation_ids(TOK, record)
    assert hf_tok(text, add_special_tokens=False).input_ids == ids
    # generation blocks mark exactly the answer and end tokens
    out = hf_tok.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert out["input_ids"] == ids
    assert out["assistant_masks"] == [int(a) for a in is_answer]


def test_generation_prompt_ends_after_sep(hf_tok: Any, processor: Any) -> None:
    messages = conversation_messages(RECORD)[:-1]  # up to the last question
    for renderer in (hf_tok, processor):
        text = renderer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert text.endswith("<sep>")
        ids, _ = conversation_ids(TOK, RECORD)
        last_answer = TOK.encode(RECORD.turns[-1][1]) + [TOK.eos_id]
        assert hf_tok(text, add_special_tokens=False).input_ids == ids[: -len(last_answer)]


def test_user_example_renders_vlmnas_format(processor: Any) -> None:
    text = processor.apply_chat_template(USER_EXAMPLE, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<image>\nwhat shape is the red object?<sep>circle<eos>how many objects are there?<sep>"
    )
    words = processor.tokenizer.convert_ids_to_tokens(
        processor.tokenizer(text, add_special_tokens=False).input_ids
    )
    assert words[0] == "<image>" and words[-1] == "<sep>"
    assert words.count("<image>") == 1 and words.count("<eos>") == 1


def test_chat_template_rejects_other_roles(hf_tok: Any) -> None:
    with pytest.raises(Exception, match="only user and assistant"):
        hf_tok.apply_chat_template([{"role": "system", "content": "be nice"}], tokenize=False)


def test_processor_classes(processor: Any) -> None:
    from transformers import LlavaNextProcessor as Processor
    from transformers.models.llava_next.image_processing_pil_llava_next import (
        LlavaNextImageProcessorPil,
    )

    assert isinstance(processor, Processor)
    assert isinstance(processor.image_processor, LlavaNextImageProcessorPil)
    ip = processor.image_processor
    assert ip.image_grid_pinpoints == [[32, 32], [32, 64], [64, 32], [64, 64]]
    assert (processor.patch_size, processor.num_additional_image_tokens) == (PATCH, 1)
    assert processor.vision_feature_select_strategy == "default"
    assert processor.image_token_id == TOK.image_id
    assert processor.chat_template == CHAT_TEMPLATE


def _image(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(w * 1000 + h)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# `<image>` expands to base (tile/patch)^2 = 16 features (CLS +1, dropped by "default")
# plus the unpadded grid features with one newline per grid feature row:
# 64x64, 96x96 -> 2x2 grid, 8x8 + 8 rows; 96x64 -> 2x2, 6x8 + 6; 64x96 -> 2x2, 8x6 + 8;
# 128x64 -> 1x2, 4x8 + 4; 64x128 -> 2x1, 8x4 + 8.
EXPECTED = {  # (w, h): (N image tokens, tiles incl. the base view)
    (64, 64): (88, 5),
    (96, 64): (70, 5),
    (64, 96): (72, 5),
    (128, 64): (52, 3),
    (64, 128): (56, 3),
    (96, 96): (88, 5),
}


@pytest.mark.parametrize(("w", "h"), list(EXPECTED))
def test_processor_expands_image_token(processor: Any, w: int, h: int) -> None:
    text = processor.apply_chat_template(
        USER_EXAMPLE[:1], add_generation_prompt=True, tokenize=False
    )
    out = processor(images=_image(w, h), text=text, return_tensors="pt")
    ids = out["input_ids"][0].tolist()
    n, tiles = EXPECTED[(w, h)]
    assert ids.count(TOK.image_id) == n > 1
    assert ids[:n] == [TOK.image_id] * n
    assert ids[n:] == TOK.encode("what shape is the red object?") + [TOK.sep_id]
    assert tuple(out["pixel_values"].shape) == (1, tiles, 3, TILE, TILE)
    assert out["image_sizes"].tolist() == [[h, w]]
    assert out["pixel_values"].min() >= -1.0 and out["pixel_values"].max() <= 1.0
    assert processor._get_num_multimodal_tokens(image_sizes=[(h, w)]).num_image_tokens == [n]


def test_save_and_reload_offline(
    processor: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoProcessor, AutoTokenizer

    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is type(processor)
    assert type(loaded.image_processor) is type(processor.image_processor)
    assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
    assert (loaded.patch_size, loaded.num_additional_image_tokens) == (PATCH, 1)
    assert loaded.vision_feature_select_strategy == "default"
    assert loaded.image_token_id == TOK.image_id
    assert loaded.chat_template == CHAT_TEMPLATE
    assert tok.chat_template == CHAT_TEMPLATE
    texts = FIXED_TEXTS + _random_texts(200, seed=1)
    assert tok(texts, add_special_tokens=False).input_ids == [TOK.encode(t) for t in texts]
    assert loaded.tokenizer.get_vocab() == {w: i for i, w in enumerate(TOK.vocab)}

    text = loaded.apply_chat_template(USER_EXAMPLE, add_generation_prompt=True, tokenize=False)
    image = _image(64, 96)
    a = processor(images=image, text=text, return_tensors="pt")
    b = loaded(images=image, text=text, return_tensors="pt")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), key
