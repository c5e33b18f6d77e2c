"""Tabular replay of a study (studies/_tabular.py, on `vlmnas replay`'s engine) and the
shipped table of bench/data."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from studies import ConfigError, load_config, pareto_front
from studies._tabular import baseline_row, load_table, replay, search_reference, space_params

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "bench" / "data" / "tabular_cpu.csv"
SPACE = ["search_space=tabular", "hardware.cpu.quant_schemes=[fp32,int8_dynamic]"]
SAMPLERS = ["auto", "nsga2", "tpe", "gp", "random"]


def _cfg(*overrides: str):
    return load_config([*SPACE, "study.population_size=4", *overrides])


def _write_table(path: Path, drop: int = 0) -> Path:
    """Every configuration of the tabular space with made-up but structured metrics:
    accuracy grows with widths, latency with widths and tiles."""
    cfg = _cfg()
    grid = cfg.space.grid({"cpu": ("fp32", "int8_dynamic")})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(
            f,
            fieldnames=[
                "arch_id",
                *dict.fromkeys(k for p in grid for k in p),
                "cpu/accuracy",
                "cpu/latency_p50_ms",
            ],
        )
        writer.writeheader()
        for params in grid[drop:]:
            arch = cfg.space.to_arch(params)
            size = params["lm.width"] * params["lm.depth"] + params["vision.width"]
            tiles = {"1x1": 2, "1x2": 3, "2x2": 5}[params["grid_pinpoints"]]
            int8 = params["quant.cpu"] == "int8_dynamic"
            writer.writerow(
                {
                    "arch_id": arch.arch_id,
                    **params,
                    "cpu/accuracy": 0.2 + size / 1000 + tiles / 50 - 0.01 * int8,
                    "cpu/latency_p50_ms": size * tiles / 500 * (0.8 if int8 else 1.0),
                }
            )
    return path


def test_grid_covers_every_configuration_once() -> None:
    cfg = _cfg()
    grid = cfg.space.grid({"cpu": ("fp32", "int8_dynamic")})
    assert len(grid) == 288  # 2 x 2 x 2 x 2 x 3 grids x 3 placements x 2 schemes
    assert len({cfg.space.to_arch(p).arch_id for p in grid}) == 288
    # conditionals appear only where they apply, as sample() suggests them
    cross = [p for p in grid if p["fusion.placement"] == "cross_attention"]
    assert cross and all("fusion.share_ratio" not in p and "fusion.gating" in p for p in cross)
    early = [p for p in grid if p["fusion.placement"] == "early"]
    assert early and all("fusion.gating" not in p and "fusion.share_ratio" in p for p in early)


def test_the_table_is_named_by_the_parameters_that_vary() -> None:
    assert sorted(space_params(_cfg())) == [
        "fusion.placement",
        "grid_pinpoints",
        "lm.depth",
        "lm.width",
        "quant.cpu",
        "vision.pooling",
        "vision.width",
    ]


def _trained(result: dict, sampler: str, seed: int = 0) -> list[int]:
    return result["samplers"][sampler]["seeds"][seed]["trained_rows"]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_same_seed_replays_the_same_trainings(tmp_path: Path, sampler: str) -> None:
    cfg = _cfg(f"study.sampler={sampler}", "study.seed=7")
    table = load_table(cfg, _write_table(tmp_path / "t.csv"))
    first = replay(cfg, table, 12, seeds=2, processes=1)
    again = replay(_cfg(f"study.sampler={sampler}", "study.seed=7"), table, 12, processes=1)
    assert _trained(first, sampler) == _trained(again, sampler)
    assert first["samplers"][sampler]["seeds"][0]["seed"] == 7
    # the seed is used: otherwise the check above proves nothing
    assert _trained(first, sampler, 0) != _trained(first, sampler, 1)
    # the baseline goes first, as in `search`, and nothing is trained twice
    rows = _trained(first, sampler)
    assert rows[0] == baseline_row(cfg, table) and len(set(rows)) == len(rows) == 12
    baseline = cfg.space.baseline_params({"cpu": ("fp32", "int8_dynamic")})
    assert dict(zip(table.params, table.rows[rows[0]], strict=True)) == {
        p: baseline[p] for p in table.params
    }


def test_shares_rise_to_the_true_front(tmp_path: Path) -> None:
    cfg = _cfg("study.sampler=random", "study.seed=0")
    table = load_table(cfg, _write_table(tmp_path / "t.csv"))
    result = replay(cfg, table, 288, processes=1)
    ref = search_reference(cfg, table)
    baseline = table.scores[baseline_row(cfg, table)]
    assert result["reference"] == [0.0, 2 * baseline[1]] == ref
    shares = result["samplers"]["random"]
    # every row trained once: the whole front found, the share reaching 1 at the end
    assert shares["trainings_to_95"]["reached"] == 1
    assert 0 < shares["share_after_10"]["mean"] < 1
    assert shares["share_after_100"]["mean"] <= 1


def test_a_table_missing_a_configuration_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="1 configurations of search_space 'tabular' have no row"):
        load_table(_cfg(), _write_table(tmp_path / "t.csv", drop=1))


def test_a_table_without_the_objective_is_refused(tmp_path: Path) -> None:
    cfg = _cfg(
        "study.objectives=[{metric: cpu/accuracy, direction: maximize},"
        " {metric: cpu/size_mb, direction: minimize}]"
    )
    with pytest.raises(ConfigError, match=r"no column for \['cpu/size_mb'\]"):
        load_table(cfg, _write_table(tmp_path / "t.csv"))


def test_the_shipped_table_covers_the_space_and_replays_deterministically() -> None:
    """bench/data/tabular_cpu.csv is the measured table of BENCHMARKS §10."""
    cfg = _cfg("study.sampler=nsga2", "study.seed=3")
    table = load_table(cfg, SHIPPED)
    assert len(table.rows) == 288
    accuracy = [a for a, _ in table.scores]
    latency = [lat for _, lat in table.scores]
    # not degenerate: accuracy and latency both vary, and the front has several points
    assert max(accuracy) - min(accuracy) > 0.05 and max(latency) > 2 * min(latency)
    assert len(pareto_front(table.scores, ["maximize", "minimize"])) >= 3
    first = _trained(replay(cfg, table, 20, processes=1), "nsga2")
    assert first == _trained(replay(cfg, table, 20, processes=1), "nsga2")


def test_auto_never_trains_a_row_that_breaks_a_cheap_constraint(tmp_path: Path) -> None:
    """`auto` in tabular replay: no row trained twice, none that breaks a cheap
    constraint trained (the baseline, queued first, aside), and the feasible front's
    hypervolume reached. (This 288-row table is too small to tell samplers apart;
    `vlmnas replay` on larger tables does, BENCHMARKS.md.)"""
    cfg = _cfg(
        "study.sampler=auto", "study.seed=0", 'study.constraints=["cpu/latency_p50_ms <= 2"]'
    )
    table = load_table(cfg, _write_table(tmp_path / "t.csv"))
    assert table.cheap == ("cpu/latency_p50_ms",)
    assert 0 < sum(table.feasible) < len(table.rows)
    result = replay(cfg, table, 60, processes=1)
    rows = _trained(result, "auto")
    assert len(set(rows)) == len(rows) and rows[0] == baseline_row(cfg, table)
    assert all(table.feasible[r] for r in rows[1:])
    assert result["samplers"]["auto"]["trainings_to_95"]["reached"] == 1


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_optuna_samplers_skip_training_what_breaks_a_cheap_constraint(
    tmp_path: Path, sampler: str
) -> None:
    cfg = _cfg(
        f"study.sampler={sampler}", "study.seed=0", 'study.constraints=["cpu/latency_p50_ms <= 2"]'
    )
    table = load_table(cfg, _write_table(tmp_path / "t.csv"))
    result = replay(cfg, table, 30, processes=1)
    rows = _trained(result, sampler)
    # proposals that break it cost a cheap measurement, not a training
    assert all(table.feasible[r] for r in rows[1:])
    assert result["samplers"][sampler]["seeds"][0]["cheap_rows"] > len(rows) - 1
