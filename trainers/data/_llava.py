"""LLaVA-Instruct JSON loading, the word-level tokenizer, and encoding for one architecture.

A dataset directory holds `train.json` and `val.json`, each a list of records

    {"id": "...", "image": "images/x.png",
     "conversations": [{"from": "human", "value": "<image>\\nquestion"},
                       {"from": "gpt", "value": "answer"}, ...]}

with image paths relative to the directory, human/gpt turns alternating from human, and
`<image>` exactly once, in the first human turn. Extra keys are allowed and ignored.
Generated shapes-VQA data and user data go through the same loader.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from search_spaces import (
    ArchConfig,
    EncodedVQA,
    image_index,
    image_processor,
    max_image_tokens,
    pad_indices,
)

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<pad>", "<unk>", IMAGE_TOKEN, "<sep>", "<eos>")
_WORD = re.compile(r"<image>|[a-z0-9]+|[^\sa-z0-9]")


class DataError(ValueError):
    """A dataset that cannot be used; the message names the file, record and problem."""


@dataclass(frozen=True)
class Record:
    ident: str
    image: Path  # absolute
    turns: tuple[tuple[str, str], ...]  # (human, gpt) pairs
    kinds: tuple[str, ...] | None = None  # question kind per turn, when the data says


def load_llava_json(root: Path, split: str) -> list[Record]:
    """Read and validate `<root>/<split>.json`; raises `DataError` on the first bad record."""
    root = Path(root)
    path = root / f"{split}.json"
    if not path.is_file():
        raise DataError(
            f"data.root={str(root)!r}: missing {split}.json (need train.json and val.json)"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{path}: expected a non-empty JSON list of records")
    return [_record(path, i, r) for i, r in enumerate(raw)]


def _record(path: Path, index: int, raw: Any) -> Record:
    where = f"{path} record {index}"
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected an object, got {type(raw).__name__}")
    where += f" (id={raw.get('id', '?')!r})"
    image = raw.get("image")
    if not isinstance(image, str) or not image:
        raise DataError(f"{where}: 'image' must be a path relative to the dataset root")
    image_path = (path.parent / image).resolve()
    if not image_path.is_relative_to(path.parent.resolve()):
        raise DataError(f"{where}: image {image!r} points outside the dataset root")
    if not image_path.is_file():
        raise DataError(f"{where}: image file {image!r} not found under {path.parent}")
    conv = raw.get("conversations")
    if not isinstance(conv, list) or len(conv) < 2 or len(conv) % 2:
        raise DataError(f"{where}: 'conversations' must be a list of human/gpt turn pairs")
    turns = []
    for t, (h, g) in enumerate(zip(conv[::2], conv[1::2], strict=True)):
        for turn, role in ((h, "human"), (g, "gpt")):
            if not isinstance(turn, dict) or turn.get("from") != role:
                raise DataError(f"{where}: turn {t} must be from {role!r}, got {turn!r:.60}")
            if not isinstance(turn.get("value"), str) or not turn["value"].strip():
                raise DataError(f"{where}: turn {t} ({role}) has no text 'value'")
        turns.append((h["value"], g["value"]))
    others = [turns[0][1]] + [text for q, a in turns[1:] for text in (q, a)]
    if turns[0][0].count(IMAGE_TOKEN) != 1 or any(IMAGE_TOKEN in text for text in others):
        raise DataError(f"{where}: {IMAGE_TOKEN} must appear exactly once, in the first human turn")
    kinds = raw.get("question_kinds")
    kinds = tuple(kinds) if isinstance(kinds, list) and len(kinds) == len(turns) else None
    return Record(str(raw.get("id", index)), image_path, tuple(turns), kinds)


class WordTokenizer:
    """Lower-cased word-level tokenizer built from training text; saved with each model."""

    def __init__(self, vocab: Sequence[str]) -> None:
        if tuple(vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"vocab must start with {SPECIAL_TOKENS}")
        self.vocab = list(vocab)
        self._ids = {w: i for i, w in enumerate(self.vocab)}
        self.pad_id, self.unk_id, self.image_id, self.sep_id, self.eos_id = range(5)

    @classmethod
    def build(cls, texts: Iterable[str]) -> WordTokenizer:
        words = sorted(
            {w for text in texts for w in _WORD.findall(text.lower())} - set(SPECIAL_TOKENS)
        )
        return cls([*SPECIAL_TOKENS, *words])

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(w, self.unk_id) for w in _WORD.findall(text.lower())]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.vocab[i] for i in ids if 0 <= i < len(self.vocab))

    def to_json(self) -> str:
        return json.dumps({"type": "word", "vocab": self.vocab})

    @classmethod
    def from_json(cls, text: str) -> WordTokenizer:
        data = json.loads(text)
        return cls(data["vocab"])


def records_text(records: Iterable[Record]) -> Iterable[str]:
    for r in records:
        for q, a in r.turns:
            yield q
            yield a


def conversation_ids(tok: WordTokenizer, record: Record) -> tuple[list[int], list[bool]]:
    """Token ids of the whole conversation and, per token, whether it is answer/end text.

    vlmnas's word format: per turn the question, `<sep>`, the answer, `<eos>`. A
    tokenizer with its own chat template (a checkpoint's: `ChatCodec`) says itself."""
    if not isinstance(tok, WordTokenizer):
        return tok.conversation(record)
    ids: list[int] = []
    is_answer: list[bool] = []
    for q, a in record.turns:
        prompt = tok.encode(q) + [tok.sep_id]
        answer = tok.encode(a) + [tok.eos_id]
        ids += prompt + answer
        is_answer += [False] * len(prompt) + [True] * len(answer)
    return ids, is_answer


class ImageCache:
    """Decoded images by path, and their processed tiles per tiling, loaded once per
    process (the data are small; the image processor takes ~1.5 ms an image)."""

    def __init__(self) -> None:
        self._images: dict[Path, Image.Image] = {}
        self._tiles: dict[tuple[Path, str], tuple[np.ndarray, tuple[int, int]]] = {}

    def get(self, path: Path) -> Image.Image:
        if path not in self._images:
            with Image.open(path) as im:
                self._images[path] = im.convert("RGB")
        return self._images[path]

    def tiles(self, path: Path, arch: ArchConfig) -> tuple[np.ndarray, tuple[int, int]]:
        """The image processor's tiles of one image for `arch` (base view first), and the
        image's (height, width)."""
        key = (path, json.dumps([arch.vision.tile_size, arch.grid_pinpoints]))
        if key not in self._tiles:
            out = image_processor(arch)(self.get(path), return_tensors="np")
            size = out["image_sizes"][0]
            self._tiles[key] = (out["pixel_values"][0], (int(size[0]), int(size[1])))
        return self._tiles[key]


def _images(
    records: Sequence[Record], arch: ArchConfig, images: ImageCache
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """pixel_values (N, max_tiles, 3, t, t), tile_mask (N, max_tiles), image_index
    (N, max_image_tokens) and each image's own visual-token count."""
    pixels = np.zeros(
        (len(records), arch.max_tiles, 3, arch.vision.tile_size, arch.vision.tile_size),
        dtype=np.float32,
    )
    masks = np.zeros((len(records), arch.max_tiles), dtype=np.float32)
    indices = []
    for i, r in enumerate(records):
        tiles, hw = images.tiles(r.image, arch)
        pixels[i, : len(tiles)] = tiles
        masks[i, : len(tiles)] = 1.0
        indices.append(image_index(hw, arch))
    index = pad_indices(indices, arch, max_image_tokens(arch))
    return pixels, masks, index, [len(i) for i in indices]


def _expanded(
    tok: WordTokenizer, record: Record, arch: ArchConfig, n_image: int
) -> tuple[list[int], list[bool]]:
    """`conversation_ids` with LLaVA-NeXT's processor step for early fusion: `<image>`
    becomes one id per visual token (cross-attention keeps the one)."""
    ids, is_answer = conversation_ids(tok, record)
    if not arch.fusion.early:
        return ids, is_answer
    out_ids: list[int] = []
    out_answer: list[bool] = []
    for t, a in zip(ids, is_answer, strict=True):
        n = n_image if t == tok.image_id else 1
        out_ids += [t] * n
        out_answer += [a] * n
    return out_ids, out_answer


def _spans(is_answer: list[bool]) -> list[tuple[int, int]]:
    """[start, stop) of each run of answer tokens."""
    spans, start = [], None
    for t, a in enumerate([*is_answer, False]):
        if a and start is None:
            start = t
        elif not a and start is not None:
            spans.append((start, t))
            start = None
    return spans


def sequence_len(arch: ArchConfig, text_len: int) -> int:
    """The candidate's static sequence length: the text plus its expanded `<image>`."""
    return text_len - 1 + max_image_tokens(arch) if arch.fusion.early else text_len


def encode_train(
    records: Sequence[Record],
    tok: WordTokenizer,
    arch: ArchConfig,
    text_len: int,
    images: ImageCache,
) -> torch.utils.data.TensorDataset:
    """One row per record: (pixel_values, tile_mask, image_index, input_ids, labels).

    `labels[t]` is the token to predict at position t (= input_ids[t + 1]) where that
    token belongs to an answer or its end token, else -100: loss on answers only.
    """
    pixels, masks, index, n_image = _images(records, arch, images)
    length = sequence_len(arch, text_len)
    input_ids = np.full((len(records), length), tok.pad_id, dtype=np.int64)
    labels = np.full((len(records), length), -100, dtype=np.int64)
    for i, r in enumerate(records):
        ids, is_answer = _expanded(tok, r, arch, n_image[i])
        input_ids[i, : len(ids)] = ids
        for t in range(len(ids) - 1):
            if is_answer[t + 1]:
                labels[i, t] = ids[t + 1]
    return torch.utils.data.TensorDataset(
        torch.from_numpy(pixels),
        torch.from_numpy(masks),
        torch.from_numpy(index),
        torch.from_numpy(input_ids),
        torch.from_numpy(labels),
    )


def encode_eval(
    records: Sequence[Record],
    tok: WordTokenizer,
    arch: ArchConfig,
    text_len: int,
    images: ImageCache,
) -> EncodedVQA:
    """One row per answer: the conversation up to the answer as prompt, the answer (its
    end token left out) as reference. Answers are found as the spans `conversation_ids`
    marks, so any tokenizer with a chat template encodes the same way."""
    pixels, masks, index, n_image = _images(records, arch, images)
    rows: list[int] = []
    prompts: list[list[int]] = []
    answers: list[list[int]] = []
    for i, r in enumerate(records):
        ids, is_answer = _expanded(tok, r, arch, n_image[i])
        for start, stop in _spans(is_answer):
            answer = ids[start:stop]
            if tok.eos_id in answer:
                answer = answer[: answer.index(tok.eos_id)]
            rows.append(i)
            prompts.append(ids[:start])
            answers.append(answer)
    prompt_ids = np.full((len(rows), sequence_len(arch, text_len)), tok.pad_id, dtype=np.int64)
    answer_ids = np.full((len(rows), max(len(a) for a in answers)), -1, dtype=np.int64)
    for j, (ids, ans) in enumerate(zip(prompts, answers, strict=True)):
        prompt_ids[j, : len(ids)] = ids
        answer_ids[j, : len(ans)] = ans
    take = np.asarray(rows)
    return EncodedVQA(
        pixel_values=pixels[take],
        tile_mask=masks[take],
        image_index=index[take],
        prompt_ids=prompt_ids,
        prompt_lens=np.asarray([len(p) for p in prompts], dtype=np.int64),
        answer_ids=answer_ids,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
        image_id=tok.image_id,
    )
