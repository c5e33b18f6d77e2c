"""Plots and the static report from plain records: files exist, axes are labelled with
metric and unit, the front and the baseline are marked, the parallel-coordinates and
importance plots show only parameters that vary, the front table links each trial's
folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

from dashboards._html import Link, write_report
from dashboards._plots import (
    Objective,
    PlotTrial,
    axis_label,
    figure_divs,
    parallel_axes,
    short_label,
    write_plots,
)

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


def _figure(html_text: str) -> list[dict]:
    """The traces of the plotly figure in an HTML file or fragment."""
    text = html_text.replace("\\u002f", "/")
    found = re.search(r'Plotly.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*\{', text, re.S)
    assert found, "no plotly figure in the page"
    return json.loads(found.group(1))


def _varied_trials() -> list[PlotTrial]:
    """Complete trials where lm.width and fusion.placement vary, vision.depth is fixed,
    fusion.gating is sampled only with cross-attention, and lm.heads differs only on a
    pruned trial (which is not plotted)."""
    rows = [
        (0, "complete", {"fusion.placement": "early", "lm.width": 64}),
        (1, "complete", {"fusion.placement": "cross_attention", "lm.width": 128}),
        (2, "complete", {"fusion.placement": "early", "lm.width": 96}),
        (3, "pruned", {"fusion.placement": "early", "lm.width": 64, "lm.heads": 8}),
    ]
    trials = []
    for n, state, params in rows:
        params = {"vision.depth": 2, "lm.heads": 4, **params}
        if params["fusion.placement"] == "cross_attention":
            params["fusion.gating"] = "tanh"
        values = {} if state == "pruned" else {"cpu/accuracy": 0.3 + n / 10}
        values |= {"cpu/latency_p50_ms": 1.0 + n} if values else {}
        trials.append(PlotTrial(number=n, state=state, values=values, params=params))
    return trials


def test_parallel_coordinates_plot_only_parameters_that_vary(tmp_path: Path) -> None:
    shown, axes = parallel_axes(_varied_trials(), OBJECTIVES)
    assert [t.number for t in shown] == [0, 1, 2]
    names = [a.name for a in axes]
    # the model's order (LM before fusion), then the objectives; no fixed parameter
    assert names == [
        "lm.width",
        "fusion.placement",
        "fusion.gating",
        *(o.metric for o in OBJECTIVES),
    ]
    width = axes[0]
    assert width.ticks == ["64", "96", "128"] and width.values == [0.0, 2.0, 1.0]  # numeric order
    assert next(a for a in axes if a.name == "fusion.gating").ticks == ["n/a", "tanh"]

    written = write_plots(tmp_path, _varied_trials(), OBJECTIVES, [(1, 0.1)], {})
    assert tmp_path / "parallel_coordinates.png" in written
    (parcoords,) = _figure((tmp_path / "parallel_coordinates.html").read_text())
    labels = [d["label"] for d in parcoords["dimensions"]]
    assert labels == [
        "LM<br>width",
        "fusion<br>placement",
        "fusion<br>gating",
        "cpu/accuracy<br>(exact match, 0-1)",
        "cpu/latency_p50_ms<br>(ms)",
    ]
    # no axis label is a long dotted name that would run into its neighbours
    assert all(len(line) <= 20 for label in labels for line in label.split("<br>"))


def test_short_labels_are_two_short_lines() -> None:
    assert short_label("fusion.image_attention") == "fusion\nimage attn"
    assert short_label("vision.pos_encoding") == "vision\npos. encoding"
    assert short_label("grid_pinpoints") == "AnyRes\ngrids"
    assert short_label("quant.npu_htp") == "quant\nnpu htp"
    assert short_label("activation") == "activation"


def test_importances_leave_out_fixed_parameters(tmp_path: Path) -> None:
    importances = {"lm.width": 0.6, "fusion.placement": 0.4, "vision.depth": 0.0}
    divs = figure_divs(_varied_trials(), OBJECTIVES, [(1, 0.1)], importances)
    (bars,) = _figure(divs["param_importances"])
    assert bars["y"] == ["fusion.placement", "lm.width"]  # least important first


def test_report_front_table_links_each_trial_folder(tmp_path: Path) -> None:
    report = write_report(
        tmp_path / "report.html",
        title="vlmnas study demo",
        facts={"study": "demo"},
        front_columns=["trial", "fusion", "lm", "trial_dir"],
        front_rows=[
            {
                "trial": 4,
                "fusion": "cross_attention, gating tanh",
                "lm": "2 x 64",
                "trial_dir": Link("trials/4/", "trials/4/"),
            }
        ],
        plots={},
        column_titles={"lm": "LM (depth x width)", "trial_dir": "folder"},
    )
    text = report.read_text()
    assert '<td><a href="trials/4/">trials/4/</a></td>' in text
    assert "<th>LM (depth x width)</th>" in text and "<th>folder</th>" in text
    assert "<td>cross_attention, gating tanh</td>" in text
