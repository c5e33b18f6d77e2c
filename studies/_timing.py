"""Where a driver's time goes, for the orchestration-overhead benchmarks: seconds in
MLflow calls, in Optuna (sampler and storage), and the trials' own compute (each trial
reports its `run_trial` wall time). One `Timing` per `search` call, written to
`<study_dir>/timing.json`."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path


class Timing:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def write(self, path: Path) -> None:
        """`timing.json`: this run's wall time inside Ray Tune and where it went. For a
        study with one trial at a time, `other_s` (wall minus trial compute, MLflow and
        Optuna) is Ray Tune's own share: scheduling, worker start-up, result passing."""
        sec = dict(self.seconds)
        inside = sec.get("tune_wall", 0.0)
        sec["other"] = inside - sum(sec.get(k, 0.0) for k in ("trials", "mlflow", "optuna", "auto"))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({f"{k}_s": v for k, v in sec.items()}, indent=1))
        os.replace(tmp, path)
