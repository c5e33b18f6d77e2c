"""The Ray Tune adapter: the only module that imports ray.

Ray runs trials in workers; everything else stays in the driver and behind three
callables, so this module knows nothing of Optuna, MLflow or the front:

- `ask() -> dict | None`: the next trial's config (`{"trial_number", "arch"}`), or None
  when the study has enough trials;
- `on_end(number, result, error)`: called once per trial with its last report (or
  None) and Ray's error text when the worker itself died;
- `should_stop() -> bool`: end the whole run (the failure limit);
- `early_stop(trial_id, report) -> bool`: stop one trial after a per-epoch report (the
  rungs of `_rungs.py`), or None to train every trial its full budget.

The searcher is a plain `ray.tune.search.Searcher` (public API): it does not subclass
`OptunaSearch`, whose private state an earlier version reached into. A trial's own
exceptions are caught in the worker (`_trainable`) and reported as an `error` field, so
the reason reaches the driver as text; Ray's error channel is left for workers that
die. Per-epoch reports carry `val_accuracy` for the scheduler; the final report carries
every metric and `final: True`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.stopper import Stopper

from common import LOCK_DIR_ENV

# A trial's work in a worker: (config from `ask`, report per epoch) -> final metrics.
TrialFn = Callable[[Mapping[str, Any], Callable[[dict[str, float]], None]], dict[str, Any]]
Ask = Callable[[], dict[str, Any] | None]
OnEnd = Callable[[int, dict[str, Any] | None, str | None], None]
EarlyStop = Callable[[str, Mapping[str, Any]], bool]


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Ray for one `search`: connect to `address` (a cluster) or start a private local
    instance (never one found on the host), and shut it down afterwards when this call
    started it, so a second `search` in the same process starts fresh and honours its
    own `ray.address`."""
    if ray.is_initialized():
        yield
        return
    # Workers time latency under a per-host lock; they must find the driver's.
    env = {k: os.environ[k] for k in (LOCK_DIR_ENV,) if k in os.environ}
    runtime_env: dict[str, Any] | None = {"env_vars": env} if env else None
    if address:
        ray.init(
            address=address,
            log_to_driver=False,
            logging_level=logging.ERROR,
            runtime_env=runtime_env,
        )
    else:
        # "local", not None: with None, Ray joins a cluster it finds on the host (one
        # started by `ray start`, or RAY_ADDRESS), and a `ray stop` there kills the study.
        ray.init(
            address="local",
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
            runtime_env=runtime_env,
        )
    try:
        yield
    finally:
        ray.shutdown()


def run_trials(
    *,
    name: str,
    storage_path: Path,
    trial_fn: TrialFn,
    ask: Ask,
    on_end: OnEnd,
    should_stop: Callable[[], bool],
    cpus_per_trial: int,
    max_concurrent: int,
    early_stop: EarlyStop | None,
    max_trials: int,
) -> None:
    """Run at most `max_trials`, until `ask` has no more (or `should_stop`)."""
    # Per-epoch reports carry fewer metrics than the final one; Ray's documented switch
    # lets them through.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    scheduler = _EarlyStopping(early_stop) if early_stop is not None else None
    stopper = _Stop(should_stop)
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(_trainable, trial_fn=trial_fn), {"cpu": cpus_per_trial}
        ),
        tune_config=tune.TuneConfig(
            search_alg=_Searcher(ask),
            scheduler=scheduler,
            num_samples=max_trials,  # an upper bound: the searcher says when there are enough
            max_concurrent_trials=max_concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage_path),
            callbacks=[_Ends(on_end)],
            stop=stopper,
            verbose=0,
        ),
    )
    tuner.fit()


def _trainable(config: dict[str, Any], *, trial_fn: TrialFn) -> None:
    """One trial in a worker. Its exceptions become a reported `error` (with the
    traceback), so the study records the reason and goes on."""
    start = time.perf_counter()
    try:
        metrics = trial_fn(config, tune.report)
    except Exception as exc:  # recorded as a FAIL trial with its reason
        tune.report(
            {
                "error": f"{type(exc).__name__}: {exc}"[:1000],
                "traceback": traceback.format_exc()[-4000:],
                "trial_s": time.perf_counter() - start,
            }
        )
        return
    # Flat keys only: Ray hands searchers a flattened copy of a result and callbacks the
    # original, and both must read the same names.
    tune.report(
        {
            **metrics,
            "ray_node": ray.get_runtime_context().get_node_id(),
            "trial_s": time.perf_counter() - start,  # the trial's own compute
            "final": True,
        }
    )


class _DriverSide:
    """Tune pickles its searcher, callbacks and stopper into the experiment folder (for
    a restore this project does not use: a study resumes from its Optuna store). Their
    driver-side callables hold locks and connections, so they are left out."""

    def __getstate__(self) -> dict[str, Any]:
        return {}


class _Searcher(_DriverSide, Searcher):
    """Hands Tune the configs `ask` makes; Optuna is told elsewhere (`on_end`)."""

    def __init__(self, ask: Ask) -> None:
        super().__init__(metric=None, mode=None)
        self._ask = ask

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[Any, Any], **spec: Any
    ) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[Any, Any] | None:
        config = self._ask()
        # Ray's documented "no more trials" value is this string
        return Searcher.FINISHED if config is None else config  # type: ignore[return-value]

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """Nothing: a trial's end is recorded once, by `_Ends`."""

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the study's state lives in its Optuna store."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: a resumed study reads its Optuna store."""


class _Ends(_DriverSide, Callback):
    """The driver side of a trial's end: one `on_end` call per trial, with per-epoch
    accuracy kept for trials the scheduler stopped (their last report is an epoch's)."""

    def __init__(self, on_end: OnEnd) -> None:
        self._on_end = on_end
        self._epochs: dict[str, list[float]] = {}

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if "epoch" in result and not result.get("final"):
            self._epochs.setdefault(trial.trial_id, []).append(float(result["val_accuracy"]))

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._end(trial, None)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._end(trial, str(getattr(trial, "error_msg", None) or "the trial's worker died"))

    def _end(self, trial: Any, error: str | None) -> None:
        result = dict(trial.last_result or {}) or None
        history = self._epochs.pop(trial.trial_id, [])
        if result is not None and "val_accuracy_history" not in result:
            result["val_accuracy_history"] = history
        self._on_end(int(trial.config["trial_number"]), result, error)


class _EarlyStopping(FIFOScheduler):
    """Ray's scheduler interface around `early_stop`: asked on every per-epoch report
    (not the final one); trials run in the order the searcher hands them out."""

    def __init__(self, early_stop: EarlyStop) -> None:
        super().__init__()
        self._early_stop = early_stop

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if "epoch" in result and not result.get("final") and "error" not in result:
            if self._early_stop(str(trial.trial_id), result):
                return TrialScheduler.STOP
        return TrialScheduler.CONTINUE


class _Stop(_DriverSide, Stopper):
    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self._should_stop = should_stop

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self._should_stop()
