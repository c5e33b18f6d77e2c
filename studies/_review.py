"""What people look at after (and during) a search: plots, the Pareto table, the static
report, and the MLflow parent run that carries them.

`publish` reads the Optuna study and each trial's metrics.json, hands plain records to
`dashboards`, and logs the results to the study's parent run:

- `<study_dir>/plots/{pareto,hypervolume,parallel_coordinates,param_importances}.{html,png}`
- `<study_dir>/pareto.csv`: the front, one row per trial, every metric
- `<study_dir>/report.html`: a self-contained page (front table and plots)
- child runs tagged `pareto=true|false`; Pareto trials get their deployed models
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from dashboards import (
    Link,
    MlflowTracker,
    Objective,
    PlotTrial,
    figure_divs,
    write_plots,
    write_report,
)
from search_spaces import ArchConfig

from ._config import VlmnasConfig
from ._front import front_of, hypervolume_history, state_of


def front_numbers(cfg: VlmnasConfig, trials: list[optuna.trial.FrozenTrial]) -> list[int]:
    """The feasible front's trial numbers (`_front.py` defines it)."""
    return front_of(trials, cfg.study.objectives).members


def importances(cfg: VlmnasConfig, study: optuna.Study) -> dict[str, float]:
    """fANOVA importance of each parameter for the first objective, over feasible
    complete trials (Optuna's evaluator); empty when there are too few trials."""
    feasible = [t for t in study.get_trials(deepcopy=False) if state_of(t) == "complete"]
    if len(feasible) < 3:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(
                optuna.importance.get_param_importances(
                    study,
                    target=lambda t: t.values[0],
                    params=None,
                    evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                )
            )
    except (ValueError, RuntimeError):
        return {}


def _metrics(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    path = Path(str(trial.user_attrs.get("trial_dir", ""))) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {"metrics": {}, "info": {}}


def publish(
    cfg: VlmnasConfig,
    study: optuna.Study,
    tracker: MlflowTracker | None = None,
    parent_run: str | None = None,
) -> Path:
    """Write the plots, pareto.csv and report.html; log them (and the Pareto trials'
    models and tags) to MLflow when a tracker is given. Returns the report's path."""
    trials = study.get_trials(deepcopy=False)
    objectives = [Objective(o.metric, o.direction) for o in cfg.study.objectives]
    names = [o.metric for o in objectives]
    front = front_numbers(cfg, trials)
    plot_trials = [
        PlotTrial(
            number=t.number,
            state=state_of(t),
            values=dict(zip(names, t.values, strict=True)) if t.values else {},
            params=dict(t.params),
            baseline=bool(t.user_attrs.get("baseline")),
            on_front=t.number in front,
        )
        for t in trials
    ]
    history = hypervolume_history(trials, cfg.study.objectives)
    imp = importances(cfg, study)
    out = cfg.study_dir
    plots = write_plots(out / "plots", plot_trials, objectives, history, imp)

    profiles = [p.name for p in cfg.profiles]
    schemes = [f"{p}/scheme" for p in profiles]
    chosen = ["fusion", "image_tokens", "lm", "vision", *schemes]

    def choices(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
        """What a front member is, as plain text for the table: from the architecture in
        its config.yaml (what was built and trained); empty if the folder is gone or
        holds an architecture this version cannot read (the report still gets written)."""
        config = Path(str(t.user_attrs.get("trial_dir", ""))) / "config.yaml"
        if not config.is_file():
            return {}
        try:
            arch = ArchConfig.from_dict(yaml.safe_load(config.read_text())["arch"])
        except (KeyError, TypeError, ValueError):
            return {}
        f, v = arch.fusion, arch.vision
        fusion: list[str] = [f.placement]
        if f.cross:
            layers = ", ".join(map(str, f.xattn_layers))
            pattern = t.params.get("fusion.xattn_layers")
            fusion.append(f"gating {f.gating}")
            fusion.append(f"xattn layers {layers}" + (f" ({pattern})" if pattern else ""))
        if f.early and f.share_ratio != 1.0:
            fusion.append(f"share ratio {f.share_ratio:g}")
        if f.early and f.image_attention != "full":
            fusion.append(
                f.image_attention
                + (f" from layer {f.text_only_from}" if f.image_attention == "text_only" else "")
            )
        return {
            "fusion": ", ".join(fusion),
            "image_tokens": _image_tokens(config.parent, arch),
            "lm": f"{arch.lm.depth} x {arch.lm.width}",
            "vision": f"{v.depth} x {v.width}"
            + (f", {v.pooling} pooling" if v.pooling != "none" else ""),
            **{f"{p}/scheme": arch.quant_for(p) for p in profiles},
        }

    by_number = {t.number: t for t in trials}
    rows = []
    for number in front:
        record = _metrics(by_number[number])
        folder = by_number[number].user_attrs.get("trial_dir")
        rows.append(
            {
                "trial": number,
                **{k: v for k, v in record["metrics"].items()},
                **choices(by_number[number]),
                "arch_id": by_number[number].user_attrs.get("arch_id", ""),
                **{k: v for k, v in record["info"].items() if k.endswith("/latency_source")},
                # relative to report.html and pareto.csv, which sit in the study folder
                "trial_dir": Path(os.path.relpath(folder, out)).as_posix() + "/" if folder else "",
            }
        )
    columns = ["trial", *names, *chosen]
    columns += sorted({k for r in rows for k in r} - set(columns))
    csv_path = out / "pareto.csv"
    tmp = csv_path.with_name(f".pareto.csv.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, csv_path)

    counts = {s: sum(p.state == s for p in plot_trials) for s in ("complete", "infeasible")}
    facts = {
        "study": cfg.study.name,
        "objectives": ", ".join(f"{o.metric} ({o.direction})" for o in objectives),
        "constraints": ", ".join(cfg.study.constraints) or "none",
        "profiles": ", ".join(p.name for p in cfg.profiles),
        "trials": len(trials),
        "complete (feasible)": counts["complete"],
        "infeasible": counts["infeasible"],
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "front size": len(front),
        "final hypervolume": history[-1][1] if history else 0.0,
    }
    short = [
        "trial",
        *names,
        *chosen,
        *[c for c in columns if c.endswith("/latency_source")],
        "trial_dir",
    ]
    titles = {
        "image_tokens": "image tokens",
        "lm": "LM (depth x width)",
        "vision": "vision (depth x width)",
        "trial_dir": "folder",
        **{f"{p}/scheme": f"{p} quantization" for p in profiles},
    }
    report = write_report(
        out / "report.html",
        title=f"vlmnas study {cfg.study.name}",
        facts=facts,
        front_columns=short,
        front_rows=[
            {**r, "trial_dir": Link(r["trial_dir"], r["trial_dir"])} if r["trial_dir"] else r
            for r in rows
        ],
        plots=figure_divs(plot_trials, objectives, history, imp),
        column_titles=titles,
    )

    if tracker is not None and parent_run is not None:
        tracker.log_files(parent_run, [*plots, csv_path, report], {"plots": plots})
        models = {
            n: [Path(v) for k, v in _metrics(by_number[n])["info"].items() if k.endswith("/model")]
            for n in front
        }
        tracker.mark_front(cfg.study.name, parent_run, set(front), models)
    return report


def _image_tokens(trial_dir: Path, arch: ArchConfig) -> str:
    """Visual tokens per image as the trial measured them (AnyRes: they depend on each
    image's size), else the candidate's most."""
    try:
        measured = json.loads((trial_dir / "metrics.json").read_text())["metrics"]["image_tokens"]
        return f"{measured:.0f} (at most {arch.image_tokens_max})"
    except (OSError, KeyError, ValueError, TypeError):
        return f"at most {arch.image_tokens_max}"
