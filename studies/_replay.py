"""`vlmnas replay`: the study's samplers replayed against any table of measured
configurations, counting trainings.

A table is a CSV with one row per configuration: the parameter columns name it
(`table.params`), the objective columns say how it scored (`table.objectives`,
`column:max` or `column:min`). Columns in `table.cheap` are known before training
(latency, size: a real study measures them on the untrained candidate); reading any other
objective of a row is one training. A parameter's values are categories unless all of
them are numbers (then numbers, still offered as the table's own values), and the table
must hold every combination of its parameters' values: a sampler may propose any of
them. Constraints (`table.constraints`, `column <= v` or `column >= v`, the syntax of
`study.constraints`) keep the rows that break one off the front; a row that breaks one on
a `table.cheap` column is never trained, as a search stops such a candidate before
training (Optuna's samplers are told the violations, as a search tells them). Everything
is checked when the table is loaded, before any sampler runs; each problem is one line
naming the column, row or value. `studies._tabular` feeds this project's own tables
through the same code.

Each sampler is built by `studies._samplers.sampler_named`, the code `vlmnas search`
uses, seeded per replay seed; the table's baseline row (`replay.baseline_row`) is the
first trial, as the search's baseline is. A configuration proposed again costs no new
training (a real study has its weights cached): it is told the same values and does not
count; a replay stops after `replay.trainings` distinct trainings (or 20 proposals per
training, if a sampler keeps proposing what it has seen).

The score is the hypervolume share: the hypervolume of the front of the trained rows over
that of the whole table's front, both bounded by the reference point
(`replay.reference`: `median`, the table's median of each objective, as public
hardware-aware NAS comparisons set it; `nadir`, its worst; or explicit values).
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from ._cheap_first import CheapFirst
from ._config import ConfigError, Constraint
from ._pareto import hypervolume, pareto_front
from ._samplers import SAMPLERS, sampler_named

CHECKPOINTS = (10, 25, 50, 100)  # trainings after which the share is reported
TARGETS = (0.8, 0.95)  # shares whose trainings-to-reach are reported
_ASKS_PER_TRAINING = 20  # a sampler that keeps proposing seen rows stops here
AUTO = "auto"  # the cheap-first sampler (studies._cheap_first), not an Optuna sampler
REPLAY_SAMPLERS = (*SAMPLERS, AUTO)


@dataclass(frozen=True)
class ReplayTable:
    """A loaded, checked table: `values[p]` the sorted choices of parameter p, `rows`
    each row's parameters, `scores` each row's objectives (in `objectives` order),
    `limits` each row's values of the constrained columns (in `constraints` order) and
    `feasible` whether it meets every constraint."""

    path: Path
    params: tuple[str, ...]
    objectives: tuple[tuple[str, str], ...]  # (column, "maximize" | "minimize")
    cheap: tuple[str, ...]
    values: dict[str, list[Any]]
    rows: list[tuple[Any, ...]]
    scores: list[tuple[float, ...]]
    index: dict[tuple[Any, ...], int] = field(repr=False)
    constraints: tuple[Constraint, ...] = ()
    limits: list[tuple[float, ...]] = field(default_factory=list, repr=False)
    feasible: list[bool] = field(default_factory=list, repr=False)

    def violations(self, row: int) -> list[float]:
        """Each constraint's violation on `row` (Optuna's convention: <= 0 when met)."""
        return [c.violation(v) for c, v in zip(self.constraints, self.limits[row], strict=True)]

    def untrainable(self, row: int) -> bool:
        """`row` breaks a constraint on a column known before training (`cheap`): a
        search stops such a candidate before training it."""
        return any(
            c.metric in self.cheap and v > 0
            for c, v in zip(self.constraints, self.violations(row), strict=True)
        )

    @property
    def directions(self) -> list[str]:
        return [d for _, d in self.objectives]

    @classmethod
    def load(
        cls,
        path: Path,
        params: Sequence[str],
        objectives: Sequence[str],
        cheap: Sequence[str],
        constraints: Sequence[str] = (),
    ) -> ReplayTable:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"table={str(path)!r}: no such file")
        if not params:
            raise ConfigError("table.params is empty; name the columns that make a configuration")
        parsed = [_objective(o) for o in objectives]
        if len(parsed) < 2:
            raise ConfigError(
                f"table.objectives={list(objectives)}: give at least 2 (column:max or column:min)"
            )
        names = [c for c, _ in parsed]
        for dup in {c for c in names if names.count(c) > 1} | {p for p in params if p in names}:
            raise ConfigError(f"table column {dup!r} is named twice in table.params/objectives")
        limits = tuple(Constraint.parse(c, where="table.constraints") for c in constraints)
        limited = [c.metric for c in limits]
        for c in cheap:
            if c not in names and c not in limited:
                raise ConfigError(
                    f"table.cheap: {c!r} is not one of table.objectives {names}"
                    f" or a table.constraints column {limited}"
                )
        if set(names) <= set(cheap):
            raise ConfigError("table.cheap covers every objective: nothing would need training")
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in dict.fromkeys((*params, *names, *limited)) if c not in columns]
            if missing:
                raise ConfigError(f"{path}: no column {missing}; it has {columns}")
            raw = list(reader)
        if not raw:
            raise ConfigError(f"{path}: no data rows")
        scores = []
        for line, row in enumerate(raw, start=2):
            try:
                scores.append(tuple(float(row[c]) for c in names))
            except (TypeError, ValueError):
                bad = next(c for c in names if not _is_number(row[c]))
                raise ConfigError(f"{path}:{line}: {bad}={row[bad]!r} is not a number") from None
            if not all(math.isfinite(v) for v in scores[-1]):
                raise ConfigError(f"{path}:{line}: an objective is not finite: {scores[-1]}")
        bounded: list[tuple[float, ...]] = []
        for line, row in enumerate(raw, start=2):
            odd = next((c for c in limited if not _is_number(row[c])), None)
            if odd is not None:
                raise ConfigError(f"{path}:{line}: {odd}={row[odd]!r} is not a number")
            bounded.append(tuple(float(row[c]) for c in limited))
        feasible = [
            all(c.violation(v) <= 0 for c, v in zip(limits, values, strict=True))
            for values in bounded
        ]
        if not any(feasible):
            raise ConfigError(f"{path}: no row meets table.constraints {[str(c) for c in limits]}")
        values = {p: _choices([row[p] for row in raw]) for p in params}
        rows = [tuple(_value(row[p], values[p]) for p in params) for row in raw]
        index: dict[tuple[Any, ...], int] = {}
        for i, key in enumerate(rows):
            if key in index:
                raise ConfigError(
                    f"{path}: rows {index[key] + 2} and {i + 2} are the same configuration"
                    f" {dict(zip(params, key, strict=True))}"
                )
            index[key] = i
        grid = math.prod(len(v) for v in values.values())
        if grid != len(rows):
            raise ConfigError(
                f"{path}: {len(rows)} rows but its parameters' values make {grid}"
                " configurations; a sampler may propose any of them: the table must hold"
                " every combination"
            )
        return cls(
            path,
            tuple(params),
            tuple(parsed),
            tuple(cheap),
            values,
            rows,
            scores,
            index,
            constraints=limits,
            limits=bounded,
            feasible=feasible,
        )

    def reference(self, spec: str | Sequence[float]) -> list[float]:
        """The reference point: `median` or `nadir` of each objective, or given values."""
        if isinstance(spec, str):
            if spec not in ("median", "nadir"):
                raise ConfigError(
                    f"replay.reference={spec!r}; allowed median, nadir or [v1, v2, ...]"
                )
            columns = list(zip(*self.scores, strict=True))
            if spec == "median":
                return [float(statistics.median(c)) for c in columns]
            return [
                min(c) if d == "maximize" else max(c)
                for c, d in zip(columns, self.directions, strict=True)
            ]
        ref = [float(v) for v in spec]
        if len(ref) != len(self.objectives):
            raise ConfigError(
                f"replay.reference={list(spec)}: {len(ref)} values for"
                f" {len(self.objectives)} objectives"
            )
        return ref

    def true_hypervolume(self, ref: Sequence[float]) -> float:
        """Hypervolume of the front of the table's feasible rows."""
        return self.hypervolume(range(len(self.rows)), ref)

    def hypervolume(self, rows: Sequence[int], ref: Sequence[float]) -> float:
        """Hypervolume of the front of the feasible ones among `rows`."""
        points = [self.scores[i] for i in rows if self.feasible[i]]
        front = pareto_front(points, self.directions)
        return hypervolume([points[i] for i in front], self.directions, ref)


@dataclass(frozen=True)
class SeedRun:
    trained_rows: list[int]  # row indices (0-based over data rows) in training order
    cheap_rows: int  # rows whose cheap columns were read
    shares: list[float]  # hypervolume share after each training


def replay_one(
    table: ReplayTable,
    sampler: str,
    seed: int,
    trainings: int,
    ref: Sequence[float],
    baseline_row: int | None = None,
    population_size: int = 4,
    cheap_per_training: int = 20,
) -> SeedRun:
    """One sampler, one seed: propose, read, tell, until `trainings` distinct rows."""
    if sampler == AUTO:
        return _replay_auto(
            table, seed, trainings, ref, baseline_row, population_size, cheap_per_training
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        directions=[optuna.study.StudyDirection[d.upper()] for d in table.directions],
        sampler=sampler_named(sampler, seed=seed, population_size=population_size),
    )
    if baseline_row is not None:
        study.enqueue_trial(dict(zip(table.params, table.rows[baseline_row], strict=True)))
    distributions: dict[str, optuna.distributions.BaseDistribution] = {
        p: optuna.distributions.CategoricalDistribution(v) for p, v in table.values.items()
    }
    total = table.true_hypervolume(ref)
    trained: list[int] = []
    seen: set[int] = set()
    cheap: set[int] = set()
    shares: list[float] = []
    for _ in range(trainings * _ASKS_PER_TRAINING):
        if len(trained) >= trainings:
            break
        trial = study.ask(distributions)
        key = tuple(trial.params[p] for p in table.params)
        row = table.index.get(key)
        if row is None:  # cannot happen for a full grid: say so if it does
            raise ConfigError(f"sampler {sampler!r} proposed {trial.params}, not in {table.path}")
        cheap.add(row)
        for constraint, violation in zip(table.constraints, table.violations(row), strict=True):
            trial.set_constraint(str(constraint), violation)  # as `search` tells them
        study.tell(trial, list(table.scores[row]))
        if row in seen or table.untrainable(row):  # cached, or stopped before training
            continue
        seen.add(row)
        trained.append(row)
        shares.append(table.hypervolume(trained, ref) / total if total else 0.0)
    return SeedRun(trained, len(cheap), shares)


def _replay_auto(
    table: ReplayTable,
    seed: int,
    trainings: int,
    ref: Sequence[float],
    baseline_row: int | None,
    startup: int,
    cheap_per_training: int,
) -> SeedRun:
    """`auto` (`studies._cheap_first.CheapFirst`) over the table: a candidate's cheap
    columns are read when it is measured (counted in `cheap_rows`), its other objectives
    when it is trained."""
    cheap_at = [i for i, (c, _) in enumerate(table.objectives) if c in table.cheap]
    chooser = CheapFirst(
        table.values,
        table.directions,
        [i in cheap_at for i in range(len(table.objectives))],
        seed=seed,
        cheap_per_training=cheap_per_training,
        startup=startup,
        reference=ref,
        queued=[] if baseline_row is None else [_row_params(table, baseline_row)],
    )

    def draw(rng: Any) -> dict[str, Any]:
        return _row_params(table, rng.randrange(len(table.rows)))

    def cheap_fn(params: dict[str, Any]) -> list[float] | None:
        row = table.index[tuple(params[p] for p in table.params)]
        if table.untrainable(row):
            return None  # never trained, as in a search
        scores = table.scores[row]
        return [scores[i] if i in cheap_at else math.nan for i in range(len(scores))]

    total = table.true_hypervolume(ref)
    trained: list[int] = []
    shares: list[float] = []
    while len(trained) < trainings:
        params = chooser.propose(draw, cheap_fn)
        if params is None:  # every row trained or measured
            break
        row = table.index[tuple(params[p] for p in table.params)]
        chooser.tell(params, table.scores[row], feasible=table.feasible[row])
        trained.append(row)
        shares.append(table.hypervolume(trained, ref) / total if total else 0.0)
    return SeedRun(trained, len(chooser.measured), shares)


def _row_params(table: ReplayTable, row: int) -> dict[str, Any]:
    return dict(zip(table.params, table.rows[row], strict=True))


def _replay_args(args: tuple[Any, ...]) -> SeedRun:
    return replay_one(*args)


def replay(
    table: ReplayTable,
    samplers: Sequence[str],
    *,
    seeds: int,
    trainings: int,
    reference: str | Sequence[float] = "median",
    baseline_row: int | None = None,
    processes: int | None = None,
    cheap_per_training: int = 20,
    population_size: int = 4,
    first_seed: int = 0,
) -> dict[str, Any]:
    """Every sampler over the seeds `first_seed` .. `first_seed + seeds - 1` (in parallel
    processes); the `replay.out` JSON. `population_size`: random trainings before `auto`
    and `gp` model anything, NSGA-II's generation."""
    for name in samplers:
        if name not in REPLAY_SAMPLERS:
            raise ConfigError(f"replay.samplers: {name!r} unknown; allowed {list(REPLAY_SAMPLERS)}")
    if AUTO in samplers and not table.cheap:
        raise ConfigError(
            "replay.samplers: auto measures cheap objectives first; name them in table.cheap"
        )
    if cheap_per_training < 1:
        raise ConfigError(f"replay.cheap_per_training={cheap_per_training}: allowed >= 1")
    if baseline_row is not None and not 0 <= baseline_row < len(table.rows):
        raise ConfigError(
            f"replay.baseline_row={baseline_row}: the table has rows 0..{len(table.rows) - 1}"
        )
    if trainings > len(table.rows):
        raise ConfigError(f"replay.trainings={trainings} > the table's {len(table.rows)} rows")
    ref = table.reference(reference)
    total = table.true_hypervolume(ref)
    if total <= 0:
        raise ConfigError(
            f"reference point {ref}: no row beats it in every objective (hypervolume 0)"
        )
    jobs = [
        (table, s, seed, trainings, ref, baseline_row, population_size, cheap_per_training)
        for s in samplers
        for seed in range(first_seed, first_seed + seeds)
    ]
    workers = processes or min(len(jobs), multiprocessing.cpu_count())
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            runs = pool.map(_replay_args, jobs)
    else:
        runs = [_replay_args(job) for job in jobs]
    out: dict[str, Any] = {
        "table": str(table.path),
        "rows": len(table.rows),
        "params": list(table.params),
        "objectives": [f"{c}:{d[:3]}" for c, d in table.objectives],
        "cheap": list(table.cheap),
        "constraints": [str(c) for c in table.constraints],
        "feasible_rows": sum(table.feasible),
        "reference": ref,
        "reference_rule": reference if isinstance(reference, str) else "given",
        "true_hypervolume": total,
        "trainings": trainings,
        "cheap_per_training": cheap_per_training,
        "samplers": {},
    }
    for k, name in enumerate(samplers):
        mine = runs[k * seeds : (k + 1) * seeds]
        summary: dict[str, Any] = {
            "seeds": [
                {"seed": s, "trained_rows": r.trained_rows, "cheap_rows": r.cheap_rows}
                for s, r in enumerate(mine, start=first_seed)
            ]
        }
        for n in (c for c in CHECKPOINTS if c <= trainings):
            at = [r.shares[n - 1] for r in mine if len(r.shares) >= n]
            summary[f"share_after_{n}"] = _mean_sd(at)
        for target in TARGETS:
            reach = [trainings_to_reach(r.shares, target) for r in mine]
            summary[f"trainings_to_{round(target * 100)}"] = {
                "per_seed": [None if math.isinf(x) else x for x in reach],
                "mean_of_reached": _mean_sd([x for x in reach if not math.isinf(x)])["mean"],
                "reached": sum(not math.isinf(x) for x in reach),
            }
        out["samplers"][name] = summary
    return out


def trainings_to_reach(shares: Sequence[float], target: float) -> float:
    """1-based number of trainings after which `shares` first reaches `target`; inf if never."""
    return next((k for k, s in enumerate(shares, 1) if s >= target - 1e-12), math.inf)


def write(result: dict[str, Any], out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)


def _mean_sd(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "sd": None}
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def _objective(spec: str) -> tuple[str, str]:
    column, _, direction = str(spec).rpartition(":")
    names = {"max": "maximize", "min": "minimize", "maximize": "maximize", "minimize": "minimize"}
    if not column or direction not in names:
        raise ConfigError(f"table.objectives: {spec!r}; write column:max or column:min")
    return column, names[direction]


def _is_number(text: str | None) -> bool:
    try:
        float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def _choices(cells: list[str]) -> list[Any]:
    """A parameter's sorted distinct values: numbers if every cell is one, else strings."""
    if all(_is_number(c) for c in cells):
        numbers = sorted({float(c) for c in cells})
        return [int(v) if v.is_integer() else v for v in numbers]
    return sorted(set(cells))


def _value(cell: str, choices: list[Any]) -> Any:
    if choices and not isinstance(choices[0], str):
        v = float(cell)
        return int(v) if v.is_integer() else v
    return cell


# `vlmnas replay` overrides: key -> (default, what it takes); `table` and its columns
# have no default.
OPTIONS: dict[str, tuple[Any, str]] = {
    "table": (None, "the CSV file"),
    "table.params": (None, "[column, ...]: the configuration's parameters"),
    "table.objectives": (None, "[column:max|min, ...]: at least 2"),
    "table.cheap": ([], "[column, ...]: objectives (or constrained columns) known before training"),
    "table.constraints": (
        [],
        "['column <= v', ...]: rows breaking one are off the front; on a table.cheap"
        " column, never trained",
    ),
    "replay.samplers": (["random", "tpe"], f"[name, ...] of {list(REPLAY_SAMPLERS)}"),
    "replay.seeds": (10, "seeds per sampler"),
    "replay.trainings": (100, "trainings per seed"),
    "replay.reference": ("median", "median | nadir | [v1, v2, ...]"),
    "replay.baseline_row": (None, "0-based data row tried first, as search's baseline"),
    "replay.out": ("replay.json", "the result JSON"),
    "replay.processes": (None, "parallel processes (default: one per core)"),
    "replay.cheap_per_training": (20, "auto: new candidates measured per training"),
}


def run_cli(overrides: Sequence[str]) -> tuple[dict[str, Any], Path]:
    """Parse `vlmnas replay` overrides (Hydra syntax), load and check the table, replay,
    write `replay.out`; returns the result and where it went."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(f"replay overrides: {exc}") from None
    given = {o.key_or_group: o.value() for o in parsed}
    unknown = sorted(set(given) - set(OPTIONS))
    if unknown:
        allowed = "; ".join(f"{k}: {v[1]}" for k, v in OPTIONS.items())
        raise ConfigError(f"replay: unknown {unknown}; allowed {allowed}")
    opts = {k: given.get(k, default) for k, (default, _) in OPTIONS.items()}
    for key in ("table", "table.params", "table.objectives"):
        if opts[key] is None:
            raise ConfigError(f"replay needs {key}= ({OPTIONS[key][1]})")
    for key in (
        "table.params",
        "table.objectives",
        "table.cheap",
        "table.constraints",
        "replay.samplers",
    ):
        if not isinstance(opts[key], list):
            raise ConfigError(f"{key}={opts[key]!r}: give a list, {OPTIONS[key][1]}")
    for key in ("replay.seeds", "replay.trainings"):
        if not isinstance(opts[key], int) or opts[key] < 1:
            raise ConfigError(f"{key}={opts[key]!r}: a positive integer")
    table = ReplayTable.load(
        Path(str(opts["table"])).expanduser(),
        [str(p) for p in opts["table.params"]],
        [str(o) for o in opts["table.objectives"]],
        [str(c) for c in opts["table.cheap"]],
        [str(c) for c in opts["table.constraints"]],
    )
    result = replay(
        table,
        [str(s) for s in opts["replay.samplers"]],
        seeds=opts["replay.seeds"],
        trainings=opts["replay.trainings"],
        reference=opts["replay.reference"],
        baseline_row=opts["replay.baseline_row"],
        processes=opts["replay.processes"],
        cheap_per_training=opts["replay.cheap_per_training"],
    )
    out = Path(str(opts["replay.out"])).expanduser()
    write(result, out)
    return result, out
