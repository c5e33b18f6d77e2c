"""Data for every trial: the shapes-VQA generator and the LLaVA-JSON dataset."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from common import CONFIG, checked, choices

from ._augment import (
    COLOUR_WORDS,
    LEFT_RIGHT_WORDS,
    PARAPHRASE_WORDS,
    augment_batch,
    paraphrase,
    policy_for,
)
from ._codec import ChatCodec, checkpoint_codec
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
    sequence_len,
)
from ._processor import conversation_messages, hf_processor, hf_tokenizer, save_candidate
from ._shapes import ShapesVQAConfig, generate_shapes_vqa

Dataset = Literal["shapes_vqa", "llava"]
DATASETS: tuple[str, ...] = choices(Dataset)


@checked(DataError, where="data")
@pydantic_dataclass(config=CONFIG)
class DataConfig:
    """The `data` config group.

    `name=shapes_vqa` generates the embedded data set (into `root`, default
    `<workdir>/data/shapes_vqa-s<seed>-<train>x<val>`); `name=llava` reads `root`.
    """

    name: Dataset = "shapes_vqa"
    root: str | None = None
    seed: int = 0
    train_images: Annotated[int, Field(ge=1)] = 3000
    val_images: Annotated[int, Field(ge=1)] = 150
    # shapes_vqa: share of training pairs with a wrong image
    noise: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    # shapes_vqa: training records end with a description of the objects
    describe: bool = False

    @model_validator(mode="after")
    def _root(self) -> Self:
        if self.name == "llava" and not self.root:
            raise ValueError(
                "data=llava needs data.root=DIR (a folder with train.json, val.json, images)"
            )
        if self.name == "llava" and not Path(self.root or "").expanduser().is_dir():
            raise ValueError(f"data.root={self.root!r} is not a directory")
        if self.name == "llava" and (self.noise or self.describe):
            raise ValueError(
                f"data.noise={self.noise} / data.describe={self.describe}: these shape the"
                " generated shapes_vqa data; data=llava reads data.root as it is (allowed:"
                " noise 0, describe false)"
            )
        return self


def _longest_run(flags: list[bool]) -> int:
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


def prepare_data(cfg: DataConfig, workdir: Path, tokenizer: ChatCodec | None = None) -> VQAData:
    """Make the data set available and validated, and load it (with a checkpoint's
    `tokenizer` where candidates are cut from one). Raises `DataError`."""
    if cfg.name == "shapes_vqa":
        gen = ShapesVQAConfig(
            seed=cfg.seed,
            train_images=cfg.train_images,
            val_images=cfg.val_images,
            noise=cfg.noise,
            describe=cfg.describe,
        )
        noise = f"-n{cfg.noise:g}" if cfg.noise else ""
        desc = "-desc" if cfg.describe else ""
        name = f"shapes_vqa-s{cfg.seed}-{cfg.train_images}x{cfg.val_images}{noise}{desc}"
        default = workdir / "data" / name
        root = Path(cfg.root) if cfg.root else default
        generate_shapes_vqa(root, gen)
    else:
        root = Path(cfg.root or "").expanduser().resolve()  # DataConfig checked it is a folder
    # validates every record before any trial starts
    return VQAData.load(root.resolve(), tokenizer)  # type: ignore[arg-type]


@dataclass(frozen=True)
class VQAData:
    """A loaded data set with its tokenizer and the text shapes models are built for."""

    root: Path
    train: list[Record]
    val: list[Record]
    tokenizer: WordTokenizer  # or a checkpoint's ChatCodec (same interface)
    text_len: int  # longest conversation in tokens: the model's static text length
    max_answer_tokens: int  # longest validation answer + its end token: what is decoded

    @classmethod
    def load(cls, root: Path, tokenizer: WordTokenizer | None = None) -> VQAData:
        return cls.from_records(
            root, load_llava_json(root, "train"), load_llava_json(root, "val"), tokenizer
        )

    @classmethod
    def from_records(
        cls,
        root: Path,
        train: list[Record],
        val: list[Record],
        tokenizer: WordTokenizer | None = None,
    ) -> VQAData:
        """Records already loaded (or changed in memory, as bench scripts do); the
        tokenizer is built from them unless given."""
        # The vocabulary also holds the words question paraphrases (recipe.augment) bring
        # in, so that every candidate on this data shares one tokenizer.
        tok = tokenizer or WordTokenizer.build([*records_text(train), *sorted(PARAPHRASE_WORDS)])
        encoded = [conversation_ids(tok, r) for r in train + val]
        lengths = [len(ids) for ids, _ in encoded]
        # the longest answer to decode, with its end token (a run of answer tokens): only
        # validation answers are decoded (training-only turns, such as shapes-VQA's
        # descriptions, can be longer)
        longest = max(_longest_run(is_answer) for _, is_answer in encoded[len(train) :])
        return cls(Path(root), train, val, tok, max(lengths), longest)

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
    "ChatCodec",
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
    "checkpoint_codec",
    "conversation_messages",
    "hf_processor",
    "hf_tokenizer",
    "save_candidate",
    "encode_eval",
    "encode_train",
    "sequence_len",
    "generate_shapes_vqa",
    "load_llava_json",
    "paraphrase",
    "policy_for",
    "prepare_data",
]
