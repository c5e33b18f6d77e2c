"""Running the `vlmnas` command as a user does, with the smallest study that still searches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Overrides that shrink a study to seconds per trial: one epoch, one thread, 40 training
# images, and the narrowest towers.
TINY = [
    "trainer.max_epochs=1",
    "trainer.threads=1",
    "data.train_images=40",
    "data.val_images=10",
    "study.population_size=2",
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
