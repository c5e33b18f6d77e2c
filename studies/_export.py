"""`export`: write the Pareto-optimal trials of a finished study as hand-off folders."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import optuna

from ._config import ConfigError, VlmnasConfig
from ._search import storage_url, summarize


def export_study(cfg: VlmnasConfig) -> list[Path]:
    """Copy each front member to `<workdir>/<study>/export/<trial_number>/`.

    Each folder holds `config.yaml`, `model.onnx` (the first profile's deployed model),
    `tokenizer.json` and `metrics.json`. Every folder is written atomically; an existing
    export of the same trial is replaced whole.
    """
    db = cfg.workdir / "optuna.db"
    if not db.is_file():
        raise ConfigError(
            f"study.workdir={str(cfg.workdir)!r} has no optuna.db; run `vlmnas search` first"
        )
    storage = optuna.storages.RDBStorage(storage_url(cfg.workdir))
    known = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if cfg.study.name not in known:
        raise ConfigError(
            f"study.name={cfg.study.name!r} not found in {db}; known studies: {known}"
        )
    summary = summarize(storage, cfg)
    if not summary.front:
        raise ConfigError(f"study {cfg.study.name!r} has no complete trials to export")
    profile = cfg.profiles[0].name
    out_root = cfg.study_dir / "export"
    out_root.mkdir(parents=True, exist_ok=True)
    written = []
    for member in summary.front:
        src = Path(member.trial_dir)
        metrics = json.loads((src / "metrics.json").read_text())
        model = Path(metrics["info"][f"{profile}/model"])
        dst = out_root / str(member.number)
        tmp = Path(tempfile.mkdtemp(prefix=f".{member.number}-", dir=out_root))
        try:
            shutil.copyfile(src / "config.yaml", tmp / "config.yaml")
            shutil.copyfile(src / "tokenizer.json", tmp / "tokenizer.json")
            shutil.copyfile(model, tmp / "model.onnx")
            exported = {
                **metrics,
                "objectives": member.values,
                "trial_number": member.number,
                "profile": profile,
            }
            (tmp / "metrics.json").write_text(json.dumps(exported, indent=1))
            if dst.exists():
                shutil.rmtree(dst)
            os.replace(tmp, dst)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        written.append(dst)
    return written
