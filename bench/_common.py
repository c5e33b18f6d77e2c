"""What the bench scripts that run whole studies share: `vlmnas search` in a subprocess."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
