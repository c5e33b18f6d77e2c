"""`vlmnas replay` cost: 10 seeds x 100 trainings of each sampler against a synthetic
15,000-row table (5 x 5 x 6 x 10 x 10 configurations, two objectives with a known
trade-off), seeds in parallel processes; wall time per sampler.

    python bench/replay_speed.py [samplers...]    # default: random tpe auto
    CHEAP_PER_TRAINING=40 python bench/replay_speed.py auto   # auto's pool growth (default 20)
"""

from __future__ import annotations

import csv
import itertools
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hardware_profiles._report import cpu_description  # noqa: E402
from studies._replay import ReplayTable, replay  # noqa: E402

LEVELS = {"a": 5, "b": 5, "c": 6, "d": 10, "e": 10}


def synthetic(path: Path, seed: int = 0) -> Path:
    """Accuracy rises with the parameters' sum and latency with its weighted sum, plus
    noise: a front spread over many configurations."""
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*LEVELS, "accuracy", "latency_ms"])
        for combo in itertools.product(*(range(n) for n in LEVELS.values())):
            size = sum(v / (n - 1) for v, n in zip(combo, LEVELS.values(), strict=True))
            cost = sum(
                (i + 1) * v / (n - 1)
                for i, (v, n) in enumerate(zip(combo, LEVELS.values(), strict=True))
            )
            acc = 1 - 0.5 * 2.7 ** (-size) + rng.gauss(0, 0.02)
            w.writerow([*combo, f"{acc:.4f}", f"{1 + cost + rng.gauss(0, 0.2):.4f}"])
    return path


def main() -> None:
    samplers = sys.argv[1:] or ["random", "tpe", "auto"]
    cheap_per_training = int(os.environ.get("CHEAP_PER_TRAINING", "20"))
    with tempfile.TemporaryDirectory() as work:
        path = synthetic(Path(work) / "t.csv")
        table = ReplayTable.load(
            path, list(LEVELS), ["accuracy:max", "latency_ms:min"], ["latency_ms"]
        )
        print(
            f"{cpu_description()}; {len(table.rows)} rows, 10 seeds x 100 trainings;"
            f" auto: {cheap_per_training} cheap candidates per training\n"
        )
        print(
            "| sampler | wall s | share after 25 | after 50 | after 100 (mean, sd) |"
            " trainings to 80% (seeds reaching) | to 95% | cheap rows read per seed |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name in samplers:
            start = time.perf_counter()
            out = replay(
                table, [name], seeds=10, trainings=100, cheap_per_training=cheap_per_training
            )
            wall = time.perf_counter() - start
            s = out["samplers"][name]
            hv = s["share_after_100"]
            cheap = sum(r["cheap_rows"] for r in s["seeds"]) / len(s["seeds"])

            def reach(target: str, s: dict = s) -> str:
                r = s[f"trainings_to_{target}"]
                mean = "-" if r["mean_of_reached"] is None else f"{r['mean_of_reached']:.0f}"
                return f"{mean} ({r['reached']}/10)"

            print(
                f"| {name} | {wall:.0f} | {s['share_after_25']['mean']:.3f} |"
                f" {s['share_after_50']['mean']:.3f} | {hv['mean']:.3f} ({hv['sd']:.3f}) |"
                f" {reach('80')} | {reach('95')} | {cheap:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
