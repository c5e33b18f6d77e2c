"""The search driver's own cost per trial at 10, 100 and 1,000 trials: flat, not growing.

    python bench/driver_overhead.py             # 10, 100 and 1000 trials
    python bench/driver_overhead.py --small     # smoke run: 10 and 30 trials

Runs the real `studies._search.search` (Ray Tune, Optuna SQLite, MLflow SQLite, the
progress line, pareto tags) with a stub trial that returns made-up metrics at once, so
everything measured is the driver's. Per trial it times the two driver calls every
trial makes: `TrialBook.ask` (reap dead trials, count, sample, Optuna ask) and
`TrialBook.end` (decide, tell Optuna, front, MLflow run and changed pareto tags,
progress). It reports their mean over the first and the last tenth of each study, and
the wall time per trial inside Ray Tune (which adds Ray's scheduling and results).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hardware_profiles._report import cpu_description  # noqa: E402
from studies import load_config  # noqa: E402
from studies._book import TrialBook  # noqa: E402
from studies._search import search  # noqa: E402


def stub_trial(config: Mapping[str, Any], report: Callable[[dict[str, float]], None]) -> dict:
    """Made-up metrics for the `quick` study's objectives, at once."""
    rng = random.Random(int(config["trial_number"]))
    return {
        "cpu/accuracy": rng.random(),
        "cpu/latency_p50_ms": rng.uniform(0.2, 2.0),
        "cpu/latency_p95_ms": rng.uniform(0.2, 2.0),
        "cpu/size_mb": rng.uniform(0.5, 5.0),
        "val_accuracy": rng.random(),
        "params": 1e5,
        "cpu/latency_source": "measured",
        "val_accuracy_history": [],
    }


def run(n: int, workdir: Path) -> dict[str, float]:
    timings: dict[str, list[float]] = {"ask": [], "end": []}
    ask, end = TrialBook.ask, TrialBook.end

    def timed_ask(self: TrialBook) -> Any:
        start = time.perf_counter()
        out = ask(self)
        timings["ask"].append(time.perf_counter() - start)
        return out

    def timed_end(self: TrialBook, *args: Any) -> None:
        start = time.perf_counter()
        end(self, *args)
        timings["end"].append(time.perf_counter() - start)

    TrialBook.ask, TrialBook.end = timed_ask, timed_end  # type: ignore[method-assign]
    try:
        cfg = load_config(
            [
                f"study.workdir={workdir}",
                f"study.name=n{n}",
                f"study.n_trials={n}",
                "study.sampler=random",  # a sampler's own cost is not the driver's
                "data.train_images=40",
                "data.val_images=10",
            ]
        )
        start = time.perf_counter()
        search(cfg, trial_fn=stub_trial)
        wall = time.perf_counter() - start
    finally:
        TrialBook.ask, TrialBook.end = ask, end  # type: ignore[method-assign]
    tenth = max(n // 10, 1)
    per = [a + e for a, e in zip(timings["ask"], timings["end"], strict=False)]
    timing = (workdir / f"n{n}" / "timing.json").read_text()
    tune_wall = float(json.loads(timing)["tune_wall_s"])
    return {
        "first_ms": 1000 * statistics.mean(per[:tenth]),
        "last_ms": 1000 * statistics.mean(per[-tenth:]),
        "ask_ms": 1000 * statistics.mean(timings["ask"]),
        "end_ms": 1000 * statistics.mean(timings["end"]),
        "tune_per_trial_ms": 1000 * tune_wall / n,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs-driver")
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    sizes = [10, 30] if args.small else [10, 100, 1000]
    root = Path(args.workdir).resolve()
    print(f"machine: {cpu_description()}; {platform.platform()}")
    rows = [(n, run(n, root / f"w{n}")) for n in sizes]
    print()
    print(
        "| trials | driver ms/trial, first tenth | last tenth | ask ms | end ms"
        " | wall in Ray Tune ms/trial | study wall s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, r in rows:
        print(
            f"| {n} | {r['first_ms']:.1f} | {r['last_ms']:.1f} | {r['ask_ms']:.1f} |"
            f" {r['end_ms']:.1f} | {r['tune_per_trial_ms']:.0f} | {r['wall_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
