"""Trained-weights cache: an architecture already trained is never trained again.

The key is the architecture part of `arch_id` (`ArchConfig.weights_id`, quantization
excluded), the training config and the data set's fingerprint, so a known architecture
with a new quantization scheme costs seconds, while a change of budget or data retrains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from search_spaces import ArchConfig

from ._fit import EpochReport, TrainerConfig, TrainResult, fit, model_for
from ._recipes import Teacher
from .data import ImageCache, VQAData


def cache_key(
    arch: ArchConfig, data: VQAData, cfg: TrainerConfig, teacher: Teacher | None = None
) -> str:
    payload = json.dumps(
        {
            "weights_id": arch.weights_id,
            "trainer": dataclasses.asdict(cfg),
            "data": data.fingerprint,
            "vocab": hashlib.sha256(data.tokenizer.to_json().encode()).hexdigest()[:16],
            # a student's weights depend on its teacher
            "teacher": teacher.key if teacher and arch.recipe.distill_weight > 0 else None,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cached_fit(
    arch: ArchConfig,
    data: VQAData,
    cfg: TrainerConfig,
    out_dir: Path,
    cache_dir: Path,
    *,
    report: EpochReport | None = None,
    images: ImageCache | None = None,
    teacher: Teacher | None = None,
) -> tuple[TrainResult, bool]:
    """`fit`, or the cached result of an identical earlier `fit`; returns (result, hit).

    On a hit the recorded per-epoch validation accuracies are reported again, so a
    scheduler sees the same trajectory as the first time.
    """
    entry = cache_dir / cache_key(arch, data, cfg, teacher)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (entry / "result.json").is_file():
        saved = json.loads((entry / "result.json").read_text())
        model = model_for(arch, data)
        model.load_state_dict(torch.load(entry / "model.pt", weights_only=True))
        for name in ("model.pt", "tokenizer.json"):
            shutil.copyfile(entry / name, out_dir / name)
        history = saved["val_accuracy_history"]
        if report is not None:
            for epoch, acc in enumerate(history, 1):
                report(epoch, {"val_accuracy": acc, "epoch": epoch})
        return TrainResult(out_dir / "model.pt", model.eval(), saved["metrics"], history), True

    result = fit(arch, data, cfg, out_dir, report=report, images=images, teacher=teacher)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=cache_dir))
    try:
        for name in ("model.pt", "tokenizer.json"):
            shutil.copyfile(out_dir / name, tmp / name)
        saved = {"metrics": result.metrics, "val_accuracy_history": result.val_accuracy_history}
        (tmp / "result.json").write_text(json.dumps(saved))
        if not entry.exists():
            os.replace(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result, False
