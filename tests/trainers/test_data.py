from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from trainers.data import (
    DataConfig,
    DataError,
    ShapesVQAConfig,
    VQAData,
    generate_shapes_vqa,
    load_llava_json,
    prepare_data,
)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_generator_is_deterministic(tmp_path: Path) -> None:
    cfg = ShapesVQAConfig(seed=7, train_images=12, val_images=4)
    a = generate_shapes_vqa(tmp_path / "a", cfg)
    b = generate_shapes_vqa(tmp_path / "b", cfg)
    c = generate_shapes_vqa(tmp_path / "c", ShapesVQAConfig(seed=8, train_images=12, val_images=4))
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_generator_writes_llava_format_with_all_question_kinds(shapes_root: Path) -> None:
    records = json.loads((shapes_root / "train.json").read_text())
    kinds = {k for r in records for k in r["question_kinds"]}
    assert kinds == {"attribute", "counting", "spatial", "existence"}
    sizes = set()
    for r in records:
        conv = r["conversations"]
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert conv[0]["value"].startswith("<image>\n")
        assert all(len(t["value"].split()) <= 2 for t in conv[1::2]), "answers are short"
        with Image.open(shapes_root / r["image"]) as im:
            sizes.add(im.size)
    assert len({w / h for w, h in sizes}) >= 3, "varied aspect ratios"


def test_the_description_names_what_is_drawn_and_changes_nothing_else(tmp_path: Path) -> None:
    from trainers.data._shapes import COLORS, DESCRIBE_QUESTION

    on = generate_shapes_vqa(
        tmp_path / "on", ShapesVQAConfig(seed=3, train_images=20, val_images=5, describe=True)
    )
    off = generate_shapes_vqa(
        tmp_path / "off", ShapesVQAConfig(seed=3, train_images=20, val_images=5)
    )
    assert (on / "val.json").read_bytes() == (off / "val.json").read_bytes()
    for a, b in zip(
        json.loads((on / "train.json").read_text()),
        json.loads((off / "train.json").read_text()),
        strict=True,
    ):
        assert a["conversations"][:-2] == b["conversations"]
        assert a["conversations"][-2]["value"] == DESCRIBE_QUESTION
        described = [o.split() for o in a["conversations"][-1]["value"].split(" , ")]
        with Image.open(on / a["image"]) as im:
            pixels = set(im.getdata())
        drawn = {c for c, rgb in COLORS.items() if rgb in pixels}
        assert {o[0] for o in described} == drawn
        assert all(
            o[1] in ("circle", "square", "triangle") and o[2] in ("small", "large")
            for o in described
        )
        assert a["question_kinds"] == [*b["question_kinds"], "description"]
    # the description is trained on, never decoded: validation answers set the length
    data = VQAData.load(on)
    assert data.max_answer_tokens == 2
    assert data.text_len > VQAData.load(off).text_len
    root = prepare_data(DataConfig(describe=True, train_images=20, val_images=5), tmp_path).root
    assert root.name == "shapes_vqa-s0-20x5-desc"


def test_existing_root_with_other_dataset_is_refused(tmp_path: Path) -> None:
    generate_shapes_vqa(tmp_path / "d", ShapesVQAConfig(seed=1, train_images=2, val_images=1))
    with pytest.raises(FileExistsError):
        generate_shapes_vqa(tmp_path / "d", ShapesVQAConfig(seed=2, train_images=2, val_images=1))


def _write(root: Path, records: list) -> None:
    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(root / "ok.png")
    (root / "train.json").write_text(json.dumps(records))
    (root / "val.json").write_text(json.dumps(records))


GOOD = {
    "id": "r0",
    "image": "ok.png",
    "conversations": [
        {"from": "human", "value": "<image>\nwhat is it?"},
        {"from": "gpt", "value": "a thing"},
        {"from": "human", "value": "sure?"},
        {"from": "gpt", "value": "yes"},
    ],
}


def test_loader_reads_good_records(tmp_path: Path) -> None:
    _write(tmp_path, [GOOD])
    (rec,) = load_llava_json(tmp_path, "train")
    assert rec.turns == (("<image>\nwhat is it?", "a thing"), ("sure?", "yes"))
    assert rec.image == (tmp_path / "ok.png").resolve()


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ({**GOOD, "image": "missing.png"}, "image file 'missing.png' not found"),
        ({**GOOD, "image": "../ok.png"}, "points outside the dataset root"),
        ({**GOOD, "conversations": GOOD["conversations"][:1]}, "human/gpt turn pairs"),
        (
            {**GOOD, "conversations": [GOOD["conversations"][1], GOOD["conversations"][0]]},
            "turn 0 must be from 'human'",
        ),
        (
            {
                **GOOD,
                "conversations": [
                    {"from": "human", "value": "no image here"},
                    {"from": "gpt", "value": "x"},
                ],
            },
            "<image> must appear exactly once",
        ),
        (
            {**GOOD, "conversations": [GOOD["conversations"][0], {"from": "gpt", "value": ""}]},
            "has no text",
        ),
        ("just a string", "expected an object"),
    ],
)
def test_loader_rejects_bad_records_naming_them(tmp_path: Path, record, needle: str) -> None:
    _write(tmp_path, [GOOD, record])
    with pytest.raises(DataError) as err:
        load_llava_json(tmp_path, "train")
    assert needle in str(err.value)
    assert "record 1" in str(err.value)
    assert "\n" not in str(err.value)


def test_generator_options_are_refused_for_a_users_data_set(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.describe=True.*data=llava"):
        DataConfig(name="llava", root=str(tmp_path), describe=True)
    with pytest.raises(DataError, match="data.noise=0.2"):
        DataConfig(name="llava", root=str(tmp_path), noise=0.2)


def test_prepare_llava_needs_existing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        prepare_data(DataConfig(name="llava", root=str(tmp_path / "nope")), tmp_path)
    with pytest.raises(DataError, match="missing train.json"):
        prepare_data(DataConfig(name="llava", root=str(tmp_path)), tmp_path)


def test_tokenizer_round_trip_and_lengths(shapes_data: VQAData) -> None:
    tok = shapes_data.tokenizer
    ids = tok.encode("<image>\nWhat shape is the red object?")
    assert ids[0] == tok.image_id and tok.unk_id not in ids
    assert tok.decode(ids[1:]) == "what shape is the red object ?"
    assert tok.encode("zebra") == [tok.unk_id]
    again = type(tok).from_json(tok.to_json())
    assert again.vocab == tok.vocab
    assert shapes_data.max_answer_tokens == 2  # one-word answers + end token
    assert 0 < shapes_data.prior_baseline() < 1
