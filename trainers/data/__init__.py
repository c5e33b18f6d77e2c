"""Data for every trial: the shapes-VQA generator and the LLaVA-JSON dataset."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ._augment import (
    COLOUR_WORDS,
    LEFT_RIGHT_WORDS,
    PARAPHRASE_WORDS,
    augment_batch,
    paraphrase,
    policy_for,
)
from ._llava import (
    DataError,
    ImageCache,
    Record,
    WordTokenizer,
    conversation_ids,
    encode_eval,
    encode_train,
    load_llava_json,
    records_text,
)
from ._shapes import ShapesVQAConfig, generate_shapes_vqa

DATASETS = ("shapes_vqa", "llava")


@dataclass
class DataConfig:
    """The `data` config group.

    `name=shapes_vqa` generates the embedded data set (into `root`, default
    `<workdir>/data/shapes_vqa-s<seed>-<train>x<val>`); `name=llava` reads `root`.
    """

    name: str = "shapes_vqa"
    root: str | None = None
    seed: int = 0
    train_images: int = 3000
    val_images: int = 150
    noise: float = 0.0  # shapes_vqa: share of training pairs with a wrong image


def prepare_data(cfg: DataConfig, workdir: Path) -> VQAData:
    """Make the data set available and validated, and load it. Raises `DataError`."""
    if cfg.name not in DATASETS:
        raise DataError(f"data.name={cfg.name!r} unknown; allowed {list(DATASETS)}")
    if cfg.name == "shapes_vqa":
        gen = ShapesVQAConfig(
            seed=cfg.seed,
            train_images=cfg.train_images,
            val_images=cfg.val_images,
            noise=cfg.noise,
        )
        if not 0.0 <= gen.noise < 1.0:
            raise DataError(f"data.noise={cfg.noise}: must be in [0, 1)")
        if gen.train_images < 1 or gen.val_images < 1:
            raise DataError("data.train_images and data.val_images must be >= 1")
        noise = f"-n{cfg.noise:g}" if cfg.noise else ""
        default = (
            workdir / "data" / f"shapes_vqa-s{cfg.seed}-{cfg.train_images}x{cfg.val_images}{noise}"
        )
        root = Path(cfg.root) if cfg.root else default
        generate_shapes_vqa(root, gen)
    else:
        if not cfg.root:
            raise DataError(
                "data=llava needs data.root=DIR (a folder with train.json, val.json, images)"
            )
        root = Path(cfg.root).expanduser().resolve()
        if not root.is_dir():
            raise DataError(f"data.root={cfg.root!r} is not a directory")
    return VQAData.load(root.resolve())  # validates every record before any trial starts


@dataclass(frozen=True)
class VQAData:
    """A loaded data set with its tokenizer and the text shapes models are built for."""

    root: Path
    train: list[Record]
    val: list[Record]
    tokenizer: WordTokenizer
    text_len: int  # longest conversation in tokens: the model's static text length
    max_answer_tokens: int  # longest answer + its end token

    @classmethod
    def load(cls, root: Path, tokenizer: WordTokenizer | None = None) -> VQAData:
        train = load_llava_json(root, "train")
        val = load_llava_json(root, "val")
        # The vocabulary also holds the words question paraphrases (recipe.augment) bring
        # in, so that every candidate on this data shares one tokenizer.
        tok = tokenizer or WordTokenizer.build([*records_text(train), *sorted(PARAPHRASE_WORDS)])
        lengths = [len(conversation_ids(tok, r)[0]) for r in train + val]
        answers = [len(tok.encode(a)) for r in train + val for _, a in r.turns]
        return cls(Path(root), train, val, tok, max(lengths), max(answers) + 1)

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the records and images: what trained weights depend on."""
        h = hashlib.sha256()
        for split in ("train", "val"):
            h.update((self.root / f"{split}.json").read_bytes())
        for r in self.train + self.val:
            h.update(r.image.read_bytes())
        return h.hexdigest()[:16]

    def prior_baseline(self) -> float:
        """Accuracy of a blind guesser: the most common training answer per question kind.

        This is the chance level to beat; it uses `question_kinds` where the data carry it,
        else the single most common training answer.
        """
        by_kind: dict[str | None, Counter[str]] = {}
        for r in self.train:
            for k, (_, a) in zip(r.kinds or [None] * len(r.turns), r.turns, strict=True):
                by_kind.setdefault(k, Counter())[a.lower().strip()] += 1
        overall = sum(by_kind.values(), Counter()).most_common(1)[0][0]
        hits = total = 0
        for r in self.val:
            for k, (_, a) in zip(r.kinds or [None] * len(r.turns), r.turns, strict=True):
                guess = by_kind[k].most_common(1)[0][0] if k in by_kind else overall
                hits += guess == a.lower().strip()
                total += 1
        return hits / total


__all__ = [
    "COLOUR_WORDS",
    "DATASETS",
    "DataConfig",
    "DataError",
    "ImageCache",
    "LEFT_RIGHT_WORDS",
    "PARAPHRASE_WORDS",
    "Record",
    "ShapesVQAConfig",
    "VQAData",
    "WordTokenizer",
    "augment_batch",
    "encode_eval",
    "encode_train",
    "generate_shapes_vqa",
    "load_llava_json",
    "paraphrase",
    "policy_for",
    "prepare_data",
]
