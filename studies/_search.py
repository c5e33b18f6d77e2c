"""`search`: an Optuna multi-objective study whose trials run on Ray Tune.

The driver (this process) owns the stores: Optuna (`_storage.py`: SQLite in the
workdir, or an RDB / journal store shared by several drivers) and MLflow. Trials run in
Ray workers (`_ray.py`, the only module that imports ray) and report plain dicts; each
trial's end takes one path (`_book.py`): decided by `_outcome.py`, told to Optuna,
added to the front (`_front.py`), logged to MLflow.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from dashboards import MlflowTracker
from search_spaces import ArchConfig
from trainers.data import prepare_data

from ._auto import AutoSampler
from ._book import StudyError, TrialBook
from ._config import VlmnasConfig, available_profiles, is_cheap_metric, text_side
from ._front import front_of, state_of
from ._ray import EarlyStop, TrialFn, ray_session, run_trials
from ._review import publish
from ._rungs import ParetoRungs, milestones
from ._storage import StudyStore, counted, finished_count, load_study
from ._timing import Timing
from ._trial import run_trial

__all__ = ["SearchSummary", "StudyError", "search", "summarize"]


def search(cfg: VlmnasConfig, *, trial_fn: TrialFn | None = None) -> SearchSummary:
    """Run (or top up) the study to `study.n_trials` finished trials. `trial_fn` replaces
    the real trial (`run_trial`) for driver benchmarks."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg, dropped = available_profiles(cfg)
    for message in dropped:
        print(f"vlmnas: {message}", flush=True)
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(cfg.data, cfg.workdir, text_side(cfg))
    timing = Timing()
    with StudyStore(cfg, timing) as store:
        with timing.part("mlflow_setup"), _local_lock(cfg, "mlflow"):
            tracker = open_tracker(cfg)  # the first use creates the SQLite tables
            parent_run = tracker.start_study(cfg.study.name, {**cfg.raw, "choices": cfg.choices})
        auto = None
        if cfg.study.sampler == "auto":
            finished = [t for t in store.trials() if t.state.is_finished()]
            auto = AutoSampler(cfg, data.root, tracker, parent_run, timing, finished)
        book = TrialBook(
            cfg=cfg, store=store, tracker=tracker, parent_run=parent_run, timing=timing, auto=auto
        )
        to_run = max(cfg.study.n_trials - book.finished_before, 0)
        rerun = f" ({store.rerun} interrupted, rerun)" if store.rerun else ""
        print(
            f"vlmnas: study {cfg.study.name!r} in {cfg.workdir}: {book.finished_before} trials"
            f" finished, {to_run} to run{rerun} (data: {data.root})",
            flush=True,
        )
        failed = True
        start = time.perf_counter()
        try:
            if to_run:
                with ray_session(cfg.ray.address):
                    run_trials(
                        name=cfg.study.name,
                        storage_path=cfg.workdir / "ray",
                        trial_fn=trial_fn or _RunTrial(cfg, data.root),
                        ask=book.ask,
                        on_end=book.end,
                        should_stop=lambda: book.failures.tripped,
                        cpus_per_trial=cfg.study.cpus_per_trial,
                        max_concurrent=cfg.study.max_concurrent,
                        early_stop=early_stop(cfg),
                        max_trials=cfg.study.n_trials,
                    )
            failed = book.failures.tripped
        finally:
            timing.add("tune_wall", time.perf_counter() - start)
            if auto is not None:
                print(
                    f"vlmnas: auto: {auto.measured} untrained candidates measured,"
                    f" {len(auto.chooser.pool)} left untrained in the pool",
                    flush=True,
                )
            with timing.part("mlflow_setup"):
                tracker.end_study(parent_run, failed=failed)
    book.failures.check()
    study = load_study(cfg)
    summary = summarize(study, cfg, chance=data.prior_baseline())
    _write_front(cfg, summary)
    with timing.part("report"), _local_lock(cfg, "report"):  # one driver writes at a time
        report = publish(cfg, study, tracker, parent_run)
    timing.write(cfg.study_dir / "timing.json")
    print(f"vlmnas: report {report}", flush=True)
    return summary


@dataclass(frozen=True)
class _RunTrial:
    """The real trial, as Ray workers call it (a picklable value, not a closure)."""

    cfg: VlmnasConfig
    data_root: Path

    def __call__(
        self, config: Mapping[str, Any], report: Callable[[dict[str, float]], None]
    ) -> dict[str, Any]:
        arch = ArchConfig.from_dict(dict(config["arch"]))
        outcome = run_trial(
            arch,
            int(config["trial_number"]),
            self.cfg,
            self.data_root,
            # per-epoch validation only where a scheduler reads it (training costs less)
            report=(lambda _epoch, metrics: report(metrics))
            if self.cfg.study.asha.enabled
            else None,
        )
        return {
            **outcome.metrics,
            **outcome.info,
            "val_accuracy_history": outcome.series["val_accuracy"],
        }


def early_stop(cfg: VlmnasConfig) -> EarlyStop | None:
    """The study's rungs (`_rungs.py`), or None when `study.asha` is off: compared on
    val_accuracy so far and, with `rank_by=pareto`, every objective known before
    training (in the study's directions)."""
    asha = cfg.study.asha
    if not asha.enabled:
        return None
    metrics, directions = ["val_accuracy"], ["maximize"]
    if asha.rank_by == "pareto":
        for o in cfg.study.objectives:
            if is_cheap_metric(o.metric):
                metrics.append(o.metric)
                directions.append(o.direction)
    rungs = ParetoRungs(
        rungs=milestones(asha.grace_period, asha.reduction_factor, cfg.trainer.max_epochs),
        reduction_factor=asha.reduction_factor,
        metrics=metrics,
        directions=directions,
    )
    return rungs.stop


def open_tracker(cfg: VlmnasConfig) -> MlflowTracker:
    """MLflow: SQLite in the workdir, or the tracking server `study.tracking_uri`."""
    if cfg.study.tracking_uri:
        return MlflowTracker(cfg.study.tracking_uri)
    return MlflowTracker.for_workdir(cfg.workdir)


@contextmanager
def _local_lock(cfg: VlmnasConfig, name: str) -> Iterator[None]:
    """Drivers on one workdir take turns here: two that start at once would both create
    MLflow's SQLite tables, or both the study's parent run. Local only: drivers on other
    hosts with a tracking server may still race, and then the study has two parent runs."""
    path = cfg.workdir / f".{name}.lock"
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(frozen=True)
class FrontMember:
    number: int
    values: dict[str, float]
    trial_dir: str


@dataclass(frozen=True)
class SearchSummary:
    study_name: str
    finished: int
    complete: int  # complete and feasible
    failed: int
    front: list[FrontMember]
    chance: float  # accuracy of a blind guesser on the validation set (VQAData.prior_baseline)
    infeasible: int = 0  # broke a constraint (most of them untrained)


def summarize(
    study: optuna.Study, cfg: VlmnasConfig, *, chance: float = float("nan")
) -> SearchSummary:
    trials = counted(study.get_trials(deepcopy=False))
    states = [state_of(t) for t in trials]
    front = front_of(trials, cfg.study.objectives)
    by_number = {t.number: t for t in trials}
    names = [o.metric for o in cfg.study.objectives]
    members = [
        FrontMember(
            n,
            dict(zip(names, front.values(n), strict=True)),
            str(by_number[n].user_attrs.get("trial_dir", "")),
        )
        for n in front.members
    ]
    return SearchSummary(
        study_name=cfg.study.name,
        finished=finished_count(trials),
        complete=states.count("complete"),
        failed=states.count("failed"),
        infeasible=states.count("infeasible"),
        front=members,
        chance=chance,
    )


def _write_front(cfg: VlmnasConfig, summary: SearchSummary) -> None:
    cfg.study_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.study_dir / "pareto.json"
    tmp = path.with_name(f".pareto.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps([m.__dict__ for m in summary.front], indent=1))
    os.replace(tmp, path)
