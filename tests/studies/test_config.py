from __future__ import annotations

from pathlib import Path

import pytest

from studies import ConfigError, load_config


def test_default_config_composes_every_group() -> None:
    cfg = load_config()
    assert cfg.choices["search_space"] == "llava_next" and cfg.choices["study"] == "quick"
    assert [p.name for p in cfg.profiles] == ["cpu"]
    assert cfg.data.name == "shapes_vqa" and cfg.trainer.max_epochs >= 1
    assert [o.metric for o in cfg.study.objectives] == ["cpu/accuracy", "cpu/latency_p50_ms"]
    assert cfg.study.sampler == "nsga2"


def test_relative_workdir_is_resolved_in_the_driver(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(["study.workdir=runs", "study.name=x"])
    assert cfg.workdir == tmp_path / "runs"
    assert cfg.study_dir == tmp_path / "runs" / "x"


def test_overrides_reach_the_typed_groups() -> None:
    cfg = load_config(
        [
            "study.n_trials=4",
            "trainer.max_epochs=2",
            "search_space.lm.depth=[3]",
            "study.sampler=tpe",
        ]
    )
    assert cfg.study.n_trials == 4 and cfg.trainer.max_epochs == 2 and cfg.study.sampler == "tpe"
    assert cfg.space.choices["lm.depth"] == (3,)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (
            [
                "study.objectives=[{metric: gpu/accuracy, direction: maximize}, {metric: cpu/size_mb, direction: minimize}]"
            ],
            "'gpu/accuracy'",
        ),
        (
            [
                "study.objectives=[{metric: cpu/accuracy, direction: up}, {metric: cpu/size_mb, direction: minimize}]"
            ],
            "direction 'up'",
        ),
        (["study.objectives=[{metric: cpu/accuracy, direction: maximize}]"], "needs >= 2"),
        (["study.name=a/b"], "study.name='a/b'"),
        (["trainer.lr=-1"], "trainer.lr=-1.0: must be > 0"),
        (["data.train_images=lots"], "data.train_images"),
    ],
)
def test_bad_values_are_one_line_config_errors(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_optional_profile_without_its_runtime_is_dropped_before_any_trial(monkeypatch) -> None:
    from hardware_profiles import HardwareProfile, ProfileError
    from studies._config import available_profiles

    def missing(self: HardwareProfile) -> None:
        if self.name == "gpu":
            raise ProfileError("hardware.gpu: needs a CUDA device")

    monkeypatch.setattr(HardwareProfile, "check_available", missing)
    required = load_config(["hardware=[cpu,gpu]"])
    with pytest.raises(ConfigError, match="needs a CUDA device.*study.optional_profiles"):
        available_profiles(required)
    optional = load_config(["hardware=[cpu,gpu]", "study.optional_profiles=[gpu]"])
    kept, dropped = available_profiles(optional)
    assert [p.name for p in kept.profiles] == ["cpu"]
    assert dropped == ["hardware.gpu: needs a CUDA device: optional profile 'gpu' left out"]
    on_gpu = load_config(
        [
            "hardware=[cpu,gpu]",
            "study.optional_profiles=[gpu]",
            "study.objectives=[{metric: cpu/accuracy, direction: maximize},"
            " {metric: gpu/latency_p50_ms, direction: minimize}]",
        ]
    )
    with pytest.raises(
        ConfigError, match="objectives or constraints \\['gpu/latency_p50_ms'\\] need it"
    ):
        available_profiles(on_gpu)


def test_edge_npu_preset_selects_both_profiles() -> None:
    cfg = load_config(["study=edge_npu"])
    assert [p.name for p in cfg.profiles] == ["cpu", "npu_htp"]
    assert {o.metric.split("/")[0] for o in cfg.study.objectives} == {"cpu", "npu_htp"}
