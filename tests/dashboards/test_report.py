"""report.html and pareto.csv of a study, written by `studies.publish` from an Optuna
study and its trial folders: each front member is shown with what defines it (fusion,
image tokens, LM and vision size, quantization) and links its trial folder."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import optuna
import yaml
from optuna.distributions import CategoricalDistribution

from search_spaces import ArchConfig, LanguageModelConfig, VisionTowerConfig
from studies._config import load_config
from studies._review import publish

EARLY = ArchConfig(
    vision=VisionTowerConfig(depth=2, width=64),
    lm=LanguageModelConfig(depth=2, width=96),
    grid_pinpoints=((1, 1), (1, 2), (2, 1), (2, 2)),  # 5 tiles of 16 tokens
    quant=(("cpu", "fp32"),),
)
CROSS = ArchConfig.from_dict(
    {
        "vision": {"depth": 2, "width": 32, "pooling": "avg2x2"},
        "lm": {"depth": 3, "width": 64},
        "grid_pinpoints": [[1, 1], [1, 2]],  # 3 tiles of 4 pooled tokens
        "fusion": {"placement": "cross_attention", "xattn_layers": [1, 2], "gating": "tanh"},
        "quant": {"cpu": "int8_static"},
    }
)


def _study(workdir: Path) -> optuna.Study:
    """Three complete trials with folders like a search leaves them: 0 (early fusion)
    and 1 (cross-attention) on the front, 2 dominated by both."""
    study = optuna.create_study(study_name="demo", directions=["maximize", "minimize"])
    rows = [
        (EARLY, {"fusion.placement": "early"}, [0.6, 2.0]),
        (
            CROSS,
            {"fusion.placement": "cross_attention", "fusion.xattn_layers": "upper_half"},
            [0.4, 1.0],
        ),
        (EARLY, {"fusion.placement": "early"}, [0.3, 3.0]),
    ]
    for number, (arch, params, values) in enumerate(rows):
        folder = workdir / "demo" / "trials" / str(number)
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump({"arch": arch.to_dict()}))
        metrics = {"cpu/accuracy": values[0], "cpu/latency_p50_ms": values[1]}
        if arch is EARLY:  # what a trial measures: visual tokens per image, on average
            metrics["image_tokens"] = 71.6
        info = {"trial_dir": str(folder), "cpu/latency_source": "measured"}
        (folder / "metrics.json").write_text(json.dumps({"metrics": metrics, "info": info}))
        choices = {
            "fusion.placement": ["early", "cross_attention"],
            "fusion.xattn_layers": ["all", "upper_half"],
        }
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: CategoricalDistribution(choices[k]) for k in params},
                values=values,
                user_attrs={"trial_dir": str(folder), "arch_id": arch.arch_id},
            )
        )
    return study


def test_front_rows_name_each_members_choices_and_link_its_folder(tmp_path: Path) -> None:
    cfg = load_config([f"study.workdir={tmp_path}", "study.name=demo", "hardware=[cpu]"])
    report = publish(cfg, _study(tmp_path))
    assert report == tmp_path / "demo" / "report.html"

    with (tmp_path / "demo" / "pareto.csv").open() as fh:
        rows = {int(r["trial"]): r for r in csv.DictReader(fh)}
    assert sorted(rows) == [0, 1]
    early, cross = rows[0], rows[1]
    assert early["fusion"] == "early"
    assert cross["fusion"] == "cross_attention, gating tanh, xattn layers 1, 2 (upper_half)"
    # measured where the trial says (AnyRes: it depends on each image), else the most
    assert (early["image_tokens"], cross["image_tokens"]) == ("72 (at most 88)", "at most 14")
    assert (early["lm"], cross["lm"]) == ("2 x 96", "3 x 64")
    assert (early["vision"], cross["vision"]) == ("2 x 64", "2 x 32, avg2x2 pooling")
    assert (early["cpu/scheme"], cross["cpu/scheme"]) == ("fp32", "int8_static")
    assert early["trial_dir"] == "trials/0/"  # relative to the study folder

    text = report.read_text()
    table = re.search(r'<table id="front">.*?</table>', text, re.S)
    assert table, "report.html has no front table"
    front = table.group(0)
    for header in ("fusion", "image tokens", "LM (depth x width)", "cpu quantization", "folder"):
        assert f"<th>{header}</th>" in front
    for cell in (
        "cross_attention, gating tanh, xattn layers 1, 2 (upper_half)",
        "3 x 64",
        "2 x 32, avg2x2 pooling",
        "int8_static",
    ):
        assert f"<td>{cell}</td>" in front
    for number in (0, 1):
        assert f'<a href="trials/{number}/">trials/{number}/</a>' in front
        # the link resolves from report.html's folder to the trial's folder
        assert (report.parent / f"trials/{number}" / "config.yaml").is_file()
    assert "trials/2/" not in front  # dominated, not on the front
