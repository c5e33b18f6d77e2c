"""How fast each sampler finds the true front: tabular replay against a measured table.

    python bench/search_efficiency.py            # nsga2, tpe, gp, random x 10 seeds
    python bench/search_efficiency.py --small    # smoke run: 2 seeds, 15 trials

Replays the `quick` study's objectives (cpu/accuracy up, cpu/latency_p50_ms down) on the
`tabular` space against `bench/data/tabular_cpu.csv` (every one of its 288 configurations
trained and measured once by `bench/tabular_table.py`), with each sampler as `search`
builds it (`studies._search.make_sampler`), baseline first, nothing trained
(`studies._tabular.replay`). The table's own front gives the true hypervolume
(reference point as `search` sets it: accuracy 0, twice the baseline's latency).

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
    ref = reference(cfg, table)
    true_hv = true_hypervolume(cfg, table, ref)
    print(f"# machine: {cpu_description()}, Python {platform.python_version()}")
    print(
        f"# table {args.table.name}: {len(table.rows)} configurations; true front hypervolume"
        f" {true_hv:.4f} (reference {ref}); {args.trials} trials x {args.seeds} seeds;"
        f" population_size {args.population_size}"
    )
    tasks = [(name, seed) for name in samplers for seed in range(args.seeds)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(
            pool.map(
                _study,
                [
                    (args.table, base, name, seed, args.target * true_hv, ref)
                    for name, seed in tasks
                ],
            )
        )
    results: dict[str, dict[str, list[float]]] = {}
    for (name, _), run in zip(tasks, runs, strict=True):
        res = results.setdefault(name, {})
        for key, value in run.items():
            res.setdefault(key, []).append(value)
    for name, res in results.items():
        res["hv_share"] = [hv / true_hv for hv in res.pop("final_hv")]
        for k in CHECKPOINTS:
            res[f"hv{k}"] = [hv / true_hv for hv in res[f"hv{k}"]]
        print(f"# {name}: {_reach_text(res['reach'], args.trials)}", flush=True)

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
    print(
        f"\n(± is the standard deviation over seeds; a seed that did not reach {args.target:.0%}"
        f" counts as {args.trials} trials, so such means are lower bounds.)"
    )


def _study(task: tuple) -> dict[str, float]:
    """One replayed study (in a worker process): its reach and hypervolume curve."""
    table_path, base, name, seed, target, ref = task
    table = Table.load(table_path)
    cfg = load_config([*base, f"study.sampler={name}", f"study.seed={seed}"])
    start = time.perf_counter()
    trials = replay(cfg, table, cfg.study.n_trials)
    seconds = time.perf_counter() - start
    curve = hypervolume_curve(cfg, trials, ref)
    return {
        "reach": trials_to_reach(curve, target),
        "distinct": len({t.arch_id for t in trials}),
        "seconds": seconds,
        "final_hv": curve[-1],
        **{f"hv{k}": curve[min(k, len(curve)) - 1] for k in CHECKPOINTS},
    }


def _mean_capped(values: list[float], cap: int) -> float:
    return statistics.mean(min(v, cap) for v in values)


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _reach_text(reach: list[float], cap: int) -> str:
    return ", ".join(str(int(r)) if math.isfinite(r) else f">{cap}" for r in reach)


if __name__ == "__main__":
    main()
