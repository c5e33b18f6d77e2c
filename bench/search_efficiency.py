"""How fast each sampler finds the true front: the `quick` study replayed on a measured table.

    python bench/search_efficiency.py            # auto, nsga2, tpe, gp, random x 10 seeds
    python bench/search_efficiency.py --small    # smoke run: 2 seeds, 15 trainings

Replays the `quick` study's objectives (cpu/accuracy up, cpu/latency_p50_ms down) on the
`tabular` space against `bench/data/tabular_cpu.csv` (every one of its 288 configurations
trained and measured once by `bench/tabular_table.py`) through `studies._tabular.replay`,
which is `vlmnas replay`'s engine (`studies._replay`) given the study's terms: each sampler
as `search` builds it, baseline first, latency read as known before training, nothing
trained, a configuration proposed again not trained again. Any other table of the space
goes in with `--table`; a table of another shape goes to `vlmnas replay` itself.

Each sampler runs once per seed, as a search runs it (`auto` aims at the hypervolume
bounded by the reference point `search` uses: accuracy 0, twice the baseline's latency).
What it trained is then scored against three reference points: that one, the table's
median (as public hardware-aware NAS comparisons set it) and its nadir. Prints, per
reference point and sampler over the seeds: the hypervolume share (found over the true
front's) after 10/25/50/100 trainings, and the trainings needed to reach 80% and 95% of
it (the mean over the seeds that got there, and how many did).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hardware_profiles._report import cpu_description  # noqa: E402
from studies import load_config  # noqa: E402
from studies._replay import CHECKPOINTS, TARGETS, ReplayTable, trainings_to_reach  # noqa: E402
from studies._tabular import load_table, replay, search_reference  # noqa: E402

TABLE = REPO / "bench" / "data" / "tabular_cpu.csv"
SPACE = ["search_space=tabular", "hardware.cpu.quant_schemes=[fp32,int8_dynamic]"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--samplers", default="auto,nsga2,tpe,gp,random")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trainings", type=int, default=100)
    parser.add_argument("--population-size", type=int, default=10, help="random trainings first")
    parser.add_argument("--cheap-per-training", type=int, default=20, help="auto")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes")
    parser.add_argument("--small", action="store_true", help="2 seeds, 15 trainings")
    args = parser.parse_args()
    if args.small:
        args.seeds, args.trainings = 2, 15
    cfg = load_config(
        [
            *SPACE,
            f"study.population_size={args.population_size}",
            f"study.cheap_per_training={args.cheap_per_training}",
        ]
    )
    table = load_table(cfg, args.table)
    samplers = args.samplers.split(",")
    print(f"# machine: {cpu_description()}, Python {platform.python_version()}")
    print(
        f"# table {args.table.name}: {len(table.rows)} configurations over {list(table.params)};"
        f" {args.trainings} trainings x {args.seeds} seeds; population_size"
        f" {args.population_size}; auto measures {args.cheap_per_training} per training"
    )
    start = time.perf_counter()
    result = replay(
        cfg, table, args.trainings, samplers=samplers, seeds=args.seeds, processes=args.jobs
    )
    print(f"# replay: {time.perf_counter() - start:.0f} s for all samplers and seeds")
    references = {
        "search": search_reference(cfg, table),
        "median": table.reference("median"),
        "nadir": table.reference("nadir"),
    }
    for name, ref in references.items():
        total = table.true_hypervolume(ref)
        print(
            f"\n## reference point: {name} {[round(x, 4) for x in ref]}, true front"
            f" hypervolume {total:.4f}\n"
        )
        _report(table, result, ref, args.trainings)
    print(
        '\n(± is the standard deviation over seeds. "to 80%" and "to 95%": the mean'
        " trainings of the seeds that reached it, and how many did; cheap reads: rows whose"
        " latency was read, trained or not, per seed.)"
    )


def _report(table: ReplayTable, result: dict, ref: list[float], trainings: int) -> None:
    total = table.true_hypervolume(ref)
    shown = [k for k in CHECKPOINTS if k <= trainings]
    targets = [round(t * 100) for t in TARGETS]
    print(
        "| sampler | "
        + " | ".join(f"share after {k}" for k in shown)
        + " | "
        + " | ".join(f"trainings to {t}% (reached)" for t in targets)
        + " | cheap reads |"
    )
    print("|---|" + "---:|" * (len(shown) + len(targets) + 1))
    for name, summary in result["samplers"].items():
        curves = [
            [table.hypervolume(s["trained_rows"][:n], ref) / total for n in range(1, trainings + 1)]
            for s in summary["seeds"]
        ]
        shares = []
        for k in shown:
            at = [c[k - 1] for c in curves]
            sd = statistics.stdev(at) if len(at) > 1 else 0.0
            shares.append(f"{statistics.fmean(at):.3f} ± {sd:.3f}")
        reach = []
        for t in TARGETS:
            got = [n for n in (trainings_to_reach(c, t) for c in curves) if n <= trainings]
            mean = f"{statistics.fmean(got):.1f}" if got else "-"
            reach.append(f"{mean} ({len(got)}/{len(curves)})")
        cheap = statistics.fmean(s["cheap_rows"] for s in summary["seeds"])
        print(f"| {name} | " + " | ".join(shares + reach) + f" | {cheap:.0f} |", flush=True)


if __name__ == "__main__":
    main()
