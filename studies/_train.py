"""`vlmnas train candidate=<export>/config.yaml`: rebuild and retrain an exported winner.

The exported config.yaml is self-describing: the architecture, the trainer config (with
its seed), the data (its folder, and for generated data the generator's settings, so a
missing folder is generated again) and the deployment (profile definition and scheme).
Retraining writes `<export folder>/retrained/` with the new model, its deployed file and
a metrics.json, and prints the accuracy next to the one recorded at export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from hardware_profiles import HardwareProfile, accuracy, deploy
from search_spaces import ArchConfig
from trainers import TrainerConfig, fit
from trainers.data import DataConfig, ImageCache, VQAData, encode_eval, prepare_data

from ._config import ConfigError
from ._trial import answer_tokens


def train_candidate(config_path: Path) -> dict[str, Any]:
    """Retrain the exported candidate at `config_path`; returns the new metrics."""
    if not config_path.is_file():
        raise ConfigError(f"candidate={str(config_path)!r} is not a file (an exported config.yaml)")
    config = yaml.safe_load(config_path.read_text()) or {}
    missing = [k for k in ("arch", "trainer", "data", "deployment") if k not in config]
    if missing:
        raise ConfigError(
            f"candidate={str(config_path)!r} lacks {missing}: give the config.yaml that"
            " `vlmnas export` wrote"
        )
    arch = ArchConfig.from_dict(config["arch"])
    trainer = TrainerConfig(**config["trainer"])
    data = _data(config["data"], config_path.parent)
    deployment = config["deployment"]
    name = deployment["profile"]
    spec = dict(deployment["hardware"][name])
    spec.pop("name", None)
    profile = HardwareProfile.from_mapping(name, spec)
    out = config_path.parent / "retrained"
    result = fit(arch, data, trainer, out)
    images = ImageCache()
    val = encode_eval(data.val, data.tokenizer, arch, data.text_len, images)
    calibration = encode_eval(
        data.train[: profile.calibration_images], data.tokenizer, arch, data.text_len, images
    )
    tokens = answer_tokens(data)  # what a static-shape profile's fixed context must hold
    dep = deploy(result.model, profile, deployment["scheme"], out, val, calibration, tokens)
    acc = accuracy(dep, val, data.max_answer_tokens)
    metrics = {
        "val_accuracy": result.metrics["val_accuracy"],
        f"{name}/accuracy": acc.value,
        f"{name}/size_mb": dep.size_mb,
        "train_s": result.metrics["train_s"],
    }
    (out / "metrics.json").write_text(json.dumps({"metrics": metrics}, indent=1))
    return metrics


def _data(spec: dict[str, Any], workdir: Path) -> VQAData:
    root = Path(spec["root"])
    if root.is_dir():
        return VQAData.load(root)
    generator = spec.get("config")
    if not generator or generator.get("name") != "shapes_vqa":
        raise ConfigError(
            f"data root {str(root)!r} does not exist and the candidate's data cannot be"
            " regenerated (it is not the generated shapes-VQA set)"
        )
    return prepare_data(DataConfig(**generator), workdir)
