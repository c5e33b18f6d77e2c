"""`vlmnas pretrain`: train the small LLaVA-NeXT checkpoint that `pretrained_cpu` cuts down.

No model hub is reachable from the machines vlmnas is built for, so the repository ships
one checkpoint trained here on the embedded shapes-VQA data (`checkpoints/`, at most
10 MB) and this command rebuilds it: the `pretrain` config group names the candidate, the
data set and the budget (`studies/conf/config.yaml`); the result is a transformers folder
(`save_candidate`: a plain LLaVA-NeXT with tokenizer, processor and chat template) plus
`pretrain.json` with what it reached and how.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from search_spaces import ArchConfig, is_plain
from trainers import fit
from trainers.data import DataConfig, prepare_data, save_candidate

from ._config import ConfigError, VlmnasConfig


def pretrain(cfg: VlmnasConfig, overrides: list[str]) -> dict[str, Any]:
    """Train `pretrain.arch` on `pretrain.data` for `pretrain.trainer`; write the folder
    `pretrain.out` (replacing an older one only once the new one is complete)."""
    spec = cfg.raw.get("pretrain") or {}
    try:
        arch = ArchConfig.from_dict(spec.get("arch") or {})
        trainer = dataclasses.replace(cfg.trainer, **(spec.get("trainer") or {}))
        data_cfg = DataConfig(**{**dataclasses.asdict(cfg.data), **(spec.get("data") or {})})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"pretrain: {exc}") from None
    if not is_plain(arch):
        raise ConfigError("pretrain.arch must be a plain LLaVA-NeXT (early fusion, no adapters)")
    out = Path(str(spec.get("out") or "checkpoints/shapes-llava-next")).expanduser()
    data = prepare_data(data_cfg, cfg.workdir)
    history: list[float] = []

    def report(epoch: int, metrics: dict[str, float]) -> None:
        history.append(metrics["val_accuracy"])
        print(
            f"vlmnas: pretrain epoch {epoch}: val_accuracy={metrics['val_accuracy']:.4f}",
            flush=True,
        )

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        result = fit(arch, data, trainer, Path(work), report=report)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        save_candidate(result.model, data.tokenizer, tmp)
        record = {
            "val_accuracy": result.metrics["val_accuracy"],
            "val_accuracy_history": history,
            "chance_level": data.prior_baseline(),
            "train_s": time.perf_counter() - start,
            "params": sum(p.numel() for p in result.model.parameters()),
            "arch": arch.to_dict(),
            "trainer": dataclasses.asdict(trainer),
            "data": dataclasses.asdict(data_cfg),
            "command": " ".join(["vlmnas pretrain", *overrides]),
        }
        (tmp / "pretrain.json").write_text(json.dumps(record, indent=1))
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**record, "out": str(out)}
