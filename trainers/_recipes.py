"""Training recipes of the LLaVA-NeXT article, as `fit` carries them out (`RecipeConfig`
in search_spaces/_arch.py says which a candidate uses).

- Progressive fusion, stage 1 (`align`): a CLIP-style symmetric InfoNCE loss between
  each training image and its conversation, over the batch. The image side is the mean
  of the projected image tokens of the real tiles (vision tower + projector, trained);
  the text side is the mean of the LM's token embeddings over the conversation (frozen,
  so the image features move towards the text space, as LLaVA's stage 1 does). Stage 2
  is the usual task training of the whole model.
- Data hygiene (`similarities`): the same two embeddings give each training pair a
  cosine similarity; pairs below `filter_threshold` are dropped before stage 2.
- Distillation (`distillation_loss`, `Teacher`): soft targets from a teacher's logits on
  answer positions, T^2-scaled KL as in Hinton et al.; the teacher's logits over the
  training set are computed once and cached on disk.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import busy
from search_spaces import VlmModel


def image_text_embeddings(
    model: VlmModel,
    pixels: torch.Tensor,
    index: torch.Tensor,
    ids: torch.Tensor,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, D) L2-normalised image and text embeddings of a batch of training rows: the
    mean of the image's visual tokens, the mean of the text's word embeddings."""
    image, real = model.encode_image(pixels, index)  # (B, N, D), (B, N)
    valid = real.unsqueeze(-1).to(image.dtype)
    image = (image * valid).sum(1) / valid.sum(1).clamp(min=1)
    words = ((ids != pad_id) & (ids != model.image_token_id)).unsqueeze(-1).to(image.dtype)
    text = (model.embed(ids) * words).sum(1) / words.sum(1).clamp(min=1)
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


def contrastive_loss(
    image: torch.Tensor, text: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE: row i of `image` should match row i of `text` and no other."""
    logits = log_scale.clamp(max=math.log(100.0)).exp() * image @ text.T
    target = torch.arange(len(image), device=image.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def align(
    model: VlmModel,
    train_set: torch.utils.data.TensorDataset,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    pad_id: int,
    generator: torch.Generator,
) -> list[float]:
    """Stage 1: train the vision tower and projector on the contrastive loss for `epochs`;
    returns the mean loss of each epoch. The rest of the model is left as it was."""
    trained = [
        p
        for m in (model.vision_tower, model.projector)
        for p in m.parameters()
        if p.requires_grad  # a fixed sincos position table stays fixed
    ]
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    opt = torch.optim.AdamW([*trained, log_scale], lr=lr, weight_decay=0.0)
    frozen = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in trained)]
    for p in frozen:
        p.requires_grad_(False)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=batch_size, shuffle=True, generator=generator, drop_last=True
    )
    history = []
    model.train()
    try:
        for _ in range(epochs):
            total, batches = 0.0, 0
            for pixels, _, index, ids, *_ in loader:
                with busy():
                    image, text = image_text_embeddings(model, pixels, index, ids, pad_id)
                    loss = contrastive_loss(image, text, log_scale)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                total, batches = total + loss.item(), batches + 1
            history.append(total / max(batches, 1))
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return history


@torch.no_grad()
def similarities(
    model: VlmModel, train_set: torch.utils.data.TensorDataset, pad_id: int, batch: int = 256
) -> torch.Tensor:
    """Cosine similarity of every training row's image and text embeddings, (N,)."""
    model.eval()
    out = []
    tensors = train_set.tensors
    for start in range(0, len(train_set), batch):
        pixels, _, index, ids = (t[start : start + batch] for t in tensors[:4])
        with busy():
            image, text = image_text_embeddings(model, pixels, index, ids, pad_id)
        out.append((image * text).sum(-1))
    return torch.cat(out)


def answer_logits(logits: torch.Tensor, labels: torch.Tensor, width: int) -> torch.Tensor:
    """The logits at each row's answer positions (`labels != -100`), in order, as
    (B, width, V) zero-padded: the same rows for every candidate, whatever its sequence
    layout (a teacher and a student may expand `<image>` to different token counts)."""
    where = labels != -100
    out = logits.new_zeros(logits.shape[0], width, logits.shape[-1])
    slot = torch.arange(width, device=logits.device).unsqueeze(0) < where.sum(1, keepdim=True)
    out[slot] = logits[where]
    return out


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(teacher || student) of the temperature-softened distributions, averaged
    over answer positions (`labels != -100`): zero when the logits agree. `teacher` holds
    the teacher's `answer_logits` of the same rows."""
    where = labels != -100
    slot = torch.arange(teacher.shape[1], device=labels.device).unsqueeze(0) < where.sum(
        1, keepdim=True
    )
    s = F.log_softmax(student[where] / temperature, dim=-1)
    t = F.log_softmax(teacher[slot].to(student.dtype) / temperature, dim=-1)
    if not len(s):
        return student.sum() * 0.0
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


@dataclass(frozen=True)
class Teacher:
    """A teacher's logits on the training rows (encode_train order), and what it is."""

    key: str  # enters the student's weights-cache key
    logits: np.ndarray  # (N, A, V) float16: `answer_logits` of every training row
    val_accuracy: float


def teacher_logits(
    model: VlmModel, train_set: torch.utils.data.TensorDataset, batch: int = 128
) -> np.ndarray:
    """The model's `answer_logits` over every training row, (N, A, V) float16."""
    model.eval()
    width = answer_width(train_set)
    out = []
    with torch.no_grad():
        for start in range(0, len(train_set), batch):
            pixels, _, index, ids, labels = (
                t[start : start + batch] for t in train_set.tensors[:5]
            )
            with busy():
                logits = answer_logits(model(pixels, index, ids), labels, width)
                out.append(logits.to(torch.float16).numpy())
    return np.concatenate(out)


def answer_width(train_set: torch.utils.data.TensorDataset) -> int:
    """The most answer positions of any training row."""
    return int((train_set.tensors[4] != -100).sum(1).max())


def cached_logits(path: Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """Load `path` (.npy) or write what `compute()` returns there first (atomically, so
    two trials computing the same teacher at once cannot leave a torn file)."""
    if path.is_file():
        return np.load(path)
    logits = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, logits)
    tmp.replace(path)
    return logits
