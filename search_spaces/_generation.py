"""Greedy answer decoding for the model family, independent of the runtime.

The same loop serves PyTorch (validation during training) and ONNX Runtime (accuracy on
a hardware profile): it only needs `forward(pixel_values, image_index, input_ids) -> logits`
on numpy arrays.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Forward = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class EncodedVQA:
    """Question-answer examples in the model's input format, one row per answer.

    - `pixel_values`: (N, T, 3, tile, tile) float32
    - `tile_mask`: (N, T) float32, 1 for the image's own tiles, 0 for padding tiles
    - `image_index`: (N, K) int64, the visual tokens' rows in the feature table
      (`search_spaces._packing`)
    - `prompt_ids`: (N, L) int64, the conversation up to and including the question's
      separator token, right-padded with `pad_id`
    - `prompt_lens`: (N,) int64
    - `answer_ids`: (N, A) int64, the reference answer tokens (without end token),
      right-padded with -1
    - `eos_id`, `pad_id`: special token ids of the tokenizer that encoded them
    - `image_id`: its `<image>` id, which an answer never contains: decoding never picks
      it (-1: no such token)
    """

    pixel_values: np.ndarray
    tile_mask: np.ndarray
    image_index: np.ndarray
    prompt_ids: np.ndarray
    prompt_lens: np.ndarray
    answer_ids: np.ndarray
    eos_id: int
    pad_id: int
    image_id: int = -1

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def slice(self, start: int, stop: int) -> EncodedVQA:
        """Rows `start:stop`, as views."""
        return self._rows(builtins.slice(start, stop))

    def take(self, rows: np.ndarray) -> EncodedVQA:
        """The rows `rows` (indices), in that order."""
        return self._rows(rows)

    def _rows(self, index: builtins.slice | np.ndarray) -> EncodedVQA:
        return EncodedVQA(
            self.pixel_values[index],
            self.tile_mask[index],
            self.image_index[index],
            self.prompt_ids[index],
            self.prompt_lens[index],
            self.answer_ids[index],
            self.eos_id,
            self.pad_id,
            self.image_id,
        )

    def repeat_to(self, batch: int) -> EncodedVQA:
        """Exactly `batch` rows: these repeated cyclically (a measurement's batch)."""
        if len(self) == 0:
            raise ValueError("measure needs at least one example row")
        return self.take(np.arange(batch) % len(self))


def greedy_decode(forward: Forward, batch: EncodedVQA, max_new_tokens: int) -> np.ndarray:
    """Decode answers greedily; returns (N, max_new_tokens) int64 padded with -1.

    Each step re-runs the full (static-shape) sequence: no KV cache, which keeps the
    exported graph a single forward pass that every runtime can execute.
    """
    ids = batch.prompt_ids.copy()
    pos = batch.prompt_lens.astype(np.int64).copy()
    n, length = ids.shape
    out = np.full((n, max_new_tokens), -1, dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    rows = np.arange(n)
    for step in range(max_new_tokens):
        active = ~done & (pos < length)
        if not active.any():
            break
        logits = forward(batch.pixel_values, batch.image_index, ids)
        next_ids = pick(logits[rows, pos - 1], batch)
        out[active, step] = next_ids[active]
        done |= active & (next_ids == batch.eos_id)
        ids[rows[active], pos[active]] = next_ids[active]
        pos[active] += 1
    return out


def pick(logits: np.ndarray, batch: EncodedVQA) -> np.ndarray:
    """The greedy choice over the last axis of `logits`, never the `<image>` id: a
    generated `<image>` would ask the model for a visual token it does not have."""
    if batch.image_id >= 0:
        logits = logits.copy()
        logits[..., batch.image_id] = -np.inf
    return logits.argmax(-1)


def exact_match(predicted: np.ndarray, batch: EncodedVQA) -> np.ndarray:
    """(N,) bool: the decoded tokens up to the end token equal the reference answer."""
    matches = np.zeros(len(batch), dtype=bool)
    for i, (pred, ref) in enumerate(zip(predicted, batch.answer_ids, strict=True)):
        ref = ref[ref >= 0]
        pred = pred[pred >= 0]
        end = np.flatnonzero(pred == batch.eos_id)
        if end.size == 0:
            continue  # never finished its answer
        matches[i] = np.array_equal(pred[: end[0]], ref)
    return matches


def decode_accuracy(
    forward: Forward, data: EncodedVQA, *, max_new_tokens: int, batch_size: int = 64
) -> float:
    """Exact-match accuracy of greedy answers over all of `data`."""
    return batched_accuracy(
        lambda part: greedy_decode(forward, part, max_new_tokens), data, batch_size
    )


def batched_accuracy(
    answer: Callable[[EncodedVQA], np.ndarray], data: EncodedVQA, batch_size: int
) -> float:
    """Exact-match accuracy of `answer`'s tokens (N, T) for `data`, `batch_size` rows at
    a time (`decode_accuracy`, and `_kv.generate_accuracy` with the KV cache)."""
    correct = 0
    for start in range(0, len(data), batch_size):
        part = data.slice(start, start + batch_size)
        correct += int(exact_match(answer(part), part).sum())
    return correct / max(len(data), 1)
