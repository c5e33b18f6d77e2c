"""`study.sampler=auto` in `vlmnas search`: measure many, train few.

`CheapFirst` (`_cheap_first.py`) decides; this module gives it the real things:

- *draws*: random candidates of the study's search space, made by the space's own
  `sample` (so conditional parameters appear exactly where they apply);
- *cheap measurements*: step 1 of a trial (`_trial.untrained_step`: build the untrained
  candidate, deploy it per profile, measure or estimate latency, size and NPU coverage),
  run in the driver before anything trains. Latency lands in the latency cache, so the
  trial that later trains the candidate does not time it again. A candidate that breaks a
  constraint known before training is never trained. Each measurement is an MLflow run
  tagged `vlmnas.role=cheap` under the study's parent run (not a trial: it has no trial
  number, Optuna never sees it);
- *trainings*: the chosen candidate is enqueued into Optuna with the reason it was chosen
  (user attribute `chosen_by`) and runs as a normal trial on Ray; its end is told back.

Trials the store hands out first (the baseline, reruns of interrupted trials) run as
they are and are told like the others; a resumed study tells every finished trial, so
the surrogates start from all that is known (the untrained pool is measured anew; its
latencies come from the cache).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from dashboards import MlflowTracker
from trainers.data import ImageCache, VQAData

from ._cheap_first import CheapFirst, Params
from ._config import VlmnasConfig, is_cheap_metric, text_side
from ._guided import arch_of, complete_params, space_choices
from ._outcome import Outcome
from ._timing import Timing
from ._trial import untrained_step, violated


class AutoSampler:
    """The driver's `auto` sampler for one search (see the module docstring)."""

    def __init__(
        self,
        cfg: VlmnasConfig,
        data_root: Path,
        tracker: MlflowTracker,
        parent_run: str,
        timing: Timing,
        finished: Sequence[FrozenTrial] = (),
    ) -> None:
        self.cfg = cfg
        self.tracker = tracker
        self.parent_run = parent_run
        self.timing = timing
        self.quant = {p.name: p.quant_schemes for p in cfg.profiles}
        self.data = VQAData.load(data_root, text_side(cfg))
        self.images = ImageCache()
        objectives = cfg.study.objectives
        self.cheap_objectives = [is_cheap_metric(o.metric) for o in objectives]
        self.chooser = CheapFirst(
            choices=space_choices(cfg.space, self.quant),
            directions=[o.direction for o in objectives],
            cheap=self.cheap_objectives,
            seed=cfg.study.seed,
            cheap_per_training=cfg.study.cheap_per_training,
            startup=cfg.study.population_size,
            complete=self._complete,
        )
        self.measured = 0  # cheap measurements made by this driver
        for trial in sorted(finished, key=lambda t: t.number):
            self.tell_frozen(trial)

    # -- what CheapFirst calls ------------------------------------------------------------

    def propose(self) -> tuple[Params, str] | None:
        """The next candidate to train and why, or None when no untrained feasible
        candidate is left to find."""
        with self.timing.part("auto"):
            params = self.chooser.propose(self._draw, self._cheap)
        return None if params is None else (params, self.chooser.last_reason)

    def tell(self, params: Mapping[str, Any], outcome: Outcome) -> None:
        """A trial's end: trained values (feasible or not) feed the surrogates; a failed,
        pruned or untrained one is only never proposed again."""
        values = outcome.values
        trained = outcome.state == "complete" or (
            outcome.state == "infeasible" and values is not None and None not in values
        )
        if trained and values is not None:
            self.chooser.tell(
                dict(params),
                [float(v) for v in values if v is not None],
                feasible=outcome.state == "complete",
            )
        else:
            self.chooser.forget(dict(params))

    def tell_frozen(self, trial: FrozenTrial) -> None:
        """A trial finished before this driver started (a resumed study)."""
        values = trial.values if trial.state == TrialState.COMPLETE else None
        # an infeasible trial that was never trained has its missing values stored as
        # the worst (+-inf, `_outcome.optuna_verdict`): nothing to learn from
        if values is not None and all(math.isfinite(v) for v in values):
            feasible = "infeasible" not in trial.user_attrs  # as `StudyStore.tell` records it
            self.chooser.tell(dict(trial.params), list(values), feasible=feasible)
        elif trial.state.is_finished():
            self.chooser.forget(dict(trial.params))

    # -- the space and the measurements ---------------------------------------------------

    def _draw(self, rng: random.Random) -> Params:
        return complete_params(self.cfg.space, self.quant, {}, rng)

    def _complete(self, params: Params, rng: random.Random) -> Params:
        """`params` after a mutation, with the conditional parameters its values call
        for (kept where given, drawn where new) and without those that no longer apply."""
        return complete_params(self.cfg.space, self.quant, params, rng)

    def _cheap(self, params: Params) -> list[float] | None:
        """Step 1 of a trial on the untrained candidate; None when it breaks a
        constraint known before training or cannot be measured (export or runtime
        error): it is never trained. Logged to MLflow (`state=infeasible` with the
        reason in both cases)."""
        start = time.perf_counter()
        arch = arch_of(self.cfg.space, self.quant, params)
        try:
            metrics, info = untrained_step(arch, self.cfg, self.data, self.images)
            broken = violated(self.cfg, metrics, cheap_only=True)
        except Exception as exc:  # noqa: BLE001 - as a trial's failure: recorded, study goes on
            metrics, info = {}, {}
            broken = [f"measurement failed: {type(exc).__name__}: {exc}"[:500]]
            print(f"vlmnas: auto: {arch.arch_id}: {broken[0]}", flush=True)
        self.measured += 1
        tags = {
            "arch_id": arch.arch_id,
            "state": "infeasible" if broken else "measured",
            **{k: v for k, v in info.items() if not k.endswith("/model")},
        }
        if broken:
            tags["infeasible_reason"] = "; ".join(broken)
        try:
            with self.timing.part("mlflow"):
                self.tracker.log_cheap(
                    self.cfg.study.name,
                    self.parent_run,
                    params=params,
                    metrics={**metrics, "cheap_s": time.perf_counter() - start},
                    tags=tags,
                )
        except Exception as exc:  # noqa: BLE001 - a view only, as for trials
            print(f"vlmnas: warning: MLflow logging of a cheap record failed: {exc}", flush=True)
        if broken:
            return None
        return [
            metrics[o.metric] if cheap else float("nan")
            for o, cheap in zip(self.cfg.study.objectives, self.cheap_objectives, strict=True)
        ]
