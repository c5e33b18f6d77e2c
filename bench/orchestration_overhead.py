"""Orchestration overhead of a study: the driver's wall time that is not trial compute,
and where it goes (Ray Tune, Optuna, MLflow).

    python bench/orchestration_overhead.py           # 20 trials, one at a time
    python bench/orchestration_overhead.py --small   # smoke run: 3 tiny trials

Runs the `quick` study with 20 trials, one at a time, at a reduced budget. `vlmnas search`
writes `<study>/timing.json` (studies/_search.py `_Timing`):
- trial compute: the sum of every trial's `run_trial` wall time;
- Optuna: sampling plus storage, from suggest, tell and the progress line;
- MLflow: logging each trial and re-tagging the front;
- Ray: the rest of the time inside Ray Tune (scheduling, worker start-up, results).
Overhead = (wall inside Tune - trial compute) / trial compute.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import run_search  # noqa: E402  (bench/ is the script's folder)

from hardware_profiles._report import cpu_description  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs-overhead")
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    budget = ["study.n_trials=20", "trainer.max_epochs=4", "data.train_images=1000"]
    if args.small:
        budget = [
            "study.n_trials=3",
            "trainer.max_epochs=1",
            "data.train_images=40",
            "data.val_images=10",
            "study.population_size=2",
        ]
    workdir = Path(args.workdir).resolve()
    overrides = [
        f"study.workdir={workdir}",
        "study.name=overhead",
        "study.max_concurrent=1",
        *budget,
    ]
    print(f"machine: {cpu_description()}; {platform.platform()}")
    print(f"command: vlmnas search {' '.join(overrides)}")
    total = run_search("overhead", overrides)
    t = json.loads((workdir / "overhead" / "timing.json").read_text())
    compute = t["trials_s"]
    inside = t["tune_wall_s"]
    rows = [
        ("trial compute", compute),
        ("Ray Tune (scheduling, workers, results)", t["other_s"]),
        ("Optuna (sampling and storage)", t.get("optuna_s", 0.0)),
        ("MLflow (trial runs, front tags)", t.get("mlflow_s", 0.0)),
    ]
    print()
    print("| part | seconds | share of trial compute |")
    print("|---|---:|---:|")
    for name, sec in rows:
        print(f"| {name} | {sec:.1f} | {sec / compute:.1%} |")
    print(
        f"| **overhead inside Tune** | {inside - compute:.1f} | {(inside - compute) / compute:.1%} |"
    )
    print()
    print(
        f"outside Tune: process start, data, study setup and the report:"
        f" {total - inside:.1f} s of {total:.1f} s in all"
        f" (report {t.get('report_s', 0.0):.1f} s, MLflow setup {t.get('mlflow_setup_s', 0.0):.1f} s)"
    )


if __name__ == "__main__":
    main()
