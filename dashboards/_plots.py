"""The study's plots, from plain trial records: Pareto front, hypervolume history,
parallel coordinates and parameter importances.

Each plot is written twice: an interactive plotly HTML file (plotly.js inlined, so it
opens without a network) and a PNG drawn with matplotlib (no browser needed). Axes
carry the metric name and its unit; the front is highlighted and the baseline marked.
Parallel coordinates and importances show only the parameters that vary among the
complete trials, parallel axes under short two-line names in the model's order.
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
            _importance_plotly(importances, trials, objectives),
            lambda path: _importance_png(path, importances, trials, objectives),
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
        "param_importances": _importance_plotly(importances, trials, objectives),
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

# Short axis names: the section on one line, the leaf below, so neighbours do not collide.
_SECTION_NAMES = {"vision": "vision", "lm": "LM", "fusion": "fusion", "quant": "quant"}
_LEAF_NAMES = {
    "image_attention": "image attn",
    "xattn_layers": "xattn layers",
    "text_only_from": "text-only from",
    "pos_encoding": "pos. encoding",
    "feature_layer": "feature layer",
    "grid_pinpoints": "AnyRes grids",
    "projector_depth": "projector depth",
    "distill_temperature": "distill temp.",
    "filter_threshold": "filter thresh.",
    "mlp_ratio": "MLP ratio",
}
# Axis order follows the model: vision tower, tiling, projector, LM, fusion, deployment.
_AXIS_ORDER = ("vision", "grid_pinpoints", "projector_depth", "activation", "lm", "fusion")
_NOT_APPLICABLE = "n/a"  # a conditional parameter the trial did not sample


@dataclass(frozen=True)
class Axis:
    """One parallel-coordinates axis: a parameter (`ticks` = its values in axis order,
    `values` = each trial's index into them) or an objective (`ticks` None)."""

    name: str
    label: str  # two short lines, joined by a newline
    values: list[float]
    ticks: list[str] | None = None


def short_label(name: str) -> str:
    """`fusion.image_attention` -> "fusion\nimage attn"; `grid_pinpoints` -> "AnyRes\ngrids"."""
    section, _, leaf = name.rpartition(".")
    text = _LEAF_NAMES.get(leaf, leaf.replace("_", " "))
    if section:
        return f"{_SECTION_NAMES.get(section, section)}\n{text}"
    return text.replace(" ", "\n", 1)


def parallel_axes(
    trials: Sequence[PlotTrial], objectives: Sequence[Objective]
) -> tuple[list[PlotTrial], list[Axis]]:
    """The complete trials with every objective measured, and their axes: one per
    parameter whose value differs among them (a fixed one tells nothing and crowds the
    others out), then one per objective."""
    shown = [
        t
        for t in trials
        if t.state == "complete" and all(_finite(t.values.get(o.metric)) for o in objectives)
    ]
    axes = []
    for name in sorted({k for t in shown for k in t.params}, key=_axis_rank):
        texts = [_tick(t.params.get(name)) for t in shown]
        ticks = sorted(set(texts), key=_tick_order)
        if len(ticks) < 2:
            continue
        axes.append(Axis(name, short_label(name), [float(ticks.index(x)) for x in texts], ticks))
    for o in objectives:
        label = axis_label(o.metric).replace(" (", "\n(", 1)
        axes.append(Axis(o.metric, label, [float(t.values[o.metric]) for t in shown]))
    return shown, axes


def _axis_rank(name: str) -> tuple[int, bool, str]:
    head = name.split(".")[0]
    rank = _AXIS_ORDER.index(head) if head in _AXIS_ORDER else len(_AXIS_ORDER)
    return (rank, not name.endswith(".placement"), name)


def _tick(value: Any) -> str:
    return _NOT_APPLICABLE if value is None else str(value)


def _tick_order(text: str) -> tuple[int, float, str]:
    if text == _NOT_APPLICABLE:
        return (0, 0.0, "")
    try:
        return (1, float(text), "")
    except ValueError:
        return (2, 0.0, text)


def _parallel_plotly(trials: Sequence[PlotTrial], objectives: Sequence[Objective]) -> Any:
    import plotly.graph_objects as go

    shown, axes = parallel_axes(trials, objectives)
    metric = objectives[0].metric
    dims = [
        {
            "label": a.label.replace("\n", "<br>"),
            "values": a.values,
            **(
                {"tickvals": list(range(len(a.ticks))), "ticktext": a.ticks}
                if a.ticks is not None
                else {}
            ),
        }
        for a in axes
    ]
    fig = go.Figure(
        go.Parcoords(
            line={
                "color": [t.values[metric] for t in shown],
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"title": {"text": metric, "side": "right"}, "x": 1.04},
            },
            dimensions=dims,
            labelfont={"size": 12},
            tickfont={"size": 10},
            # The min/max printed at each numeric axis's ends collides with a two-line
            # label; the axis ticks already give the values.
            rangefont={"color": "rgba(0,0,0,0)"},
        )
    )
    fig.update_layout(
        title=f"Parameters that vary among the {len(shown)} complete trials, coloured by {metric}",
        # ~105 px per axis keeps labels and tick texts apart; the report scrolls wider ones.
        width=max(1000, 105 * len(axes) + 160),
        height=560,
        margin={"l": 70, "r": 130, "t": 140, "b": 40},
    )
    return fig


def _parallel_png(path: Path, trials: Sequence[PlotTrial], objectives: Sequence[Objective]) -> None:
    plt = _pyplot()
    shown, axes = parallel_axes(trials, objectives)
    metric = objectives[0].metric
    fig, ax = plt.subplots(figsize=(max(8.0, 1.15 * len(axes) + 1.5), 5.5), dpi=110)
    params = [a for a in axes if a.ticks is not None]
    if shown and params:
        cmap = plt.get_cmap("viridis")
        colour = [t.values[metric] for t in shown]
        lo, hi = min(colour), max(colour)
        span = hi - lo

        def height(a: Axis, v: float) -> float:
            if a.ticks is not None:
                return v / (len(a.ticks) - 1)
            low, high = min(a.values), max(a.values)
            return (v - low) / (high - low) if high > low else 0.5

        for i, c in enumerate(colour):
            ys = [height(a, a.values[i]) for a in axes]
            ax.plot(range(len(axes)), ys, color=cmap((c - lo) / span if span else 0.5), alpha=0.7)
        for x, a in enumerate(axes):
            ax.axvline(x, color="#888", lw=0.8, zorder=0)
            if a.ticks is not None:
                marks = [(height(a, k), tick) for k, tick in enumerate(a.ticks)]
            else:
                marks = [(0.0, f"{min(a.values):.3g}"), (1.0, f"{max(a.values):.3g}")]
            for y, tick in marks:
                ax.annotate(
                    tick,
                    (x, y),
                    xytext=(3, 0),
                    textcoords="offset points",
                    fontsize=7,
                    va="center",
                    bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7},
                )
        ax.set_xticks(range(len(axes)))
        ax.set_xticklabels([a.label for a in axes], fontsize=8)
        ax.set_xlim(-0.3, len(axes) - 0.4)
        mappable = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
        fig.colorbar(mappable, ax=ax, pad=0.01, label=axis_label(metric))
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(
        f"Parameters that vary among the {len(shown)} complete trials, coloured by {metric}"
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --- Parameter importances ------------------------------------------------------------


def _varying_importances(
    importances: Mapping[str, float],
    trials: Sequence[PlotTrial],
    objectives: Sequence[Objective],
) -> list[tuple[str, float]]:
    """(parameter, importance), least important first, for the parameters on the
    parallel-coordinates plot: a fixed parameter explains nothing."""
    varying = {a.name for a in parallel_axes(trials, objectives)[1] if a.ticks is not None}
    return sorted(((k, v) for k, v in importances.items() if k in varying), key=lambda kv: kv[1])


def _importance_plotly(
    importances: Mapping[str, float],
    trials: Sequence[PlotTrial],
    objectives: Sequence[Objective],
) -> Any:
    import plotly.graph_objects as go

    items = _varying_importances(importances, trials, objectives)
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h"))
    fig.update_layout(
        title=f"Parameter importance for {objectives[0].metric} (fANOVA, complete trials)",
        xaxis_title="share of the objective's variance explained",
        yaxis_title="parameter",
        yaxis={"dtick": 1},  # a label on every bar, none skipped
        height=max(360, 26 * len(items) + 170),
        template="plotly_white",
    )
    return fig


def _importance_png(
    path: Path,
    importances: Mapping[str, float],
    trials: Sequence[PlotTrial],
    objectives: Sequence[Objective],
) -> None:
    plt = _pyplot()
    items = _varying_importances(importances, trials, objectives)
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
