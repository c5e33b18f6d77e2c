"""How fast each sampler finds the true front: tabular replay against a measured table.

    python bench/search_efficiency.py            # nsga2, tpe, gp, random x 10 seeds
    python bench/search_efficiency.py --small    # smoke run: 2 seeds, 15 trials

Replays the `quick` study's objectives (cpu/accuracy up, cpu/latency_p50_ms down) on the
`tabular` space against `bench/data/tabular_cpu.csv` (every one of its 288 configurations
trained and measured once by `bench/tabular_table.py`), with each sampler as `search`
builds it (`studies._search.make_sampler`), baseline first, nothing trained
(`studies._tabular.replay`). The table's own front gives the true hypervolume, for two
reference points: the one `search` uses (accuracy 0, twice the baseline's latency) and
the table's nadir (its worst accuracy and latency).

Prints, per sampler over the seeds: the hypervolume reached after 10/25/50/100 trials
as a share of the true front's, and the trials needed to reach 95% of it (median and
mean; a seed that never gets there counts as the study length and is reported), with
the mean's ratio to random's (below 1: fewer trials than random).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hardware_profiles._report import cpu_description  # noqa: E402
from studies import load_config  # noqa: E402
from studies._tabular import (  # noqa: E402
    Table,
    hypervolume_curve,
    nadir,
    reference,
    replay,
    trials_to_reach,
    true_hypervolume,
)

TABLE = REPO / "bench" / "data" / "tabular_cpu.csv"
SPACE = ["search_space=tabular", "hardware.cpu.quant_schemes=[fp32,int8_dynamic]"]
CHECKPOINTS = (10, 25, 50, 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--samplers", default="nsga2,tpe,gp,random")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--population-size", type=int, default=10, help="NSGA-II generation")
    parser.add_argument("--target", type=float, default=0.95, help="share of the true HV")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="studies at once")
    parser.add_argument("--small", action="store_true", help="2 seeds, 15 trials")
    args = parser.parse_args()
    if args.small:
        args.seeds, args.trials = 2, 15
    samplers = args.samplers.split(",")
    table = Table.load(args.table)
    base = [
        *SPACE,
        f"study.n_trials={args.trials}",
        f"study.population_size={args.population_size}",
    ]
    cfg = load_config(base)
    table.check(cfg)
    # Two reference points: the one `search` uses (accuracy 0, twice the baseline's
    # latency), and the table's nadir (its worst accuracy and latency), which counts only
    # the region the configurations span and so tells the samplers apart more sharply.
    refs = {"search": reference(cfg, table), "nadir": nadir(cfg, table)}
    true_hv = {k: true_hypervolume(cfg, table, r) for k, r in refs.items()}
    print(f"# machine: {cpu_description()}, Python {platform.python_version()}")
    print(
        f"# table {args.table.name}: {len(table.rows)} configurations; {args.trials} trials x"
        f" {args.seeds} seeds; population_size {args.population_size}"
    )
    for k, r in refs.items():
        print(
            f"# reference {k}: {[round(x, 4) for x in r]}, true front hypervolume {true_hv[k]:.4f}"
        )
    tasks = [(name, seed) for name in samplers for seed in range(args.seeds)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(_study, [(args.table, base, n, s, refs) for n, s in tasks]))
    for k in refs:
        print(f"\n## reference point: {k} {[round(x, 4) for x in refs[k]]}\n")
        _report(
            {n: [r for (n2, _), r in zip(tasks, runs, strict=True) if n2 == n] for n in samplers},
            k,
            true_hv[k],
            args,
        )
    print(
        f"\n(± is the standard deviation over seeds; a seed that did not reach {args.target:.0%}"
        f" counts as {args.trials} trials, so such means are lower bounds. The first"
        f" {args.population_size} trials of every sampler are the same seeded random draws.)"
    )


def _report(
    runs: dict[str, list[dict]], ref: str, true_hv: float, args: argparse.Namespace
) -> None:
    results = {}
    for name, studies in runs.items():
        curves = [run["curves"][ref] for run in studies]
        results[name] = {
            "reach": [trials_to_reach(c, args.target * true_hv) for c in curves],
            **{f"hv{k}": [c[min(k, len(c)) - 1] / true_hv for c in curves] for k in CHECKPOINTS},
            "distinct": [run["distinct"] for run in studies],
            "seconds": [run["seconds"] for run in studies],
        }
        print(f"# {name}: {_reach_text(results[name]['reach'], args.trials)}", flush=True)
    random_mean = (
        _mean_capped(results["random"]["reach"], args.trials) if "random" in results else None
    )
    shown = [k for k in CHECKPOINTS if k <= args.trials]
    print()
    print(
        "| sampler | "
        + " | ".join(f"HV share after {k}" for k in shown)
        + f" | trials to {args.target:.0%} HV: median | mean | ratio to random"
        " | seeds that got there | distinct configs | replay s/study |"
    )
    print("|---|" + "---:|" * (len(shown) + 6))
    for name, res in results.items():
        mean = _mean_capped(res["reach"], args.trials)
        reached = sum(math.isfinite(r) for r in res["reach"])
        ratio = f"{mean / random_mean:.2f}" if random_mean else "-"
        median = statistics.median(min(r, args.trials) for r in res["reach"])
        median_text = f"{median:.0f}" if median < args.trials else f">={args.trials}"
        hv = " | ".join(
            f"{statistics.mean(res[f'hv{k}']):.3f} ± {_sd(res[f'hv{k}']):.3f}" for k in shown
        )
        print(
            f"| {name} | {hv} | {median_text} | {mean:.1f} | {ratio} | {reached}/{len(res['reach'])}"
            f" | {statistics.mean(res['distinct']):.0f} | {statistics.mean(res['seconds']):.1f} |"
        )


def _study(task: tuple) -> dict:
    """One replayed study (in a worker process): its hypervolume curve per reference."""
    table_path, base, name, seed, refs = task
    table = Table.load(table_path)
    cfg = load_config([*base, f"study.sampler={name}", f"study.seed={seed}"])
    start = time.perf_counter()
    trials = replay(cfg, table, cfg.study.n_trials)
    seconds = time.perf_counter() - start
    return {
        "curves": {k: hypervolume_curve(cfg, trials, r) for k, r in refs.items()},
        "distinct": len({t.arch_id for t in trials}),
        "seconds": seconds,
    }


def _mean_capped(values: list[float], cap: int) -> float:
    return statistics.mean(min(v, cap) for v in values)


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _reach_text(reach: list[float], cap: int) -> str:
    return ", ".join(str(int(r)) if math.isfinite(r) else f">{cap}" for r in reach)


if __name__ == "__main__":
    main()
