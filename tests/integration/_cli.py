"""Running the `vlmnas` command as a user does, with the smallest study that still searches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Shorter latency measurements on the CPU profile: these tests check what a study records,
# not how precise its timings are (tests/hardware_profiles/ do). At the profile's defaults
# (1 s of timed runs, up to 3 attempts, a disturbed host re-measured 3 times after 2 s)
# a trial measured for up to 20 s while the other pytest-xdist worker started Python.
QUICK_TIMING = [
    "hardware.cpu.min_time_s=0.2",
    "hardware.cpu.max_attempts=1",
    "hardware.cpu.disturbed_retries=1",
    "hardware.cpu.disturbed_wait_s=0.5",
]

# Overrides that shrink a study to seconds per trial: one epoch, one thread, 40 training
# images, the narrowest towers, short timings and few cheap measurements.
TINY = [
    *QUICK_TIMING,
    "trainer.max_epochs=1",
    "trainer.threads=1",
    "data.train_images=40",
    "data.val_images=10",
    "study.population_size=2",
    # the default sampler (auto) times this many untrained candidates per training
    "study.cheap_per_training=2",
    "search_space.lm.width=[32]",
    "search_space.vision.width=[32]",
]


def vlmnas(*args: str) -> subprocess.CompletedProcess[str]:
    """`vlmnas ARGS...` run from the repository root, its output captured (10 min at most)."""
    return subprocess.run(
        [sys.executable, "-m", "studies.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
