"""The same study with 1 and with 2 concurrent trials: speed-up, and whether latency
figures stay stable while other trials train (the host measuring lock's job).

    python bench/parallel_scaling.py            # 10-trial quick study, reduced budget
    python bench/parallel_scaling.py --small    # smoke run

Each run has its own workdir (no cache shared). `serial`: 1 trial at a time, 2 training
threads. `parallel`: 2 trials at a time, 1 CPU and 1 training thread each. Reported: wall
time, trials per minute, the cv of each latency measurement (median and max over trials),
and for architectures both runs measured (NSGA-II's first generation is the same for a
seed), the ratio of their p50s.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import run_search  # noqa: E402  (bench/ is the script's folder)

from hardware_profiles._report import cpu_description  # noqa: E402

RUNS = {
    "serial": ["study.max_concurrent=1", "study.cpus_per_trial=2", "trainer.threads=2"],
    "parallel": ["study.max_concurrent=2", "study.cpus_per_trial=1", "trainer.threads=1"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs-parallel")
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    budget = ["study.n_trials=10", "trainer.max_epochs=4", "data.train_images=1000"]
    if args.small:
        budget = [
            "study.n_trials=4",
            "trainer.max_epochs=1",
            "data.train_images=40",
            "data.val_images=10",
            "study.population_size=2",
        ]
    print(f"machine: {cpu_description()}; {platform.platform()}")
    print(f"budget: {' '.join(budget)}")
    results = {}
    for name, extra in RUNS.items():
        workdir = Path(args.workdir).resolve() / name
        wall = run_search(name, [f"study.workdir={workdir}", "study.name=scaling", *budget, *extra])
        results[name] = {"wall_s": wall, **_latencies(workdir)}
        print(f"{name}: {wall:.0f} s", flush=True)
    serial, parallel = results["serial"], results["parallel"]
    shared = sorted(set(serial["p50"]) & set(parallel["p50"]))
    ratios = [parallel["p50"][k] / serial["p50"][k] for k in shared]
    print()
    print("| run | trials | wall time | trials / min | latency cv median | latency cv max |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['trials']} | {r['wall_s'] / 60:.1f} min |"
            f" {r['trials'] / (r['wall_s'] / 60):.2f} | {statistics.median(r['cv']):.2%} |"
            f" {max(r['cv']):.2%} |"
        )
    print(f"\nspeed-up (serial wall / parallel wall): {serial['wall_s'] / parallel['wall_s']:.2f}x")
    if ratios:
        print(
            f"same architecture and scheme measured in both runs: {len(ratios)};"
            f" parallel/serial p50 ratio: {', '.join(f'{r:.3f}' for r in ratios)}"
        )
    (Path(args.workdir) / "scaling.json").write_text(json.dumps(results, indent=1))


def _latencies(workdir: Path) -> dict:
    study = optuna.load_study(study_name="scaling", storage=f"sqlite:///{workdir / 'optuna.db'}")
    cv, p50 = [], {}
    trials = study.get_trials()
    for t in trials:
        path = Path(str(t.user_attrs.get("trial_dir", ""))) / "metrics.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        metrics = record["metrics"]
        if "cpu/latency_cv" in metrics:
            cv.append(metrics["cpu/latency_cv"])
            p50[t.user_attrs["arch_id"]] = metrics["cpu/latency_p50_ms"]
    return {"trials": len(trials), "cv": cv, "p50": p50}


if __name__ == "__main__":
    main()
