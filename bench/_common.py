"""What the bench scripts that run whole studies share: `vlmnas search` in a subprocess."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def add_budget_args(parser: argparse.ArgumentParser, workdir: str) -> None:
    """The options of a benchmark that runs whole studies at a reduced budget."""
    parser.add_argument("--workdir", default=workdir)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--small", action="store_true")


def study_budget(args: argparse.Namespace, small: list[str]) -> list[str]:
    """The overrides for `add_budget_args`' budget, or `small` (a smoke run) with --small."""
    if args.small:
        return list(small)
    return [
        f"trainer.max_epochs={args.epochs}",
        f"data.train_images={args.train_images}",
        f"study.n_trials={args.trials}",
    ]


def run_search(label: str, overrides: list[str]) -> float:
    """Run `vlmnas search <overrides>` from the repo root; returns its wall seconds.
    A failed search prints the end of its output and stops the benchmark, naming `label`."""
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "studies.cli", "search", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if run.returncode != 0:
        print(run.stdout[-3000:], run.stderr[-3000:])
        raise SystemExit(f"{label}: search failed")
    return wall
