"""Plots and the static report from plain records: files exist, axes are labelled with
metric and unit, the front and the baseline are marked."""

from __future__ import annotations

import json
import re
from pathlib import Path

from dashboards._html import write_report
from dashboards._plots import Objective, PlotTrial, axis_label, figure_divs, write_plots

OBJECTIVES = [Objective("cpu/accuracy", "maximize"), Objective("cpu/latency_p50_ms", "minimize")]


def _trials() -> list[PlotTrial]:
    rows = [
        (0, "complete", 0.45, 0.50, True, True),
        (1, "complete", 0.40, 0.30, False, True),
        (2, "complete", 0.35, 0.60, False, False),
        (3, "infeasible", 0.0, 2.00, False, False),
        (4, "pruned", None, None, False, False),
    ]
    return [
        PlotTrial(
            number=n,
            state=state,
            values={} if acc is None else {"cpu/accuracy": acc, "cpu/latency_p50_ms": lat},
            params={
                "lm.width": [64, 96, 128][n % 3],
                "fusion.placement": ["early", "hybrid"][n % 2],
            },
            baseline=base,
            on_front=front,
        )
        for n, state, acc, lat, base, front in rows
    ]


def test_axis_labels_carry_units() -> None:
    assert axis_label("cpu/latency_p50_ms") == "cpu/latency_p50_ms (ms)"
    assert axis_label("npu_htp/size_mb") == "npu_htp/size_mb (MB)"
    assert axis_label("cpu/accuracy") == "cpu/accuracy (exact match, 0-1)"


def test_every_plot_is_written_as_html_and_png(tmp_path: Path) -> None:
    history = [(1, 0.1), (2, 0.2), (3, 0.25)]
    written = write_plots(tmp_path, _trials(), OBJECTIVES, history, {"lm.width": 0.7, "x": 0.3})
    names = sorted(p.name for p in written)
    for plot in ("pareto", "hypervolume", "parallel_coordinates", "param_importances"):
        assert f"{plot}.html" in names and f"{plot}.png" in names
    for path in written:
        assert path.stat().st_size > 1000
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pareto = (tmp_path / "pareto.html").read_text().replace("\\u002f", "/")
    figure = json.loads(
        re.search(r'Plotly.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*\{', pareto, re.S).group(1)
    )
    by_name = {trace["name"]: trace for trace in figure}
    assert by_name["Pareto front"]["text"] == ["trial 1", "trial 0"]  # sorted along x
    assert by_name["baseline (trial 0)"]["text"] == ["trial 0"]
    assert by_name["infeasible (broke a constraint)"]["text"] == ["trial 3"]
    assert "cpu/latency_p50_ms (ms)" in pareto and "cpu/accuracy (exact match, 0-1)" in pareto


def test_report_is_self_contained(tmp_path: Path) -> None:
    divs = figure_divs(_trials(), OBJECTIVES, [(1, 0.1)], {})
    report = write_report(
        tmp_path / "report.html",
        title="vlmnas study demo",
        facts={"study": "demo", "front size": 2},
        front_columns=["trial", "cpu/accuracy"],
        front_rows=[{"trial": 0, "cpu/accuracy": 0.45}, {"trial": 1, "cpu/accuracy": 0.4}],
        plots=divs,
    )
    text = report.read_text()
    assert "<script src=" not in text  # nothing fetched from a network
    assert 'id="plot-pareto"' in text and "<td>0.45</td>" in text
