"""`search`: an Optuna multi-objective study driven through Ray Tune's `OptunaSearch`.

The driver (this process) owns the stores: Optuna in `<workdir>/optuna.db` (only the
driver writes), MLflow in `<workdir>/mlflow.db`. Trials run in Ray workers and report
plain dicts; the driver tells Optuna (through the searcher) and logs MLflow (through a
Tune callback), so a trial that dies still ends up recorded.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.trial import TrialState
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

from dashboards import MlflowTracker, TrialRecord
from common import LOCK_DIR_ENV
from search_spaces import ArchConfig
from trainers.data import prepare_data

from ._config import ConfigError, StudySpec, VlmnasConfig, available_profiles
from ._pareto import hypervolume, pareto_front
from ._review import front_numbers, publish, reference_point
from ._trial import run_trial

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


class _Timing:
    """Where the driver's time goes, for the orchestration-overhead benchmark: seconds in
    MLflow calls, in Optuna (sampler and storage), and the trials' own compute (each
    trial reports its `run_trial` wall time). Written to `<study_dir>/timing.json`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds


TIMING = _Timing()  # the driver's; the searcher and callbacks run in the driver process


def storage_url(workdir: Path) -> str:
    return f"sqlite:///{Path(workdir).resolve() / 'optuna.db'}"


def open_storage(cfg: VlmnasConfig) -> optuna.storages.BaseStorage:
    """The study's Optuna storage: SQLite in the workdir unless `study.storage` names an
    RDB URL (PostgreSQL for several drivers) or an Optuna journal file."""
    url = cfg.study.storage
    if not url:
        return optuna.storages.RDBStorage(
            storage_url(cfg.workdir), engine_kwargs={"connect_args": {"timeout": 30}}
        )
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    return optuna.storages.RDBStorage(url)


def open_tracker(cfg: VlmnasConfig) -> MlflowTracker:
    """MLflow: SQLite in the workdir, or the tracking server `study.tracking_uri`."""
    if cfg.study.tracking_uri:
        return MlflowTracker(cfg.study.tracking_uri)
    return MlflowTracker.for_workdir(cfg.workdir)


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    """The study's Optuna sampler, seeded. The GP sampler needs torch (a dependency) and
    starts from `population_size` random trials; its categorical space is the whole
    search space's one-hot encoding."""
    # With constraints, the samplers rank infeasible trials behind feasible ones
    # (constrained domination); random sampling ignores them.
    cons = {"constraints_func": constraint_values} if spec.constraints else {}
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(
            population_size=spec.population_size, seed=spec.seed, **cons
        )
    if spec.sampler == "nsga3":
        return optuna.samplers.NSGAIIISampler(
            population_size=spec.population_size, seed=spec.seed, **cons
        )
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=spec.seed, multivariate=True, **cons)
    if spec.sampler == "gp":
        return optuna.samplers.GPSampler(
            seed=spec.seed, n_startup_trials=spec.population_size, **cons
        )
    return optuna.samplers.RandomSampler(seed=spec.seed)


def constraint_values(trial: optuna.trial.FrozenTrial) -> list[float]:
    """Optuna's constraints_func: the violations the searcher stored (<= 0: satisfied).
    Module-level so that Ray can pickle the searcher."""
    return list(trial.user_attrs.get("constraints", []))


def feasible_complete(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """COMPLETE trials that met every constraint: the only ones a front may hold."""
    return [
        t for t in trials if t.state == TrialState.COMPLETE and not t.user_attrs.get("infeasible")
    ]


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


def search(cfg: VlmnasConfig) -> SearchSummary:
    """Run (or top up) the study to `study.n_trials` finished trials."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg, dropped = available_profiles(cfg)
    for message in dropped:
        print(f"vlmnas: {message}", flush=True)
    workdir = cfg.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(cfg.data, workdir)
    data_root = data.root

    storage = open_storage(cfg)
    study = _open_study(storage, cfg)
    rerun = _requeue_interrupted(study)
    finished = _finished_count(study.get_trials(deepcopy=False))
    remaining = cfg.study.n_trials - finished
    tracker = open_tracker(cfg)
    TIMING.seconds.clear()
    with TIMING.part("mlflow_setup"):
        parent_run = tracker.start_study(cfg.study.name, {**cfg.raw, "choices": cfg.choices})
    print(
        f"vlmnas: study {cfg.study.name!r} in {workdir}: {finished} trials finished,"
        f" {max(remaining, 0)} to run{f' ({rerun} interrupted, rerun)' if rerun else ''} (data: {data_root})",
        flush=True,
    )
    failed = False
    start = time.perf_counter()
    try:
        if remaining > 0:
            _run_tune(cfg, data_root, storage, remaining, tracker, parent_run)
    except BaseException:
        failed = True
        raise
    finally:
        TIMING.add("tune_wall", time.perf_counter() - start)
        with TIMING.part("mlflow_setup"):
            tracker.end_study(parent_run, failed=failed)
    summary = summarize(storage, cfg, chance=data.prior_baseline())
    _write_front(cfg, summary)
    with TIMING.part("report"):
        report = publish(
            cfg, optuna.load_study(study_name=cfg.study.name, storage=storage), tracker, parent_run
        )
    _write_timing(cfg)
    print(f"vlmnas: report {report}", flush=True)
    return summary


def _write_timing(cfg: VlmnasConfig) -> None:
    """`timing.json`: this run's wall time inside Ray Tune and where it went. For a study
    with one trial at a time, `other_s` (wall minus trial compute, MLflow and Optuna) is
    Ray Tune's own share: scheduling, worker start-up, result passing."""
    sec = dict(TIMING.seconds)
    inside = sec.get("tune_wall", 0.0)
    sec["other_s"] = inside - sum(sec.get(k, 0.0) for k in ("trials", "mlflow", "optuna"))
    path = cfg.study_dir / "timing.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({f"{k}_s" if not k.endswith("_s") else k: v for k, v in sec.items()}, indent=1)
    )


def _open_study(storage: optuna.storages.BaseStorage, cfg: VlmnasConfig) -> optuna.Study:
    """Create or load the study; a new one gets the space's baseline as its first trial."""
    study = optuna.create_study(
        study_name=cfg.study.name,
        storage=storage,
        directions=[o.direction for o in cfg.study.objectives],
        load_if_exists=True,
    )
    directions = [
        "maximize" if d == optuna.study.StudyDirection.MAXIMIZE else "minimize"
        for d in study.directions
    ]
    wanted = [o.direction for o in cfg.study.objectives]
    if directions != wanted:
        raise ConfigError(
            f"study {cfg.study.name!r} in {cfg.workdir} was created with directions {directions};"
            f" study.objectives ask for {wanted}: choose another study.name"
        )
    if not study.get_trials(deepcopy=False):
        outside = cfg.space.baseline_outside()
        if outside:
            print(
                f"vlmnas: baseline values outside the overridden choices, sampled instead: {outside}"
            )
        quant = {p.name: p.quant_schemes for p in cfg.profiles}
        study.enqueue_trial(cfg.space.baseline_params(quant), user_attrs={"baseline": True})
    return study


def _requeue_interrupted(study: optuna.Study) -> int:
    """Trials left RUNNING by a driver that died: queue their parameters again (the new
    trial's `rerun_of` names the old one) and close the old one as FAIL, so they are rerun
    and the study still reaches n_trials."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        attrs = {
            "rerun_of": t.number,
            **({"baseline": True} if t.user_attrs.get("baseline") else {}),
        }
        study.enqueue_trial(t.params, user_attrs=attrs)
        study.tell(t.number, state=TrialState.FAIL)
    return len(stale)


def _finished_count(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Finished trials for the n_trials count; an interrupted trial that was queued again
    does not count (its rerun does)."""
    rerun = {t.user_attrs["rerun_of"] for t in trials if "rerun_of" in t.user_attrs}
    return sum(t.state in FINISHED and t.number not in rerun for t in trials)


def _run_tune(
    cfg: VlmnasConfig,
    data_root: Path,
    storage: optuna.storages.BaseStorage,
    num_samples: int,
    tracker: MlflowTracker,
    parent_run: str,
) -> None:
    # Per-epoch reports carry val_accuracy only (for schedulers); the objectives come
    # with the final report. Ray's documented switch lets such reports through.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    if not ray.is_initialized():
        # Workers time latency under a per-host lock; they must find the driver's.
        env = {k: os.environ[k] for k in (LOCK_DIR_ENV,) if k in os.environ}
        common = {
            "log_to_driver": False,
            "logging_level": "ERROR",
            "configure_logging": True,
            "runtime_env": {"env_vars": env} if env else None,
        }
        if cfg.ray.address:
            ray.init(address=cfg.ray.address, **common)
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, **common)
    objectives = cfg.study.objectives
    searcher = _StudySearch(
        space=_DefineByRun(cfg),
        metric=[o.metric for o in objectives],
        mode=["max" if o.direction == "maximize" else "min" for o in objectives],
        sampler=make_sampler(cfg.study),
        storage=storage,
        study_name=cfg.study.name,
        seed=cfg.study.seed,
        cfg=cfg,
    )
    failures = _FailureLimit(cfg.study.max_consecutive_failures)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, cfg=cfg, data_root=data_root),
        {"cpu": cfg.study.cpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=_scheduler(cfg),
            num_samples=num_samples,
            max_concurrent_trials=cfg.study.max_concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=cfg.study.name,
            storage_path=str(cfg.workdir / "ray"),
            callbacks=[_TrackTrials(tracker, cfg, parent_run, failures, storage, num_samples)],
            stop=failures,
            verbose=0,
        ),
    )
    tuner.fit()
    if failures.tripped:
        raise StudyError(
            f"stopped after {failures.consecutive} consecutive failed trials"
            f" (study.max_consecutive_failures={cfg.study.max_consecutive_failures});"
            f" last reason: {failures.last_reason}"
        )


def _scheduler(cfg: VlmnasConfig) -> Any:
    """ASHA on per-epoch val_accuracy (one metric: ASHA takes one), or none."""
    asha = cfg.study.asha
    if not asha.enabled:
        return None
    return ASHAScheduler(
        metric="val_accuracy",
        mode="max",
        time_attr="training_iteration",  # one report per epoch, then the final one
        max_t=cfg.trainer.max_epochs + 1,
        grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor,
    )


class _DefineByRun:
    """The searcher's space: samples an `ArchConfig` on an Optuna trial.

    A module-level class (not a closure) because Ray checkpoints the searcher by pickling.
    Constants ride along in the Ray config: the trial number names the trial's folder and
    MLflow run; the full `ArchConfig` spares workers re-deriving it.
    """

    def __init__(self, cfg: VlmnasConfig) -> None:
        self.space = cfg.space
        self.quant = {p.name: p.quant_schemes for p in cfg.profiles}

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        arch = self.space.sample(trial, self.quant)
        return {"trial_number": trial.number, "arch": arch.to_dict()}


def _trainable(config: dict[str, Any], *, cfg: VlmnasConfig, data_root: Path) -> None:
    """Ray Tune function trainable: one trial. Errors become a reported `error` field."""
    arch = ArchConfig.from_dict(config["arch"])
    start = time.perf_counter()
    try:
        outcome = run_trial(
            arch, config["trial_number"], cfg, data_root, report=lambda _e, m: tune.report(m)
        )
    except Exception as exc:  # recorded as a FAIL trial with its reason; the study goes on
        tune.report(
            {
                "error": f"{type(exc).__name__}: {exc}"[:1000],
                "traceback": traceback.format_exc()[-4000:],
                "trial_s": time.perf_counter() - start,
            }
        )
        return
    # Flat keys only: Ray hands searchers a flattened copy of the result and callbacks
    # the original, and both must read the same names.
    tune.report(
        {
            **outcome.metrics,
            **outcome.info,
            "ray_node": ray.get_runtime_context().get_node_id(),
            "val_accuracy_history": outcome.series["val_accuracy"],
            "trial_s": time.perf_counter() - start,  # the trial's own compute
            "final": True,
        }
    )


@dataclass(frozen=True)
class _Outcome:
    state: str  # complete | pruned | failed | infeasible, as the dashboards name them
    values: list[float | None] | None  # objective values; None where not measured
    reason: str


def _outcome(
    result: dict[str, Any] | None, metrics: list[str], error: str | None = None
) -> _Outcome:
    """How a trial ended, from its last report: the searcher and the MLflow callback
    must agree on it.

    A last report without the `final` marker is a per-epoch one: the scheduler (ASHA)
    stopped the trial early, so it is pruned, never on the front. A trial that broke a
    constraint is infeasible, with whatever it measured (no accuracy if untrained).
    """
    if error is not None or not result:
        return _Outcome("failed", None, error or "trial ended without reporting")
    if "error" in result:
        return _Outcome("failed", None, str(result["error"]))
    if not result.get("final"):
        return _Outcome(
            "pruned", None, f"stopped early by the scheduler after epoch {result.get('epoch')}"
        )
    values = [result.get(m) for m in metrics]
    finite = [float(v) if isinstance(v, int | float) and math.isfinite(v) else None for v in values]
    if result.get("infeasible"):
        return _Outcome("infeasible", finite, str(result["infeasible"]))
    if all(v is not None for v in finite):
        return _Outcome("complete", finite, "")
    return _Outcome(
        "failed",
        None,
        f"objective values missing or not finite: {dict(zip(metrics, values, strict=True))}",
    )


def _constraint_violations(cfg: VlmnasConfig, result: dict[str, Any]) -> list[float]:
    """Per constraint: its violation (<= 0 satisfied); an unmeasured metric (an
    untrained trial's accuracy) counts as satisfied, the trial being infeasible already."""
    out = []
    for constraint in cfg.study.parsed_constraints:
        value = result.get(constraint.metric)
        ok = isinstance(value, int | float) and math.isfinite(value)
        out.append(constraint.violation(float(value)) if ok else 0.0)
    return out


class _StudySearch(OptunaSearch):  # type: ignore[misc]
    """`OptunaSearch` that never leaves an Optuna trial RUNNING.

    Stock `OptunaSearch` passes a NaN or missing multi-objective value to `study.tell`,
    which raises; it logs a warning and the trial stays RUNNING. It also tells trials
    that ASHA stopped early as COMPLETE with partial metrics. Here a trial is told as
    `_outcome` says: COMPLETE with its objectives, PRUNED when the scheduler stopped it,
    FAIL otherwise, with the reason in its user attributes.
    """

    def __init__(self, *args: Any, cfg: VlmnasConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cfg = cfg

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        with TIMING.part("optuna"):
            return super().suggest(trial_id)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        with TIMING.part("optuna"):
            self._tell(trial_id, result, error)

    def _tell(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        if trial_id in self._completed_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        outcome = _outcome(
            result, list(self.metric), "trial raised (see the MLflow run)" if error else None
        )
        for key in ("arch_id", "trial_dir"):
            if key in (result or {}):
                ot_trial.set_user_attr(key, result[key])
        if self._cfg.study.constraints:
            ot_trial.set_user_attr("constraints", _constraint_violations(self._cfg, result or {}))
        if outcome.state in ("complete", "infeasible"):
            assert outcome.values is not None
            if outcome.state == "infeasible":
                ot_trial.set_user_attr("infeasible", outcome.reason)
            self._ot_study.tell(ot_trial, _fill_worst(outcome.values, self.mode))
        else:
            ot_trial.set_user_attr(
                "fail_reason" if outcome.state == "failed" else "pruned_reason", outcome.reason
            )
            state = TrialState.PRUNED if outcome.state == "pruned" else TrialState.FAIL
            self._ot_study.tell(ot_trial, state=state)
        self._completed_trials.add(trial_id)


def _fill_worst(values: list[float | None], modes: list[str]) -> list[float]:
    """An infeasible trial is told to Optuna as COMPLETE (so that constrained samplers
    learn from it) with its measured values; objectives it never measured (accuracy of
    an untrained candidate) get the worst value. The front never holds it."""
    return [
        v if v is not None else (-math.inf if mode == "max" else math.inf)
        for v, mode in zip(values, modes, strict=True)
    ]


class StudyError(RuntimeError):
    """The study cannot go on (for example: too many failed trials in a row)."""


class _FailureLimit(Stopper):  # type: ignore[misc]
    """Ends the whole experiment once `limit` trials in a row have failed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.consecutive = 0
        self.last_reason = ""

    def record(self, failed: bool, reason: str = "") -> None:
        self.consecutive = self.consecutive + 1 if failed else 0
        self.last_reason = reason or self.last_reason

    @property
    def tripped(self) -> bool:
        return self.consecutive >= self.limit

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.tripped


class _TrackTrials(Callback):  # type: ignore[misc]
    """Logs each finished trial to MLflow, counts failures, prints one progress line."""

    def __init__(
        self,
        tracker: MlflowTracker,
        cfg: VlmnasConfig,
        parent_run: str,
        failures: _FailureLimit,
        storage: optuna.storages.BaseStorage,
        to_run: int,
    ) -> None:
        self.failures = failures
        self.tracker = tracker
        self.cfg = cfg
        self.parent_run = parent_run
        self.storage = storage
        self.to_run = to_run
        self.finished_here = 0
        self.epoch_history: dict[str, list[float]] = {}
        self.metrics = [o.metric for o in cfg.study.objectives]
        self.start = time.monotonic()

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if "epoch" in result and not result.get("final"):
            self.epoch_history.setdefault(trial.trial_id, []).append(float(result["val_accuracy"]))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.finished_here += 1
        self._log(trial, trial.last_result, None)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.finished_here += 1
        self._log(
            trial, trial.last_result, str(getattr(trial, "error_msg", None) or "trial raised")
        )

    def _log(self, trial: Any, result: dict[str, Any] | None, error: str | None) -> None:
        config = trial.config
        number = int(config["trial_number"])
        arch = ArchConfig.from_dict(config["arch"])
        outcome = _outcome(result, self.metrics, error)
        result = result or {}
        metrics = {
            k: float(v)
            for k, v in result.items()
            if ("/" in k or k in ("val_accuracy", "params", "train_s"))
            and isinstance(v, int | float)
        }
        tags = {"arch_id": arch.arch_id, "trial_number": str(number)}
        tags.update(
            {
                k: str(v)
                for k, v in result.items()
                if k.endswith(("/latency_source", "/scheme", "/runtime", "/device"))
                or k == "ray_node"
            }
        )
        if outcome.state != "complete":
            tags[f"{outcome.state.replace('failed', 'fail')}_reason"] = outcome.reason
        trial_dir = Path(result.get("trial_dir", self.cfg.study_dir / "trials" / str(number)))
        # A pruned trial's accuracy history comes from its per-epoch reports.
        history = result.get("val_accuracy_history") or self.epoch_history.pop(trial.trial_id, [])
        record = TrialRecord(
            number=number,
            state=outcome.state,
            params={k: v for k, v in config.items() if k not in ("arch", "trial_number")},
            metrics=metrics,
            tags=tags,
            artifacts=(trial_dir / "config.yaml", trial_dir / "metrics.json"),
            series={"val_accuracy": history},
        )
        TIMING.add("trials", float(result.get("trial_s", 0.0)))
        with TIMING.part("mlflow"):
            self.tracker.log_trial(self.cfg.study.name, self.parent_run, record)
        with TIMING.part("optuna"):
            study = optuna.load_study(study_name=self.cfg.study.name, storage=self.storage)
            front = set(front_numbers(self.cfg, study.get_trials(deepcopy=False)))
        with TIMING.part("mlflow"):
            self.tracker.mark_front(self.cfg.study.name, self.parent_run, front)
        self.failures.record(outcome.state == "failed", outcome.reason)
        shown = ", ".join(f"{m}={metrics[m]:.4g}" for m in self.metrics if m in metrics)
        status = {
            "complete": "complete",
            "pruned": f"pruned ({outcome.reason})",
            "infeasible": f"infeasible ({outcome.reason})" + ("" if history else ", not trained"),
        }.get(outcome.state, f"FAILED ({outcome.reason[:200]})")
        print(f"vlmnas: trial {number} {status} {shown}", flush=True)
        with TIMING.part("optuna"):
            progress = self._progress()
        print(f"vlmnas: {progress}", flush=True)

    def _progress(self) -> str:
        """Counts by state, front size, hypervolume, elapsed and estimated remaining time."""
        study = optuna.load_study(study_name=self.cfg.study.name, storage=self.storage)
        trials = study.get_trials(deepcopy=False)
        count = {s: sum(t.state == s for t in trials) for s in TrialState}
        complete = feasible_complete(trials)
        infeasible = sum(bool(t.user_attrs.get("infeasible")) for t in trials)
        directions = [o.direction for o in self.cfg.study.objectives]
        front = pareto_front([t.values for t in complete], directions)
        hv = hypervolume(
            [complete[i].values for i in front], directions, reference_point(self.cfg, complete)
        )
        done_here = max(self.finished_here, 1)
        elapsed = time.monotonic() - self.start
        left = (self.to_run - self.finished_here) * elapsed / done_here
        return (
            f"{_finished_count(trials)}/{self.cfg.study.n_trials} finished"
            f" ({len(complete)} complete, {count[TrialState.PRUNED]} pruned,"
            f" {count[TrialState.FAIL]} failed, {infeasible} infeasible),"
            f" {count[TrialState.RUNNING]} running;"
            f" front {len(front)}, hypervolume {hv:.4g};"
            f" {_clock(elapsed)} elapsed, ~{_clock(left)} left"
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def summarize(
    storage: optuna.storages.BaseStorage, cfg: VlmnasConfig, *, chance: float = float("nan")
) -> SearchSummary:
    study = optuna.load_study(study_name=cfg.study.name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    complete = feasible_complete(trials)
    names = [o.metric for o in cfg.study.objectives]
    directions = [o.direction for o in cfg.study.objectives]
    front_idx = pareto_front([t.values for t in complete], directions)
    front = [
        FrontMember(
            complete[i].number,
            dict(zip(names, complete[i].values, strict=True)),
            str(complete[i].user_attrs.get("trial_dir", "")),
        )
        for i in front_idx
    ]
    return SearchSummary(
        study_name=cfg.study.name,
        finished=_finished_count(trials),
        complete=len(complete),
        failed=sum(t.state == TrialState.FAIL for t in trials),
        infeasible=sum(bool(t.user_attrs.get("infeasible")) for t in trials),
        front=front,
        chance=chance,
    )


def _write_front(cfg: VlmnasConfig, summary: SearchSummary) -> None:
    cfg.study_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.study_dir / "pareto.json"
    tmp = path.with_name(".pareto.json.tmp")
    tmp.write_text(json.dumps([m.__dict__ for m in summary.front], indent=1))
    os.replace(tmp, path)
