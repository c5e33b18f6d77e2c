"""`LatencyReport` and the timing loop every backend shares; imports only numpy and stdlib.

Kept apart from the ONNX Runtime backend so that the PyTorch backend runs on a host that
has torch and numpy but no onnxruntime.
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class LatencyReport:
    """One forward pass (full static sequence, i.e. prefill) at the profile's batch size."""

    p50_ms: float
    p95_ms: float
    mean_ms: float
    cv: float  # stdev / mean of the timed runs
    n: int  # timed runs in the reported attempt
    attempts: int
    source: str  # measured | estimated
    runtime: str  # e.g. "onnxruntime 1.32.0 CPUExecutionProvider"
    cpu: str  # the device that ran it: CPU model, or GPU name for a CUDA profile

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class TimingSettings(Protocol):
    """The timing fields of a hardware profile."""

    @property
    def warmup(self) -> int: ...
    @property
    def repeats(self) -> int: ...
    @property
    def min_time_s(self) -> float: ...
    @property
    def max_cv(self) -> float: ...
    @property
    def max_attempts(self) -> int: ...
    @property
    def latency_source(self) -> str: ...


def time_runs(
    run_ms: Callable[[], float], profile: TimingSettings, *, runtime: str, device: str
) -> LatencyReport:
    """Time `run_ms` (one forward pass, returns its milliseconds): warm-up, then timed runs
    (at least `repeats` and at least `min_time_s` seconds), re-measured while cv > max_cv.

    The attempt with the lowest cv is reported. The caller guarantees that nothing else
    runs on the device meanwhile (the study measures one candidate at a time).
    """
    best: tuple[float, list[float]] | None = None
    attempts = 0
    while attempts < profile.max_attempts:
        attempts += 1
        for _ in range(profile.warmup):
            run_ms()
        times: list[float] = []
        # At least `repeats` runs and at least `min_time_s` of them: sub-millisecond
        # models need thousands of runs before one disturbance stops moving the p50.
        while len(times) < profile.repeats or sum(times) < profile.min_time_s * 1000.0:
            times.append(run_ms())
        cv = statistics.pstdev(times) / statistics.fmean(times)
        if best is None or cv < best[0]:
            best = (cv, times)
        if cv <= profile.max_cv:
            break
    assert best is not None
    cv, times = best
    return LatencyReport(
        p50_ms=float(np.percentile(times, 50)),
        p95_ms=float(np.percentile(times, 95)),
        mean_ms=statistics.fmean(times),
        cv=cv,
        n=len(times),
        attempts=attempts,
        source=profile.latency_source,
        runtime=runtime,
        cpu=device,
    )


def cpu_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{model} ({os.cpu_count()} cpus; {' '.join(simd) or 'no avx2'})"
