"""Greedy answer decoding for the model family, independent of the runtime.

The same loop serves PyTorch (validation during training) and ONNX Runtime (accuracy on
a hardware profile): it only needs `forward(pixel_values, image_index, input_ids) -> logits`
on numpy arrays.
"""

from __future__ import annotations

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
    """

    pixel_values: np.ndarray
    tile_mask: np.ndarray
    image_index: np.ndarray
    prompt_ids: np.ndarray
    prompt_lens: np.ndarray
    answer_ids: np.ndarray
    eos_id: int
    pad_id: int

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def slice(self, start: int, stop: int) -> EncodedVQA:
        return EncodedVQA(
            self.pixel_values[start:stop],
            self.tile_mask[start:stop],
            self.image_index[start:stop],
            self.prompt_ids[start:stop],
            self.prompt_lens[start:stop],
            self.answer_ids[start:stop],
            self.eos_id,
            self.pad_id,
        )


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
        next_ids = logits[rows, pos - 1].argmax(-1)
        out[active, step] = next_ids[active]
        done |= active & (next_ids == batch.eos_id)
        ids[rows[active], pos[active]] = next_ids[active]
        pos[active] += 1
    return out


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
    correct = 0
    for start in range(0, len(data), batch_size):
        part = data.slice(start, start + batch_size)
        correct += int(exact_match(greedy_decode(forward, part, max_new_tokens), part).sum())
    return correct / max(len(data), 1)
