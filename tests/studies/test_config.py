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
    assert cfg.study.sampler == "auto"  # the preset


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
            "study.objectives metric 'gpu/accuracy'; allowed with hardware=['cpu']",
        ),
        (
            [
                "study.objectives=[{metric: cpu/accuracy, direction: up}, {metric: cpu/size_mb, direction: minimize}]"
            ],
            "study.objectives[0].direction='up': allowed 'maximize', 'minimize'",
        ),
        (
            ["study.objectives=[{metric: cpu/accuracy, direction: maximize}]"],
            "study.objectives has 1 entry; needs >= 2",
        ),
        (["study.name=a/b"], "study.name='a/b': use letters, digits"),
        (
            ["study.sampler=grid"],
            "study.sampler='grid': allowed 'auto', 'nsga2', 'nsga3', 'tpe', 'gp', 'random'",
        ),
        (
            [
                "study.sampler=auto",
                "study.objectives=[{metric: cpu/accuracy, direction: maximize}, {metric: val_accuracy, direction: maximize}]",
            ],
            "study.sampler=auto needs objectives known before training",
        ),
        (["study.cheap_per_training=0"], "study.cheap_per_training=0: must be >= 1"),
        (["trainer.lr=-1"], "trainer.lr=-1.0: must be > 0"),
        (["data.train_images=lots"], "data.train_images='lots': must be an integer"),
        (
            ["export.policy=best"],
            "export.policy='best': allowed 'pareto', 'knee', 'max_accuracy', 'min_latency'",
        ),
        (
            ["export.policy=max_accuracy"],
            "export.policy=max_accuracy needs export.latency_budget_ms=<ms>",
        ),
        (
            ["export.policy=min_latency"],
            "export.policy=min_latency needs export.accuracy_floor=<0..1>",
        ),
        (["export.profile=gpu"], "export.profile='gpu'; allowed with hardware=['cpu']"),
        (["data.noise=1.5"], "data.noise=1.5: must be in [0, 1)"),
        (
            ["+study.bogus=1"],
            "study: unknown keys ['bogus']; allowed ['asha', 'cheap_per_training', 'constraints',",
        ),
        (["+trainer.epochs=3"], "trainer: unknown keys ['epochs']; allowed ['batch_size',"),
        (["hardware.cpu.threads=0"], "hardware.cpu.threads=0: must be >= 1"),
        (
            ["hardware.cpu.quant_schemes=[fp32,w8a8]"],
            "hardware.cpu.quant_schemes has 'w8a8'; allowed on this profile ['fp32',",
        ),
        (
            ["search_space.fusion.share_ratio=[0.5,1.5]"],
            "search_space 'llava_next': fusion.share_ratio choice 1.5 outside [0, 1]",
        ),
        (
            ["search_space.lm.depth=[0,2]"],
            "search_space 'llava_next': lm.depth choice 0 must be >= 1",
        ),
        (
            ["study.heartbeat_interval=30", "study.stale_after=30"],
            "study.stale_after=30: must be > study.heartbeat_interval=30",
        ),
        (["study.heartbeat_interval=0"], "study.heartbeat_interval=0: must be >= 1"),
        (["data=llava"], "data.root is required (set it with data.root=...)"),
    ],
)
def test_bad_values_are_one_line_config_errors(
    overrides: list[str], needle: str, tmp_path: Path
) -> None:
    workdir = tmp_path / "runs"
    with pytest.raises(ConfigError) as err:
        load_config([*overrides, f"study.workdir={workdir}"])
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert not workdir.exists(), "load_config wrote before it had checked every group"


def test_multi_driver_timing_defaults() -> None:
    study = load_config().study
    assert (study.heartbeat_interval, study.stale_after) == (10, 60)


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


def test_a_study_of_the_shipped_checkpoint_scores_on_images_it_was_not_trained_on() -> None:
    # shapes-VQA draws train then val records from one stream per seed: with the
    # checkpoint's seed 0 and fewer training images, the study's validation images are
    # among the checkpoint's 6,000 training images (pretrain.json).
    with pytest.raises(ConfigError, match=r"data.seed=0: .* validation images would be among"):
        load_config(["study=pretrained_cpu", "data.seed=0"])
    assert load_config(["study=pretrained_cpu"]).data.seed == 1  # the preset holds them out
    # with at least as many training images the study's validation records come after
    load_config(["study=pretrained_cpu", "data.seed=0", "data.train_images=6000"])
