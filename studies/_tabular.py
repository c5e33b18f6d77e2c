"""Tabular replay: a study's sampler run against a table of already measured
configurations instead of training anything.

A table (CSV, one row per configuration, written by `bench/tabular_table.py`) holds what
`run_trial` reported for every configuration of a search space. `replay` runs the study's
own sampler (`make_sampler`, seeded), the space's own `sample` and the same baseline-first
start as `search`, and answers each proposal from the table, so a sampler can be judged
on hundreds of studies in the time one real study takes. What it leaves out: Ray, ASHA
(every trial is full budget) and failures (every configuration has a row).

A configuration proposed twice counts as two trials, as in a real study (where the
second costs little: its weights and latency are cached).
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna

from ._cheap_first import CheapFirst, Params
from ._config import ConfigError, VlmnasConfig, is_cheap_metric
from ._front import reference_point
from ._guided import arch_of, complete_params, space_choices
from ._pareto import hypervolume, pareto_front
from ._samplers import make_sampler


@dataclass(frozen=True)
class Table:
    """Measured metrics per configuration, keyed by `arch_id` (which includes the
    quantization scheme)."""

    path: Path
    rows: dict[str, dict[str, float]]

    @classmethod
    def load(cls, path: Path) -> Table:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"tabular table {str(path)!r} not found")
        rows: dict[str, dict[str, float]] = {}
        with path.open(newline="") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                if "arch_id" not in row:
                    raise ConfigError(f"{path}: no arch_id column")
                metrics = {}
                for key, value in row.items():
                    if "/" in key or key in ("params", "val_accuracy", "train_s"):
                        try:
                            metrics[key] = float(value)
                        except (TypeError, ValueError):
                            raise ConfigError(
                                f"{path}:{line}: {key}={value!r} is not a number"
                            ) from None
                rows[row["arch_id"]] = metrics
        if not rows:
            raise ConfigError(f"{path}: no rows")
        return cls(path, rows)

    def check(self, cfg: VlmnasConfig) -> None:
        """The table answers every objective and constraint of `cfg` for every
        configuration of its space; raises `ConfigError` naming what is missing."""
        metrics = {o.metric for o in cfg.study.objectives}
        metrics |= {c.metric for c in cfg.study.parsed_constraints}
        columns = set(next(iter(self.rows.values())))
        if not metrics <= columns:
            raise ConfigError(
                f"{self.path}: no column for {sorted(metrics - columns)}; it has {sorted(columns)}"
            )
        quant = {p.name: p.quant_schemes for p in cfg.profiles}
        missing = [
            p for p in cfg.space.grid(quant) if cfg.space.to_arch(p).arch_id not in self.rows
        ]
        if missing:
            raise ConfigError(
                f"{self.path}: {len(missing)} configurations of search_space"
                f" {cfg.space.name!r} have no row, e.g. {missing[0]}; rebuild it with"
                " bench/tabular_table.py"
            )


@dataclass(frozen=True)
class ReplayTrial:
    number: int
    arch_id: str
    values: tuple[float, ...]  # the study's objectives, in order
    feasible: bool


def replay(cfg: VlmnasConfig, table: Table, n_trials: int) -> list[ReplayTrial]:
    """Run `cfg.study`'s sampler for `n_trials` against `table` (call `table.check(cfg)`
    first). Deterministic for a given `cfg.study.seed`."""
    if cfg.study.sampler == "auto":
        return _replay_auto(cfg, table, n_trials)
    objectives = cfg.study.objectives
    constraints = cfg.study.parsed_constraints
    quant = {p.name: p.quant_schemes for p in cfg.profiles}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        directions=[o.direction for o in objectives], sampler=make_sampler(cfg.study)
    )
    study.enqueue_trial(cfg.space.baseline_params(quant), user_attrs={"baseline": True})
    out = []
    for _ in range(n_trials):
        trial = study.ask()
        arch = cfg.space.sample(trial, quant)
        row = table.rows[arch.arch_id]
        violations = [c.violation(row[c.metric]) for c in constraints]
        for constraint, violation in zip(constraints, violations, strict=True):
            trial.set_constraint(str(constraint), violation)  # as `search` tells them
        values = tuple(row[o.metric] for o in objectives)
        study.tell(trial, list(values))
        out.append(ReplayTrial(trial.number, arch.arch_id, values, all(v <= 0 for v in violations)))
    return out


def _replay_auto(cfg: VlmnasConfig, table: Table, n_trials: int) -> list[ReplayTrial]:
    """`auto` as `vlmnas search` runs it (`_auto.py`: the same draws, completion of
    conditional parameters and `CheapFirst`), its cheap measurements read from the
    table's cheap columns. Stops early when no untrained feasible configuration is left."""
    objectives = cfg.study.objectives
    constraints = cfg.study.parsed_constraints
    quant = {p.name: p.quant_schemes for p in cfg.profiles}
    space = cfg.space
    cheap = [is_cheap_metric(o.metric) for o in objectives]

    def complete(params: Params, rng: random.Random) -> Params:
        return complete_params(space, quant, params, rng)

    def draw(rng: random.Random) -> Params:
        return complete({}, rng)

    def row_of(params: Params) -> dict[str, float]:
        return table.rows[arch_of(space, quant, params).arch_id]

    def cheap_fn(params: Params) -> list[float] | None:
        row = row_of(params)
        if any(c.cheap and c.violation(row[c.metric]) > 0 for c in constraints):
            return None  # never trained, as in a search
        return [row[o.metric] if k else math.nan for o, k in zip(objectives, cheap, strict=True)]

    chooser = CheapFirst(
        choices=space_choices(space, quant),
        directions=[o.direction for o in objectives],
        cheap=cheap,
        seed=cfg.study.seed,
        cheap_per_training=cfg.study.cheap_per_training,
        startup=cfg.study.population_size,
        complete=complete,
        queued=[complete(space.baseline_params(quant), random.Random(cfg.study.seed))],
    )
    out = []
    for number in range(n_trials):
        params = chooser.propose(draw, cheap_fn)
        if params is None:
            break
        row = row_of(params)
        values = tuple(row[o.metric] for o in objectives)
        feasible = all(c.violation(row[c.metric]) <= 0 for c in constraints)
        chooser.tell(params, values, feasible=feasible)
        arch_id = arch_of(space, quant, params).arch_id
        out.append(ReplayTrial(number, arch_id, values, feasible))
    return out


def reference(cfg: VlmnasConfig, table: Table) -> list[float]:
    """Hypervolume reference point, as `search` sets it (`_front.reference_point`): the
    objective's `reference`, else 0 when maximizing and twice the baseline's value when
    minimizing."""
    quant = {p.name: p.quant_schemes for p in cfg.profiles}
    baseline = table.rows[cfg.space.to_arch(cfg.space.baseline_params(quant)).arch_id]
    objectives = cfg.study.objectives
    return reference_point(objectives, [baseline[o.metric] for o in objectives])


def nadir(cfg: VlmnasConfig, table: Table) -> list[float]:
    """The table's worst value of each objective: a reference point that measures only
    the part of the objective space the table's configurations actually span."""
    ref = []
    for o in cfg.study.objectives:
        values = [row[o.metric] for row in table.rows.values()]
        ref.append(min(values) if o.direction == "maximize" else max(values))
    return ref


def true_hypervolume(cfg: VlmnasConfig, table: Table, ref: Sequence[float]) -> float:
    """Hypervolume of the front of the whole table (feasible rows only)."""
    points = [
        [row[o.metric] for o in cfg.study.objectives]
        for row in table.rows.values()
        if all(c.violation(row[c.metric]) <= 0 for c in cfg.study.parsed_constraints)
    ]
    directions = [o.direction for o in cfg.study.objectives]
    return hypervolume([points[i] for i in pareto_front(points, directions)], directions, ref)


def hypervolume_curve(
    cfg: VlmnasConfig, trials: Sequence[ReplayTrial], ref: Sequence[float]
) -> list[float]:
    """Hypervolume of the feasible front after each trial."""
    directions = [o.direction for o in cfg.study.objectives]
    seen: list[list[float]] = []
    curve = []
    for t in trials:
        if t.feasible:
            seen.append(list(t.values))
        front = pareto_front(seen, directions)
        curve.append(hypervolume([seen[i] for i in front], directions, ref))
    return curve


def trials_to_reach(curve: Sequence[float], target: float) -> float:
    """1-based number of trials after which `curve` first reaches `target`; inf if never."""
    return next((k for k, hv in enumerate(curve, 1) if hv >= target), math.inf)
