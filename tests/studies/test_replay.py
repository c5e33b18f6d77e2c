"""`vlmnas replay`: samplers against a measured table, counting trainings, on a small
synthetic table whose front is known, and one clear error per bad table."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest

from studies._config import ConfigError
from studies._replay import ReplayTable, replay, replay_one
from studies.cli import main

PARAMS = ["width", "kind"]
OBJECTIVES = ["acc:max", "lat_ms:min"]
# The front: width 4 of kind "b" (best accuracy), width 1 of kind "a" (fastest) and
# width 2 of kind "a" between them; every other row is dominated by one of those.
FRONT = {(4, "b"): (0.9, 4.0), (1, "a"): (0.5, 1.0), (2, "a"): (0.7, 2.0)}


def _rows() -> list[dict[str, object]]:
    rows = []
    for width, kind in itertools.product([1, 2, 3, 4], ["a", "b", "c"]):
        acc, lat = FRONT.get((width, kind), (0.1 * width, 1.5 * width + 1.0))
        rows.append({"width": width, "kind": kind, "acc": acc, "lat_ms": lat, "note": "x"})
    return rows


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def table(tmp_path: Path) -> ReplayTable:
    return ReplayTable.load(_write(tmp_path / "t.csv", _rows()), PARAMS, OBJECTIVES, ["lat_ms"])


def test_table_reads_numbers_as_numbers_and_knows_its_front(table: ReplayTable) -> None:
    assert table.values == {"width": [1, 2, 3, 4], "kind": ["a", "b", "c"]}
    assert table.directions == ["maximize", "minimize"]
    # reference (0, 5): the front's staircase is 0.5*(2-1) + 0.7*(4-2) + 0.9*(5-4) by slices
    ref = table.reference([0.0, 5.0])
    assert table.true_hypervolume(ref) == pytest.approx(0.5 * 1 + 0.7 * 2 + 0.9 * 1)
    # median and nadir are the table's own
    assert table.reference("nadir") == [0.1, 7.0]
    assert len(table.reference("median")) == 2


def test_training_every_row_reaches_the_whole_front(table: ReplayTable) -> None:
    run = replay_one(table, "random", seed=3, trainings=12, ref=[0.0, 8.0])
    assert sorted(run.trained_rows) == list(range(12))  # each row trained once
    assert run.cheap_rows == 12
    assert run.shares[-1] == pytest.approx(1.0)
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(run.shares))  # never falls


def test_baseline_row_is_trained_first_and_runs_repeat_by_seed(table: ReplayTable) -> None:
    first = replay_one(table, "tpe", seed=0, trainings=6, ref=[0.0, 8.0], baseline_row=5)
    again = replay_one(table, "tpe", seed=0, trainings=6, ref=[0.0, 8.0], baseline_row=5)
    assert first.trained_rows[0] == 5 and first == again
    other = replay_one(table, "tpe", seed=1, trainings=6, ref=[0.0, 8.0], baseline_row=5)
    assert other.trained_rows != first.trained_rows


def test_replay_summary_per_sampler(table: ReplayTable) -> None:
    out = replay(table, ["random", "nsga2"], seeds=3, trainings=12, reference="nadir", processes=1)
    assert out["reference"] == [0.1, 7.0] and out["reference_rule"] == "nadir"
    for name in ("random", "nsga2"):
        summary = out["samplers"][name]
        assert [s["seed"] for s in summary["seeds"]] == [0, 1, 2]
        assert all(len(s["trained_rows"]) == 12 for s in summary["seeds"])
        assert summary["share_after_10"]["mean"] <= 1.0
        assert "share_after_25" not in summary  # beyond the 12 trainings
        reach = summary["trainings_to_95"]
        assert reach["reached"] == 3 and all(1 <= n <= 12 for n in reach["per_seed"])


@pytest.mark.parametrize("sampler", ["random", "tpe", "auto"])
def test_constraints_keep_rows_off_the_front_and_cheap_ones_untrained(
    tmp_path: Path, sampler: str
) -> None:
    # latency (cheap) at most 3.5: the fastest two front rows and (1, b..c) stay; the
    # true front is then theirs alone, and no slower row is ever trained
    path = _write(tmp_path / "t.csv", _rows())
    limited = ReplayTable.load(path, PARAMS, OBJECTIVES, ["lat_ms"], ["lat_ms <= 3.5"])
    assert sum(limited.feasible) == 4
    assert limited.true_hypervolume([0.0, 5.0]) == pytest.approx(0.5 * 1 + 0.7 * 3)
    run = replay_one(limited, sampler, seed=0, trainings=4, ref=[0.0, 5.0])
    assert all(limited.feasible[r] for r in run.trained_rows)
    assert run.shares[-1] == pytest.approx(1.0)
    # accuracy (known only after training) at least 0.6: trained, but off the front
    after = ReplayTable.load(path, PARAMS, OBJECTIVES, ["lat_ms"], ["acc >= 0.6"])
    assert after.true_hypervolume([0.0, 5.0]) == pytest.approx(0.7 * 2 + 0.9 * 1)
    run = replay_one(after, "random", seed=0, trainings=12, ref=[0.0, 5.0])
    assert sorted(run.trained_rows) == list(range(12)) and run.shares[-1] == pytest.approx(1.0)


def test_seeds_run_in_parallel_processes_give_the_same_result(table: ReplayTable) -> None:
    serial = replay(table, ["random"], seeds=2, trainings=5, processes=1)
    parallel = replay(table, ["random"], seeds=2, trainings=5, processes=2)
    assert serial == parallel


def test_cli_writes_the_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "t.csv", _rows())
    out = tmp_path / "r" / "replay.json"
    code = main(
        [
            "replay",
            f"table={path}",
            "table.params=[width,kind]",
            "table.objectives=[acc:max,lat_ms:min]",
            "table.cheap=[lat_ms]",
            "replay.samplers=[random,tpe]",
            "replay.seeds=2",
            "replay.trainings=10",
            "replay.baseline_row=0",
            "replay.processes=1",
            f"replay.out={out}",
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result["samplers"]) == {"random", "tpe"}
    assert result["samplers"]["tpe"]["seeds"][0]["trained_rows"][0] == 0
    assert "random: hypervolume share after trainings 10:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("edit", "args", "message"),
    [
        (
            lambda rows: [{k: v for k, v in r.items() if k != "lat_ms"} for r in rows],
            {},
            "no column \\['lat_ms'\\]",
        ),
        (
            lambda rows: [{**r, "acc": "n/a"} if i == 3 else r for i, r in enumerate(rows)],
            {},
            ":5: acc='n/a' is not a number",
        ),
        (lambda rows: [*rows, rows[0]], {}, "rows 2 and 14 are the same configuration"),
        (lambda rows: rows[:-1], {}, "11 rows but its parameters' values make 12"),
        (lambda rows: rows, {"objectives": ["acc:max"]}, "at least 2"),
        (lambda rows: rows, {"objectives": ["acc:up", "lat_ms:min"]}, "column:max or column:min"),
        (lambda rows: rows, {"cheap": ["size"]}, "'size' is not one of table.objectives"),
        (lambda rows: rows, {"params": ["width", "acc"]}, "'acc' is named twice"),
        (
            lambda rows: rows,
            {"constraints": ["lat_ms < 3"]},
            "table.constraints entry 'lat_ms < 3'",
        ),
        (lambda rows: rows, {"constraints": ["size <= 3"]}, "no column \\['size'\\]"),
        (lambda rows: rows, {"constraints": ["lat_ms <= 0.5"]}, "no row meets table.constraints"),
        (
            lambda rows: [{**r, "mb": "big" if i == 0 else 1} for i, r in enumerate(rows)],
            {"constraints": ["mb <= 2"]},
            ":2: mb='big' is not a number",
        ),
    ],
    ids=[
        "missing column",
        "non-numeric objective",
        "duplicate",
        "not a full grid",
        "one objective",
        "bad direction",
        "cheap not an objective",
        "param is an objective",
        "bad constraint",
        "constraint column missing",
        "constraint nothing meets",
        "non-numeric constrained column",
    ],
)
def test_bad_table_gets_one_line(tmp_path: Path, edit, args, message) -> None:
    path = _write(tmp_path / "t.csv", edit(_rows()))
    with pytest.raises(ConfigError, match=message) as info:
        ReplayTable.load(
            path,
            args.get("params", PARAMS),
            args.get("objectives", OBJECTIVES),
            args.get("cheap", ["lat_ms"]),
            args.get("constraints", []),
        )
    assert "\n" not in str(info.value)


def test_bad_options_are_named_before_any_replay(table: ReplayTable, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'annealing' unknown"):
        replay(table, ["annealing"], seeds=1, trainings=2)
    with pytest.raises(ConfigError, match="baseline_row=99"):
        replay(table, ["random"], seeds=1, trainings=2, baseline_row=99)
    with pytest.raises(ConfigError, match="replay.reference='best'"):
        replay(table, ["random"], seeds=1, trainings=2, reference="best")
    with pytest.raises(ConfigError, match="3 values for 2 objectives"):
        replay(table, ["random"], seeds=1, trainings=2, reference=[0.0, 1.0, 2.0])
    with pytest.raises(ConfigError, match="no row beats it"):
        replay(table, ["random"], seeds=1, trainings=2, reference=[1.0, 0.0])
    with pytest.raises(ConfigError, match="no such file"):
        ReplayTable.load(tmp_path / "none.csv", PARAMS, OBJECTIVES, [])
    code = main(["replay", "table=x.csv", "replay.colour=red"])
    assert code == 2
