"""The driver's book of a study: the one path every trial's end takes, and what the
driver knows in memory (counts, the front, the failure streak) so that its cost per
trial does not grow with the study.

`TrialBook.end` runs once per trial, in this order:

1. `decide` how it ended (`_outcome.py`, pure);
2. tell Optuna: state, values, constraint values, reason (the store of record);
3. count it for the failure limit (before anything that may raise);
4. add it to the in-memory front; the trials whose membership changed are noted;
5. log its MLflow run and re-tag `pareto` on the changed runs only; a tracking error
   is printed and the study goes on (Optuna has the trial);
6. print the trial's line and the progress line, from memory.

With several drivers on one store, each one's book holds the trials finished before it
started plus its own; the report at the end reads the whole store.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dashboards import MlflowTracker

from ._auto import AutoSampler
from ._config import VlmnasConfig
from ._front import Front, Point, state_of
from ._outcome import Outcome, decide, mlflow_record
from ._storage import StudyStore, counted, finished_count
from ._timing import Timing


class StudyError(RuntimeError):
    """The study cannot go on (for example: too many failed trials in a row)."""


@dataclass
class FailureLimit:
    """Stops the study once `limit` trials in a row have failed."""

    limit: int
    consecutive: int = 0
    last_reason: str = ""

    def record(self, outcome: Outcome) -> None:
        failed = outcome.state == "failed"
        self.consecutive = self.consecutive + 1 if failed else 0
        if failed:
            self.last_reason = outcome.reason

    @property
    def tripped(self) -> bool:
        return self.consecutive >= self.limit

    def check(self) -> None:
        if self.tripped:
            raise StudyError(
                f"stopped after {self.consecutive} consecutive failed trials"
                f" (study.max_consecutive_failures={self.limit}); last reason: {self.last_reason}"
            )


@dataclass(frozen=True)
class _Asked:
    """What the driver keeps of a trial it handed to Ray."""

    params: dict[str, Any]
    arch_id: str
    trial_dir: Path
    baseline: bool


class TrialBook:
    def __init__(
        self,
        *,
        cfg: VlmnasConfig,
        store: StudyStore,
        tracker: MlflowTracker,
        parent_run: str,
        timing: Timing,
        auto: AutoSampler | None = None,
    ) -> None:
        self.cfg = cfg
        self.auto = auto  # study.sampler=auto: chooses each trial before the store hands it out
        self.store = store
        self.tracker = tracker
        self.parent_run = parent_run
        self.timing = timing
        self.failures = FailureLimit(cfg.study.max_consecutive_failures)
        self.front = Front(cfg.study.objectives)
        trials = counted(store.trials())  # the one full read, at the start
        self.counts = Counter(state_of(t) for t in trials if t.state.is_finished())
        self.finished_before = finished_count(trials)
        for t in sorted(trials, key=lambda t: t.number):
            if t.state.is_finished():
                self.front.add(Point.of(t))
        with timing.part("mlflow"):
            self.runs = tracker.trial_runs(cfg.study.name, parent_run)
        self.finished_here = 0
        self.start = time.monotonic()
        self._asked: dict[int, _Asked] = {}

    def ask(self) -> dict[str, Any] | None:
        """The next trial's config for Ray, or None when the study has enough (or, with
        `auto`, when no untrained feasible candidate is left)."""
        if self.auto is not None and not self.store.waiting():
            if self.store.full():
                return None
            chosen = self.auto.propose()
            if chosen is None:
                print("vlmnas: auto: every candidate found is trained or infeasible", flush=True)
                return None
            params, reason = chosen
            self.store.enqueue(params, {"chosen_by": reason})
        trial = self.store.ask()
        if trial is None:
            return None
        quant = {p.name: p.quant_schemes for p in self.cfg.profiles}
        with self.timing.part("optuna"):
            arch = self.cfg.space.sample(trial, quant)
        self._asked[trial.number] = _Asked(
            params=dict(trial.params),
            arch_id=arch.arch_id,
            trial_dir=self.cfg.study_dir / "trials" / str(trial.number),
            baseline=bool(trial.user_attrs.get("baseline")),
        )
        return {"trial_number": trial.number, "arch": arch.to_dict()}

    def end(self, number: int, result: dict[str, Any] | None, error: str | None) -> None:
        """Record trial `number`'s end everywhere (see the module docstring)."""
        asked = self._asked.pop(number, None)
        if asked is None:  # Ray reported this trial's end before: it is recorded
            return
        study = self.cfg.study
        outcome = decide(result, error, study.objectives, study.parsed_constraints)
        trial_dir = Path(str((result or {}).get("trial_dir", asked.trial_dir)))
        self.store.tell(number, outcome, {"arch_id": asked.arch_id, "trial_dir": str(trial_dir)})
        if self.auto is not None:
            self.auto.tell(asked.params, outcome)
        self.failures.record(outcome)
        self.finished_here += 1
        self.counts[outcome.state] += 1
        values = None
        if outcome.state in ("complete", "infeasible") and outcome.values is not None:
            values = tuple(float(v) if v is not None else float("nan") for v in outcome.values)
        changed = self.front.add(Point(number, outcome.state, values, asked.baseline))
        changed.setdefault(number, False)
        history = list((result or {}).get("val_accuracy_history") or [])
        record = mlflow_record(
            number,
            outcome,
            result,
            params=asked.params,
            arch_id=asked.arch_id,
            trial_dir=trial_dir,
            history=history,
        )
        try:
            with self.timing.part("mlflow"):
                self.runs[number] = self.tracker.log_trial(study.name, self.parent_run, record)
                self.tracker.tag_front(
                    {self.runs[n]: on for n, on in changed.items() if n in self.runs}
                )
        except Exception as exc:  # noqa: BLE001 - Optuna has the trial; tracking is a view
            print(f"vlmnas: warning: MLflow logging of trial {number} failed: {exc}", flush=True)
        self.timing.add("trials", float((result or {}).get("trial_s", 0.0)))
        print(f"vlmnas: trial {number} {self._status(outcome, history)}", flush=True)
        print(f"vlmnas: {self.progress()}", flush=True)

    def _status(self, outcome: Outcome, history: list[float]) -> str:
        shown = ""
        if outcome.values is not None:
            shown = " " + ", ".join(
                f"{o.metric}={v:.4g}"
                for o, v in zip(self.cfg.study.objectives, outcome.values, strict=True)
                if v is not None
            )
        return {
            "complete": "complete",
            "pruned": f"pruned ({outcome.reason})",
            "infeasible": f"infeasible ({outcome.reason})" + ("" if history else ", not trained"),
        }.get(outcome.state, f"FAILED ({outcome.reason[:200]})") + shown

    def progress(self) -> str:
        """Counts by state, front size, hypervolume, elapsed and estimated remaining
        time: all from memory."""
        c = self.counts
        done = self.finished_before + self.finished_here
        elapsed = time.monotonic() - self.start
        left_trials = max(self.cfg.study.n_trials - done, 0)
        left = left_trials * elapsed / max(self.finished_here, 1)
        return (
            f"{done}/{self.cfg.study.n_trials} finished"
            f" ({c['complete']} complete, {c['pruned']} pruned,"
            f" {c['failed']} failed, {c['infeasible']} infeasible),"
            f" {self.store.running} running;"
            f" front {len(self.front.members)}, hypervolume {self.front.hypervolume():.4g};"
            f" {_clock(elapsed)} elapsed, ~{_clock(left)} left"
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"
