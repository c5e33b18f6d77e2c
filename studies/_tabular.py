"""Tabular replay of a study: its sampler run against a table of measured configurations
of its search space, through `vlmnas replay`'s engine (`studies._replay`).

A table (CSV, one row per configuration, written by `bench/tabular_table.py`) holds what
`run_trial` reported for every configuration of a search space: `arch_id`, the space's
parameters, the metrics. `load_table` puts a study config into that engine's terms:

- parameters: the space's leaves with more than one choice (a conditional one such as
  `fusion.gating` that has one value wherever it applies names nothing new);
- objectives and constraints: the study's; cheap: those a search measures before
  training (`is_cheap_metric`: latency, size, coverage), so a row that breaks a cheap
  constraint is never trained, as `reject_before_training` does in a search;
- the first training: the space's baseline, as in a search.

Samplers are built as `vlmnas search` builds them (`studies._samplers`, `auto` included),
seeded from `study.seed`. What replay leaves out: Ray, ASHA (every training is full
budget) and failures (every configuration has a row). A configuration proposed again
costs no training (a search has its weights and latency cached): replay counts
trainings, not proposals.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._config import ConfigError, VlmnasConfig, is_cheap_metric
from ._front import reference_point
from ._replay import ReplayTable
from ._replay import replay as replay_table


def space_params(cfg: VlmnasConfig) -> list[str]:
    """The parameters that tell `cfg.space`'s configurations apart: those with more than
    one value where they apply."""
    grid = cfg.space.grid(_quant(cfg))
    keys = dict.fromkeys(k for params in grid for k in params)
    return [k for k in keys if len({str(p[k]) for p in grid if k in p}) > 1]


def load_table(cfg: VlmnasConfig, path: Path) -> ReplayTable:
    """`path` as a replay table of `cfg`'s study; `ConfigError` (one line) when it lacks
    a column the study needs, a configuration of the space, or is malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"tabular table {str(path)!r} not found")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        ids = {row.get("arch_id") for row in reader}
    study = cfg.study
    needed = [o.metric for o in study.objectives] + [c.metric for c in study.parsed_constraints]
    absent = [m for m in dict.fromkeys(["arch_id", *needed]) if m not in columns]
    if absent:
        raise ConfigError(f"{path}: no column for {absent}; it has {sorted(columns)}")
    grid = cfg.space.grid(_quant(cfg))
    missing = [p for p in grid if cfg.space.to_arch(p).arch_id not in ids]
    if missing:
        raise ConfigError(
            f"{path}: {len(missing)} configurations of search_space {cfg.space.name!r} have"
            f" no row, e.g. {missing[0]}; rebuild it with bench/tabular_table.py"
        )
    cheap = [m for m in dict.fromkeys(needed) if is_cheap_metric(m)]
    return ReplayTable.load(
        path,
        space_params(cfg),
        [f"{o.metric}:{o.direction[:3]}" for o in study.objectives],
        cheap,
        [str(c) for c in study.parsed_constraints],
    )


def baseline_row(cfg: VlmnasConfig, table: ReplayTable) -> int:
    """The table row of the space's baseline (with the first scheme of every profile)."""
    baseline = cfg.space.baseline_params(_quant(cfg))
    key = tuple(baseline[p] for p in table.params)
    if key not in table.index:
        raise ConfigError(f"{table.path}: no row for the baseline {baseline}")
    return table.index[key]


def search_reference(cfg: VlmnasConfig, table: ReplayTable) -> list[float]:
    """The hypervolume reference point `search` uses (`_front.reference_point`): each
    objective's `reference`, else 0 when maximizing and twice the baseline's value when
    minimizing."""
    return reference_point(cfg.study.objectives, list(table.scores[baseline_row(cfg, table)]))


def replay(
    cfg: VlmnasConfig,
    table: ReplayTable,
    trainings: int,
    *,
    samplers: Sequence[str] | None = None,
    seeds: int = 1,
    reference: str | Sequence[float] = "search",
    processes: int | None = None,
) -> dict[str, Any]:
    """`samplers` (default: the study's) for `trainings` trainings each, seeds
    `study.seed` .. `study.seed + seeds - 1`, baseline first: the `vlmnas replay` result
    (`studies._replay.replay`). `reference`: `search` (`search_reference`), `median`,
    `nadir` or values."""
    ref = search_reference(cfg, table) if reference == "search" else reference
    return replay_table(
        table,
        list(samplers or [cfg.study.sampler]),
        seeds=seeds,
        trainings=trainings,
        reference=ref,
        baseline_row=baseline_row(cfg, table),
        processes=processes,
        cheap_per_training=cfg.study.cheap_per_training,
        population_size=cfg.study.population_size,
        first_seed=cfg.study.seed,
    )


def _quant(cfg: VlmnasConfig) -> dict[str, tuple[str, ...]]:
    return {p.name: p.quant_schemes for p in cfg.profiles}
