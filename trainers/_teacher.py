"""The study's distillation teacher: trained (or loaded) once, its logits cached.

`trainer.teacher=baseline` trains the search space's baseline architecture for
`trainer.teacher_epochs` through the weights cache (so every trial of a study, and every
later study on the same data and budget, reuses it); `trainer.teacher=<folder>` takes an
exported candidate (`config.yaml` plus `model.pt`, or `model.onnx` run with ONNX
Runtime). Either way the teacher's logits over the training rows are computed once and
kept as `<cache_dir>/teacher-<key>.npy`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

from search_spaces import ArchConfig, RecipeConfig, load_pretrained

from ._cache import cache_key, cached_fit
from ._fit import TrainerConfig, model_for, train_rows
from ._recipes import Teacher, answer_logits, answer_width, cached_logits, teacher_logits
from .data import ImageCache, VQAData, encode_eval

# A teacher as a function: training rows (pixels, tile_mask, image_index, input_ids,
# labels, ...) -> answer logits (N, A, V).
Forward = Callable[[torch.utils.data.TensorDataset], np.ndarray]
# A model as a function: (pixel_values, image_index, input_ids) -> logits, on numpy.
Logits = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def study_teacher(
    baseline: ArchConfig,
    data: VQAData,
    cfg: TrainerConfig,
    cache_dir: Path,
    work_dir: Path,
    images: ImageCache | None = None,
) -> Teacher:
    """The teacher `cfg.teacher` names, with its logits on `data`'s training rows."""
    images = images or ImageCache()
    forward: Callable[[torch.utils.data.TensorDataset], np.ndarray]
    if cfg.teacher == "baseline":
        arch = dataclasses.replace(baseline, recipe=RecipeConfig(), quant=())
        teacher_cfg = dataclasses.replace(cfg, max_epochs=cfg.teacher_epochs)
        key = "baseline-" + cache_key(arch, data, teacher_cfg)
        result, _ = cached_fit(arch, data, teacher_cfg, work_dir, cache_dir, images=images)
        model = result.model
        val_accuracy = result.metrics["val_accuracy"]

        def forward(rows: torch.utils.data.TensorDataset) -> np.ndarray:
            return teacher_logits(model, rows)

    else:
        arch, full, key = _exported(Path(cfg.teacher), data)
        val_accuracy = float("nan")

        def forward(rows: torch.utils.data.TensorDataset) -> np.ndarray:
            width = answer_width(rows)
            out = []
            for start in range(0, len(rows), 64):
                pixels, _, index, ids, labels = (t[start : start + 64] for t in rows.tensors[:5])
                full_logits = torch.from_numpy(full(pixels.numpy(), index.numpy(), ids.numpy()))
                out.append(answer_logits(full_logits, labels, width).to(torch.float16).numpy())
            return np.concatenate(out)

    rows, _ = train_rows(dataclasses.replace(arch, recipe=RecipeConfig()), data, images, 0)
    logits = cached_logits(cache_dir / f"teacher-{key}.npy", lambda: forward(rows))
    if val_accuracy != val_accuracy:  # an exported teacher: score it on the validation set
        val_accuracy = _val_accuracy(arch, full, data, images)
    return Teacher(key=key, logits=logits, val_accuracy=val_accuracy)


def _exported(folder: Path, data: VQAData) -> tuple[ArchConfig, Logits, str]:
    """(arch, its logits function, key) of an exported candidate folder."""
    config_path = folder / "config.yaml"
    if not config_path.is_file():
        raise ValueError(
            f"trainer.teacher={str(folder)!r}: no config.yaml there; give 'baseline' or an"
            " exported candidate folder (config.yaml + model.pt or model.onnx)"
        )
    config = yaml.safe_load(config_path.read_text())
    arch = ArchConfig.from_dict(config["arch"])
    tokenizer = folder / "word_tokenizer.json"
    if tokenizer.is_file() and json.loads(tokenizer.read_text()) != json.loads(
        data.tokenizer.to_json()
    ):
        raise ValueError(
            f"trainer.teacher={str(folder)!r} was trained with another vocabulary than this"
            " data set's; a teacher must share the students' tokenizer"
        )
    if (folder / "model.safetensors").is_file() or (folder / "model.pt").is_file():
        if (folder / "model.safetensors").is_file():  # the transformers folder of an export
            model = load_pretrained(folder)
            weights = folder / "model.safetensors"
        else:
            model = model_for(arch, data)
            model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
            weights = folder / "model.pt"
        model.eval()

        def logits(pixels: np.ndarray, index: np.ndarray, ids: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out = model(
                    torch.from_numpy(pixels), torch.from_numpy(index), torch.from_numpy(ids)
                )
            return out.numpy()

    elif (folder / "model.onnx").is_file():
        import onnxruntime as ort

        weights = folder / "model.onnx"
        session = ort.InferenceSession(str(weights), providers=["CPUExecutionProvider"])

        def logits(pixels: np.ndarray, index: np.ndarray, ids: np.ndarray) -> np.ndarray:
            # exported graphs may have a static batch of one
            feeds = [
                {
                    "pixel_values": pixels[i : i + 1],
                    "image_index": index[i : i + 1],
                    "input_ids": ids[i : i + 1],
                }
                for i in range(len(ids))
            ]
            return np.concatenate([session.run(["logits"], f)[0] for f in feeds])

    else:
        raise ValueError(f"trainer.teacher={str(folder)!r}: neither model.pt nor model.onnx there")
    key = "export-" + hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    return arch, logits, key


def _val_accuracy(arch: ArchConfig, logits: Logits, data: VQAData, images: ImageCache) -> float:
    """Exact-match accuracy of an exported teacher on the validation set."""
    from search_spaces import decode_accuracy

    val = encode_eval(data.val, data.tokenizer, arch, data.text_len, images)

    return float(decode_accuracy(logits, val, max_new_tokens=data.max_answer_tokens))
