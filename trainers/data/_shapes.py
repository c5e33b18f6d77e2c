"""Seeded shapes-VQA generator writing a LLaVA-Instruct-format dataset.

Each image (varied aspect ratios) holds 1-4 non-overlapping objects, each with its own
colour (colours are unique within an image, so a colour names an object), a shape, a
size and a position. Each record asks one question of each kind, in random order:

- attribute: "what shape is the red object?" / "what size is the red object?"
- counting: "how many circles are there?" / "how many objects are there?" (zero..four)
- spatial relation: "where is the red object relative to the blue object?"
  (left / right / above / below, only asked when the offset is unambiguous; otherwise
  an existence question takes its place)
- existence: "is there a green object?" (yes / no, balanced)

Referring to objects by colour keeps every question answerable from the image while
sparing tiny models the colour-and-shape binding that needs far more training steps than
a few-minute search can give (measured: with "the red circle"-style references, models
stayed at the blind-guess level after 800 steps).

With `describe`, each training record ends with one more turn, as LLaVA's training
data mixes descriptions with questions: "describe the objects." ->
"red circle large , blue square small" (left to right). Validation records do not have
it, so accuracy is over the four kinds above. Without it, models never learn to read the
colour words: they answer from the question's kind and the image's object count, and
stay near 0.5 whatever the budget; with it, the Quick start's baseline jumped to 0.65-0.7
and the shipped checkpoint to 0.82 after about 2,000 steps at a high learning rate
(BENCHMARKS §14, "Why models stopped near 0.5"). `vlmnas pretrain` turns it on; it is
off by default, since a search's few-minute budget ends before that point and the turn
lengthens every sequence by about 20 tokens. It comes last, after the questions, so
that no answer can be read off its text.

Output: `<root>/train.json`, `<root>/val.json`, `<root>/images/<split>_<i>.png`, and
`<root>/manifest.json` with the generator parameters. Same seed, same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 210, 40),
    "purple": (160, 60, 200),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 5, "large": 10}  # half-extent in pixels
CANVASES = ((64, 64), (96, 64), (64, 96), (128, 64), (64, 128), (96, 96))  # (width, height)
NUMBERS = ("zero", "one", "two", "three", "four")
QUESTION_KINDS = ("attribute", "counting", "spatial", "existence")
_BACKGROUND = (30, 30, 36)


@dataclass(frozen=True)
class ShapesVQAConfig:
    seed: int = 0
    train_images: int = 3000
    val_images: int = 150
    questions_per_image: int = 4
    max_objects: int = 4
    # Training records end with a description turn (module docstring).
    describe: bool = False
    # Share of training records whose image is swapped for another record's (marked
    # "mismatched": true): the wrong pairs of web-scraped data, for data-hygiene studies.
    noise: float = 0.0


@dataclass(frozen=True)
class _Obj:
    color: str
    shape: str
    size: str
    x: int
    y: int

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


def generate_shapes_vqa(root: Path, config: ShapesVQAConfig) -> Path:
    """Write the dataset to `root` atomically (build in a temp dir, then rename).

    An existing `root` whose manifest matches `config` is reused as is.
    """
    root = Path(root)
    manifest = {"generator": "shapes_vqa", **asdict(config)}
    if not config.noise:
        manifest.pop("noise")  # data generated before the option existed stays valid
    if not config.describe:
        manifest.pop("describe")
    if not 0.0 <= config.noise < 1.0:
        raise ValueError(f"data.noise={config.noise}: must be in [0, 1)")
    if _matches(root, manifest):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        (tmp / "images").mkdir()
        rng = np.random.default_rng(config.seed)
        for split, count in (("train", config.train_images), ("val", config.val_images)):
            describe = config.describe and split == "train"
            records = [
                _make_record(rng, tmp, f"{split}_{i:05d}", config, describe=describe)
                for i in range(count)
            ]
            if split == "train" and config.noise:
                _mismatch(records, config.noise, np.random.default_rng(config.seed + 1))
            (tmp / f"{split}.json").write_text(json.dumps(records, indent=1))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        try:
            os.replace(tmp, root)
        except OSError:
            # Another process (a second driver on this workdir) finished the same data
            # first: the generator is deterministic, so its copy is as good as ours.
            if not _matches(root, manifest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _matches(root: Path, manifest: dict[str, object]) -> bool:
    """`root` holds the data set `manifest` describes; a different one is an error."""
    if not (root / "manifest.json").is_file():
        return False
    if json.loads((root / "manifest.json").read_text()) == manifest:
        return True
    raise FileExistsError(f"{root} holds a different dataset; remove it or choose another root")


def _make_record(
    rng: np.random.Generator,
    root: Path,
    ident: str,
    config: ShapesVQAConfig,
    *,
    describe: bool = False,
) -> dict[str, Any]:
    width, height = CANVASES[rng.integers(len(CANVASES))]
    objects = _place_objects(rng, width, height, int(rng.integers(1, config.max_objects + 1)))
    image = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        _draw(draw, obj)
    rel_path = f"images/{ident}.png"
    image.save(root / rel_path)

    kinds = [str(k) for k in rng.permutation(QUESTION_KINDS)[: config.questions_per_image]]
    conversations, asked = [], []
    for turn, kind in enumerate(kinds):
        question, answer, asked_kind = _QUESTIONS[kind](rng, objects)
        if turn == 0:
            question = "<image>\n" + question
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        asked.append(asked_kind)
    if describe:  # last, and drawing nothing from rng: the questions stay as they were
        conversations += [
            {"from": "human", "value": DESCRIBE_QUESTION},
            {"from": "gpt", "value": describe_objects(objects)},
        ]
        asked.append("description")
    # `question_kinds` is an extra key (LLaVA records carry extras such as "model");
    # loaders ignore it, reports use it for per-kind accuracy and chance level.
    return {"id": ident, "image": rel_path, "conversations": conversations, "question_kinds": asked}


DESCRIBE_QUESTION = "describe the objects."


def describe_objects(objects: list[_Obj]) -> str:
    """Colour, shape and size of every object, left to right (then top to bottom)."""
    ordered = sorted(objects, key=lambda o: (o.x, o.y))
    return " , ".join(f"{o.color} {o.shape} {o.size}" for o in ordered)


def _mismatch(records: list[dict[str, Any]], share: float, rng: np.random.Generator) -> None:
    """Give `share` of the records another record's image (never their own)."""
    n = len(records)
    chosen = rng.choice(n, size=round(share * n), replace=False)
    images = [r["image"] for r in records]
    for i in chosen:
        other = (int(i) + int(rng.integers(1, n))) % n
        records[i]["image"] = images[other]
        records[i]["mismatched"] = True


def _place_objects(rng: np.random.Generator, width: int, height: int, count: int) -> list[_Obj]:
    objects: list[_Obj] = []
    for _ in range(count * 20):
        if len(objects) == count:
            break
        size = str(rng.choice(list(SIZES)))
        r = SIZES[size]
        x = int(rng.integers(r + 1, width - r - 1))
        y = int(rng.integers(r + 1, height - r - 1))
        if any(
            abs(x - o.x) < r + SIZES[o.size] + 3 and abs(y - o.y) < r + SIZES[o.size] + 3
            for o in objects
        ):
            continue
        color = str(rng.choice(list(COLORS)))
        if any(o.color == color for o in objects):
            continue  # colours are unique, so "the red object" names one object
        objects.append(_Obj(color, str(rng.choice(SHAPES)), size, x, y))
    return objects


def _draw(draw: ImageDraw.ImageDraw, obj: _Obj) -> None:
    r, fill = SIZES[obj.size], COLORS[obj.color]
    box = (obj.x - r, obj.y - r, obj.x + r, obj.y + r)
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif obj.shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon(
            [(obj.x, obj.y - r), (obj.x - r, obj.y + r), (obj.x + r, obj.y + r)], fill=fill
        )


_QA = tuple[str, str, str]  # question, answer, kind actually asked


def _attribute(rng: np.random.Generator, objects: list[_Obj]) -> _QA:
    obj = objects[rng.integers(len(objects))]
    if rng.random() < 0.5:
        return f"what shape is the {obj.color} object?", obj.shape, "attribute"
    return f"what size is the {obj.color} object?", obj.size, "attribute"


def _counting(rng: np.random.Generator, objects: list[_Obj]) -> _QA:
    if rng.random() < 0.5:
        shape = SHAPES[rng.integers(len(SHAPES))]
        count = sum(o.shape == shape for o in objects)
        return f"how many {shape}s are there?", NUMBERS[count], "counting"
    return "how many objects are there?", NUMBERS[len(objects)], "counting"


def _spatial(rng: np.random.Generator, objects: list[_Obj]) -> _QA:
    pairs = [
        (a, b)
        for a in objects
        for b in objects
        if a is not b
        and max(abs(a.x - b.x), abs(a.y - b.y)) >= 12
        and abs(abs(a.x - b.x) - abs(a.y - b.y)) >= 6
    ]
    if not pairs:
        return _existence(rng, objects)
    a, b = pairs[rng.integers(len(pairs))]
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dx) > abs(dy):
        answer = "left" if dx < 0 else "right"
    else:
        answer = "above" if dy < 0 else "below"
    return f"where is the {a.color} object relative to the {b.color} object?", answer, "spatial"


def _existence(rng: np.random.Generator, objects: list[_Obj]) -> _QA:
    present = {o.color for o in objects}
    if rng.random() < 0.5:
        color = sorted(present)[rng.integers(len(present))]
        return f"is there a {color} object?", "yes", "existence"
    absent = [c for c in COLORS if c not in present]
    return f"is there a {absent[rng.integers(len(absent))]} object?", "no", "existence"


_QUESTIONS = {
    "attribute": _attribute,
    "counting": _counting,
    "spatial": _spatial,
    "existence": _existence,
}
