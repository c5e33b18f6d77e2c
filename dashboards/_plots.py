"""The study's plots, from plain trial records: Pareto front, hypervolume history,
parallel coordinates and parameter importances.

Each plot is written twice: an interactive plotly HTML file (plotly.js inlined, so it
opens without a network) and a PNG drawn with matplotlib (no browser needed). Axes
carry the metric name and its unit; the front is highlighted and the baseline marked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PlotTrial:
    number: int
    state: str  # complete | infeasible | pruned | failed
    values: Mapping[str, float]  # objective metric -> value
    params: Mapping[str, Any] = field(default_factory=dict)
    baseline: bool = False
    on_front: bool = False


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # maximize | minimize


def axis_label(metric: str) -> str:
    """`cpu/latency_p50_ms` -> `cpu/latency_p50_ms (ms)`: the metric and its unit."""
    units = {
        "_ms": "ms",
        "size_mb": "MB",
        "accuracy": "exact match, 0-1",
        "npu_coverage": "share of nodes on the NPU",
        "params": "parameters",
    }
    unit = next((u for suffix, u in units.items() if metric.endswith(suffix)), "")
    return f"{metric} ({unit})" if unit else metric


def write_plots(
    out_dir: Path,
    trials: Sequence[PlotTrial],
    objectives: Sequence[Objective],
    hypervolume_history: Sequence[tuple[int, float]],
    importances: Mapping[str, float],
) -> list[Path]:
    """Write every plot as `<name>.html` and `<name>.png` into `out_dir`; returns paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        "pareto": (
            _pareto_plotly(trials, objectives),
            lambda path: _pareto_png(path, trials, objectives),
        ),
        "hypervolume": (
            _hv_plotly(hypervolume_history),
            lambda path: _hv_png(path, hypervolume_history),
        ),
        "parallel_coordinates": (
            _parallel_plotly(trials, objectives),
            lambda path: _parallel_png(path, trials, objectives),
        ),
        "param_importances": (
            _importance_plotly(importances, objectives),
            lambda path: _importance_png(path, importances, objectives),
        ),
    }
    written: list[Path] = []
    for name, (figure, draw_png) in plots.items():
        html = out_dir / f"{name}.html"
        figure.write_html(str(html), include_plotlyjs=True, full_html=True)
        png = out_dir / f"{name}.png"
        draw_png(png)
        written += [html, png]
    return written


def figure_divs(
    trials: Sequence[PlotTrial],
    objectives: Sequence[Objective],
    hypervolume_history: Sequence[tuple[int, float]],
    importances: Mapping[str, float],
) -> dict[str, str]:
    """Every plot as an HTML fragment, plotly.js not included."""
    figures = {
        "pareto": _pareto_plotly(trials, objectives),
        "hypervolume": _hv_plotly(hypervolume_history),
        "parallel_coordinates": _parallel_plotly(trials, objectives),
        "param_importances": _importance_plotly(importances, objectives),
    }
    return {
        name: fig.to_html(include_plotlyjs=False, full_html=False, div_id=f"plot-{name}")
        for name, fig in figures.items()
    }


# --- Pareto ---------------------------------------------------------------------------


def _groups(trials: Sequence[PlotTrial], objectives: Sequence[Objective]) -> dict[str, list]:
    x, y = objectives[0].metric, objectives[1].metric
    plotted = [t for t in trials if x in t.values and y in t.values]
    return {
        "front": sorted((t for t in plotted if t.on_front), key=lambda t: t.values[x]),
        "feasible": [t for t in plotted if t.state == "complete" and not t.on_front],
        "infeasible": [t for t in plotted if t.state == "infeasible"],
        "baseline": [t for t in plotted if t.baseline],
    }


def _pareto_plotly(trials: Sequence[PlotTrial], objectives: Sequence[Objective]) -> Any:
    import plotly.graph_objects as go

    x, y = objectives[0].metric, objectives[1].metric
    groups = _groups(trials, objectives)
    fig = go.Figure()
    styles = {
        "feasible": {"color": "#9aa5b1", "size": 9, "symbol": "circle"},
        "infeasible": {"color": "#d64545", "size": 9, "symbol": "x"},
        "front": {"color": "#0b6bcb", "size": 12, "symbol": "circle"},
        "baseline": {"color": "#f0a202", "size": 18, "symbol": "star-open", "line": {"width": 2}},
    }
    names = {
        "feasible": "dominated",
        "infeasible": "infeasible (broke a constraint)",
        "front": "Pareto front",
        "baseline": "baseline (trial 0)",
    }
    for key in ("feasible", "infeasible", "front", "baseline"):
        pts = [t for t in groups[key] if _finite(t.values[x]) and _finite(t.values[y])]
        fig.add_trace(
            go.Scatter(
                x=[t.values[x] for t in pts],
                y=[t.values[y] for t in pts],
                mode="lines+markers" if key == "front" else "markers",
                line={"shape": "hv", "color": styles[key]["color"]} if key == "front" else None,
                marker=styles[key],
                name=names[key],
                text=[f"trial {t.number}" for t in pts],
                hovertemplate="%{text}<br>%{x:.4g}, %{y:.4g}<extra></extra>",
            )
        )
    fig.update_layout(
        title=f"Pareto front: {x} ({objectives[0].direction}) vs {y} ({objectives[1].direction})",
        xaxis_title=axis_label(x),
        yaxis_title=axis_label(y),
        template="plotly_white",
    )
    return fig


def _pareto_png(path: Path, trials: Sequence[PlotTrial], objectives: Sequence[Objective]) -> None:
    plt = _pyplot()
    x, y = objectives[0].metric, objectives[1].metric
    groups = _groups(trials, objectives)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)

    def pts(key: str) -> tuple[list[float], list[float]]:
        keep = [t for t in groups[key] if _finite(t.values[x]) and _finite(t.values[y])]
        return [t.values[x] for t in keep], [t.values[y] for t in keep]

    ax.scatter(*pts("feasible"), c="#9aa5b1", label="dominated")
    ax.scatter(*pts("infeasible"), c="#d64545", marker="x", label="infeasible")
    fx, fy = pts("front")
    ax.step(fx, fy, where="post", c="#0b6bcb", alpha=0.5)
    ax.scatter(fx, fy, c="#0b6bcb", s=60, label="Pareto front", zorder=3)
    for t in groups["front"]:
        ax.annotate(
            str(t.number),
            (t.values[x], t.values[y]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    bx, by = pts("baseline")
    ax.scatter(
        bx,
        by,
        s=220,
        marker="*",
        facecolors="none",
        edgecolors="#f0a202",
        linewidths=2,
        label="baseline (trial 0)",
        zorder=4,
    )
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(y))
    ax.set_title(f"Pareto front ({objectives[0].direction} x, {objectives[1].direction} y)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- Hypervolume history --------------------------------------------------------------


def _hv_plotly(history: Sequence[tuple[int, float]]) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Scatter(x=[n for n, _ in history], y=[h for _, h in history], mode="lines+markers")
    )
    fig.update_layout(
        title="Hypervolume of the feasible front after each finished trial",
        xaxis_title="finished trials",
        yaxis_title="hypervolume (objective units, from the reference point)",
        template="plotly_white",
    )
    return fig


def _hv_png(path: Path, history: Sequence[tuple[int, float]]) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot([n for n, _ in history], [h for _, h in history], marker="o")
    ax.set_xlabel("finished trials")
    ax.set_ylabel("hypervolume (from the reference point)")
    ax.set_title("Hypervolume of the feasible front")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- Parallel coordinates -------------------------------------------------------------


def _encoded_params(trials: Sequence[PlotTrial]) -> list[tuple[str, list[float], list[str]]]:
    """Each parameter as numbers for a parallel-coordinates axis, with tick labels."""
    names = sorted({k for t in trials for k in t.params})
    out = []
    for name in names:
        values = [t.params.get(name) for t in trials]
        choices = sorted({str(v) for v in values}, key=lambda s: (len(s), s))
        if len(choices) < 2:
            continue
        out.append((name, [float(choices.index(str(v))) for v in values], choices))
    return out


def _parallel_plotly(trials: Sequence[PlotTrial], objectives: Sequence[Objective]) -> Any:
    import plotly.graph_objects as go

    metric = objectives[0].metric
    shown = [t for t in trials if t.state == "complete" and _finite(t.values.get(metric))]
    dims = [
        {"label": name, "values": vals, "tickvals": list(range(len(ticks))), "ticktext": ticks}
        for name, vals, ticks in _encoded_params(shown)
    ]
    colour = [t.values[metric] for t in shown]
    dims.append({"label": axis_label(metric), "values": colour})
    fig = go.Figure(
        go.Parcoords(
            line={"color": colour, "colorscale": "Viridis", "showscale": True},
            dimensions=dims,
        )
    )
    fig.update_layout(title=f"Parameters of the complete trials, coloured by {metric}")
    return fig


def _parallel_png(path: Path, trials: Sequence[PlotTrial], objectives: Sequence[Objective]) -> None:
    plt = _pyplot()
    metric = objectives[0].metric
    shown = [t for t in trials if t.state == "complete" and _finite(t.values.get(metric))]
    params = _encoded_params(shown)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * (len(params) + 1)), 4.5), dpi=110)
    if shown and params:
        colour = [t.values[metric] for t in shown]
        lo, hi = min(colour), max(colour)
        cmap = plt.get_cmap("viridis")
        for i in range(len(shown)):
            ys = [vals[i] / max(len(ticks) - 1, 1) for _, vals, ticks in params]
            ys.append((colour[i] - lo) / (hi - lo) if hi > lo else 0.5)
            ax.plot(
                range(len(ys)),
                ys,
                color=cmap((colour[i] - lo) / (hi - lo) if hi > lo else 0.5),
                alpha=0.7,
            )
        ax.set_xticks(range(len(params) + 1))
        ax.set_xticklabels(
            [n for n, _, _ in params] + [metric], rotation=35, ha="right", fontsize=7
        )
    ax.set_yticks([])
    ax.set_title(f"Parameters of the complete trials, coloured by {metric} (normalised axes)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- Parameter importances ------------------------------------------------------------


def _importance_plotly(importances: Mapping[str, float], objectives: Sequence[Objective]) -> Any:
    import plotly.graph_objects as go

    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h"))
    fig.update_layout(
        title=f"Parameter importance for {objectives[0].metric} (fANOVA, complete trials)",
        xaxis_title="share of the objective's variance explained",
        yaxis_title="parameter",
        template="plotly_white",
    )
    return fig


def _importance_png(
    path: Path, importances: Mapping[str, float], objectives: Sequence[Objective]
) -> None:
    plt = _pyplot()
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, max(3, 0.35 * len(items) + 1)), dpi=110)
    ax.barh([k for k, _ in items], [v for _, v in items], color="#0b6bcb")
    ax.set_xlabel("share of the objective's variance explained")
    ax.set_title(f"Parameter importance for {objectives[0].metric} (fANOVA)")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite(v: Any) -> bool:
    import math

    return isinstance(v, int | float) and math.isfinite(v)
