"""Build the tabular benchmark's table: every configuration of the `tabular` search space
trained with one short budget and measured on the `cpu` profile.

    python bench/tabular_table.py            # all 288 configurations (about an hour)
    python bench/tabular_table.py --small    # smoke run: 4 configurations, tiny data

Writes `bench/data/tabular_cpu.csv` (one row per configuration: its parameters, arch_id,
cpu/accuracy, cpu/latency_p50_ms, cpu/latency_p95_ms, cpu/latency_cv, cpu/size_mb,
params, val_accuracy, train_s) and `tabular_cpu.json` (budget, machine, versions, how
long it took). `bench/search_efficiency.py` replays studies against the table.

Every row goes through `run_trial`, the code a real study runs, so a row is what a
study's trial would have reported. Two passes, so that latency is timed while nothing
else of ours runs: first every untrained configuration's latency (it does not depend on
the weights) fills the workdir's latency cache; then each configuration is trained and
scored, taking its latency from that cache. The two CPU schemes of one architecture
share one training (the weights cache), so 288 rows cost 144 trainings.
Rows already in the CSV are kept: an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hardware_profiles._report import cpu_description  # noqa: E402
from studies import load_config, run_trial  # noqa: E402
from studies._trial import cheap_metrics  # noqa: E402
from trainers import model_for  # noqa: E402
from trainers.data import ImageCache, encode_eval, prepare_data  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "data" / "tabular_cpu.csv"
SCHEMES = ["fp32", "int8_dynamic"]
METRICS = [
    "cpu/accuracy",
    "cpu/latency_p50_ms",
    "cpu/latency_p95_ms",
    "cpu/latency_cv",
    "cpu/size_mb",
    "params",
    "val_accuracy",
    "train_s",
]


def overrides(workdir: str, epochs: int, train_images: int, small: bool) -> list[str]:
    out = [
        "search_space=tabular",
        f"hardware.cpu.quant_schemes=[{','.join(SCHEMES)}]",
        f"study.workdir={workdir}",
        "study.name=tabular",
        f"trainer.max_epochs={epochs}",
        f"data.train_images={train_images}",
    ]
    if small:
        out += ["trainer.max_epochs=1", "data.train_images=60", "data.val_images=10"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs-tabular")
    parser.add_argument("--out", type=Path, default=None, help=f"default {DEFAULT_OUT}")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--small", action="store_true", help="4 configurations, tiny data")
    args = parser.parse_args()
    out = args.out or (Path(args.workdir) / "tabular_cpu.csv" if args.small else DEFAULT_OUT)
    cfg = load_config(overrides(args.workdir, args.epochs, args.train_images, args.small))
    data = prepare_data(cfg.data, cfg.workdir)
    quant = {p.name: p.quant_schemes for p in cfg.profiles}
    grid = cfg.space.grid(quant)
    if args.small:
        grid = grid[:4]
    params = list(dict.fromkeys(k for p in grid for k in p))  # conditionals: blank where n/a
    print(f"# machine: {cpu_description()}, Python {platform.python_version()}", flush=True)
    print(f"# {len(grid)} configurations -> {out}", flush=True)

    done: dict[str, dict[str, str]] = {}
    if out.exists():
        with out.open() as f:
            done = {row["arch_id"]: row for row in csv.DictReader(f)}
    archs = [cfg.space.to_arch(p) for p in grid]

    # Pass 1: latency of every untrained configuration, into the workdir's latency cache.
    start = time.perf_counter()
    images = ImageCache()
    for i, arch in enumerate(archs):
        if arch.arch_id in done:
            continue
        val = encode_eval(data.val, data.tokenizer, arch, data.text_len, images)
        calibration = encode_eval(data.train[:16], data.tokenizer, arch, data.text_len, images)
        metrics, _ = cheap_metrics(model_for(arch, data), arch, cfg, data, val, calibration)
        print(f"# latency {i + 1}/{len(archs)}: {metrics['cpu/latency_p50_ms']:.3f} ms", flush=True)
    latency_s = time.perf_counter() - start

    # Pass 2: train and score; latency comes from the cache filled above.
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not out.exists()
    with out.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["arch_id", *params, *METRICS])
        if new_file:
            writer.writeheader()
        for i, (values, arch) in enumerate(zip(grid, archs, strict=True)):
            if arch.arch_id in done:
                continue
            outcome = run_trial(arch, i, cfg, data.root)
            writer.writerow(
                {"arch_id": arch.arch_id, **values, **{m: outcome.metrics[m] for m in METRICS}}
            )
            f.flush()
            print(
                f"# {i + 1}/{len(grid)} {arch.arch_id}: accuracy"
                f" {outcome.metrics['cpu/accuracy']:.3f},"
                f" p50 {outcome.metrics['cpu/latency_p50_ms']:.3f} ms",
                flush=True,
            )
    train_s = time.perf_counter() - start

    meta_path = out.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"runs": []}
    meta.update(
        {
            "space": "search_spaces/conf/search_space/tabular.yaml",
            "configurations": len(grid),
            "overrides": overrides(args.workdir, args.epochs, args.train_images, args.small)[1:],
            "data": {"train_images": cfg.data.train_images, "val_images": cfg.data.val_images},
            "trainer": {"max_epochs": cfg.trainer.max_epochs, "seed": cfg.trainer.seed},
            "machine": cpu_description(),
            "python": platform.python_version(),
            "command": "python bench/tabular_table.py" + (" --small" if args.small else ""),
        }
    )
    meta["runs"].append(
        {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "git": _git_commit(),
            "latency_pass_s": round(latency_s, 1),
            "train_pass_s": round(train_s, 1),
            "rows_added": len(grid) - len(done),
        }
    )
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    print(f"# wrote {out} and {meta_path}", flush=True)


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
